"""The EqM root finder: Nesterov / EqM-NAG / gradient descent / Barzilai–Borwein in one ``jax.lax.while_loop``.

For a time-free field ``f`` whose roots are action chunks (the EqM "gradient" in openpi's sign convention, pointing
from data toward noise), iterate per sample b::

    Ã_k     = A_k + μ (A_k − A_{k−1})           lookahead (Ã_k = A_k for "gd" and "bb")
    r_k     = ‖f(Ã_k) ⊙ m‖ / sqrt(H · Σ m)      normalized residual at the lookahead, m = real-action-dim mask
    A_{k+1} = Ã_k − η_b f(Ã_k)                  "nesterov" (standard Nesterov / Sutskever)
    A_{k+1} = A_k − η_b f(Ã_k)                  "eqm_nag"  (EqM paper Algorithm 2)
    A_{k+1} = A_k − η_b f(A_k)                  "gd"
    A_{k+1} = A_k − α_k f(A_k)                  "bb": α_0 = η, α_k = clip(sᵀs / sᵀy, α_min, α_max) for
                                                 s = A_k − A_{k−1}, y = f(A_k) − f(A_{k−1}) (α_min if sᵀy ≤ 0)

Step guard (``guard``, not for "bb", whose clip bounds the step), per sample, at no extra forward: whenever the
residual grows (r_k > r_{k−1}), η_b halves and the momentum restarts (A_k − A_{k−1} ← 0 for the next lookahead, as in
O'Donoghue & Candès' adaptive restart). A step too large for the field's stiffness (η·λ_max > 2 diverges) thus shrinks
itself; η_0 = η. On a stable but oscillating momentum run it also shrinks η, which costs iterations (tests).

A sample stops at the first k with ``r_k < ε`` and returns ``Ã_k`` (the point the residual certifies); samples that
hit ``max_iters`` return ``A_K`` with the residual of their last lookahead. Converged samples are frozen while the
others continue; the loop ends when all samples have converged or at the cap. ``A_{−1} = A_0`` (momentum starts at
zero, and resets for every new chunk). Every iteration is one field evaluation (one expert forward). The iterate and
residual are kept in float32. ``variant`` and ``record`` are compiled in; η, μ, ε, the cap and the guard are traced.

Inpainting (``prefix``, ``decoders.realtime``): the committed rows of A_0 and of every iterate equal the prefix's
actions exactly (so every lookahead, and the returned chunk, has them too); with ``pull`` > 0 each step also moves the
overlap rows a fraction ``pull · W_i`` of the way toward the old plan. The residual (and so the stop) is over the free
rows only. No extra forwards.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from pi0_eqm.decoders.realtime import Prefix
from pi0_eqm.decoders.realtime import clamp_committed
from pi0_eqm.models.decoder_config import SolverConfig

FieldFn = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class SolveResult:
    actions: jax.Array  # [B, H, D]
    iterations: jax.Array  # [B] int32: field evaluations spent on each sample
    residual: jax.Array  # [B] float32: last residual r_k of each sample
    converged: jax.Array  # [B] bool: r_k < ε was reached
    step: jax.Array | None = None  # [B] float32: the last step size η_b / α_k of each sample
    # Optional trajectory (record=True): iterates[k] = A_k for k = 0..K (frozen samples repeat), residuals[k] = r_k
    # (NaN once a sample has stopped), lookaheads[k] = Ã_k.
    iterates: jax.Array | None = None  # [K+1, B, H, D]
    lookaheads: jax.Array | None = None  # [K, B, H, D]
    residuals: jax.Array | None = None  # [K, B]


def normalized_residual(field: jax.Array, dim_mask: jax.Array | None, row_mask: jax.Array | None = None) -> jax.Array:
    """RMS of ``field [B, H, D]`` over real entries: ‖f ⊙ m‖ / sqrt(H · Σ m) → ``[B]``; with ``row_mask [B, H]`` over
    those rows only (‖f ⊙ m ⊙ r‖ / sqrt(Σ r · Σ m))."""
    field = field.astype(jnp.float32)
    if dim_mask is None:
        dim_mask = jnp.ones(field.shape[-1], bool)
    m = dim_mask.astype(jnp.float32)
    if row_mask is None:
        n = field.shape[-2] * jnp.sum(m)
        return jnp.sqrt(jnp.sum(jnp.square(field) * m, axis=(-2, -1)) / n)
    r = row_mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(r, axis=-1), 1.0) * jnp.sum(m)
    return jnp.sqrt(jnp.sum(jnp.square(field) * m * r[..., None], axis=(-2, -1)) / n)


def _bb_step(s: jax.Array, y: jax.Array, lo, hi) -> jax.Array:
    """Per-sample Barzilai–Borwein (long) step clip(sᵀs / sᵀy, lo, hi); ``lo`` where the curvature sᵀy ≤ 0."""
    ss = jnp.sum(s * s, axis=(-2, -1))
    sy = jnp.sum(s * y, axis=(-2, -1))
    return jnp.where(sy > 0, jnp.clip(ss / jnp.where(sy > 0, sy, 1.0), lo, hi), lo)


def solve(
    field_fn: FieldFn,
    init: jax.Array,
    config: SolverConfig,
    dim_mask: jax.Array | None = None,
    *,
    step_size: jax.Array | float | None = None,
    momentum: jax.Array | float | None = None,
    threshold: jax.Array | float | None = None,
    max_iters: jax.Array | int | None = None,
    guard: jax.Array | bool | None = None,
    prefix: Prefix | None = None,
    record: bool = False,
) -> SolveResult:
    """Runs the solver from ``init [B, H, D]``.

    ``config.variant`` and ``record`` are static. ``step_size``, ``momentum``, ``threshold``, ``max_iters`` and
    ``guard`` default to the config's values and may be traced arrays, so one compiled decoder serves every setting
    (with ``record=True`` the trajectory buffers are sized by ``config.max_iters``, which then also caps the loop).
    A threshold <= 0 never stops early. ``prefix`` inpaints the committed rows (module docstring).
    """
    eta = jnp.asarray(config.step_size if step_size is None else step_size, jnp.float32)
    mu = jnp.asarray(config.momentum if momentum is None else momentum, jnp.float32)
    eps = jnp.asarray(config.threshold if threshold is None else threshold, jnp.float32)
    k_max = jnp.asarray(config.max_iters if max_iters is None else max_iters, jnp.int32)
    use_guard = jnp.asarray(config.guard if guard is None else guard, bool)
    if record:
        k_max = jnp.minimum(k_max, config.max_iters)
    variant = config.variant
    bb_lo, bb_hi = config.bb_min_step, config.bb_max_step
    if config.residual_dims == "all":
        dim_mask = None

    a0 = clamp_committed(init.astype(jnp.float32), prefix)
    b = a0.shape[0]
    bcast = lambda v: v[:, None, None]
    free_rows = None if prefix is None else ~prefix.committed
    if prefix is not None:
        target = prefix.actions.astype(jnp.float32)
        soft = jnp.where(prefix.committed, 0.0, prefix.weights) * prefix.pull[:, None]  # [B, H]

    def inpaint(a):
        if prefix is None:
            return a
        return clamp_committed(a + soft[..., None] * (target - a), prefix)

    def cond(carry):
        k, active = carry[0], carry[7]
        return (k < k_max) & jnp.any(active)

    def body(carry):
        k, a, a_prev, f_prev, r, step, iters, active = carry[:8]
        look = a if variant in ("gd", "bb") else a + mu * (a - a_prev)
        f = field_fn(look).astype(jnp.float32)
        r_now = normalized_residual(f, dim_mask, free_rows)
        conv = active & (eps > 0) & (r_now < eps)
        if variant == "bb":
            step = jnp.where(iters == 0, eta, _bb_step(a - a_prev, f - f_prev, bb_lo, bb_hi))
            restart = jnp.zeros_like(active)
        else:
            restart = active & use_guard & (iters > 0) & (r_now > r)
            step = jnp.where(restart, 0.5 * step, step)
        a_step = inpaint((look if variant == "nesterov" else a) - bcast(step) * f)
        moving = active & ~conv
        a_next = jnp.where(bcast(moving), a_step, jnp.where(bcast(conv), look, a))
        a_prev_next = jnp.where(bcast(moving & ~restart), a, jnp.where(bcast(moving), a_next, look))
        a_prev_next = jnp.where(bcast(active), a_prev_next, a_prev)
        f_prev = jnp.where(bcast(active), f, f_prev)
        r = jnp.where(active, r_now, r)
        iters = iters + active.astype(jnp.int32)
        out = (k + 1, a_next, a_prev_next, f_prev, r, step, iters, active & ~conv)
        if record:
            traj, looks, res = carry[8:]
            traj = traj.at[k + 1].set(a_next)
            looks = looks.at[k].set(look)
            res = res.at[k].set(jnp.where(active, r_now, jnp.nan))
            out = out + (traj, looks, res)
        return out

    carry = (
        jnp.int32(0),
        a0,
        a0,
        jnp.zeros_like(a0),
        jnp.full((b,), jnp.inf, jnp.float32),
        jnp.broadcast_to(eta, (b,)),
        jnp.zeros((b,), jnp.int32),
        jnp.ones((b,), bool),
    )
    if record:
        k_cap = config.max_iters
        traj = jnp.zeros((k_cap + 1, *a0.shape), jnp.float32).at[0].set(a0)
        looks = jnp.zeros((k_cap, *a0.shape), jnp.float32)
        res = jnp.full((k_cap, b), jnp.nan, jnp.float32)
        carry = carry + (traj, looks, res)
    out = jax.lax.while_loop(cond, body, carry)
    k, a, _, _, r, step, iters, active = out[:8]
    result = SolveResult(actions=a, iterations=iters, residual=r, converged=~active, step=step)
    if record:
        traj, looks, res = out[8:]
        # Frozen samples keep their final iterate in the rest of the trajectory buffer.
        steps = jnp.arange(traj.shape[0])[:, None]
        filled = steps <= iters[None, :]
        traj = jnp.where(filled[..., None, None], traj, a[None])
        result = result.replace(iterates=traj, lookaheads=looks, residuals=res)
    return result
