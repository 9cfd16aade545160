"""The EqM root finder: Nesterov / EqM-NAG / gradient descent in one ``jax.lax.while_loop``.

For a time-free field ``f`` whose roots are action chunks (the EqM "gradient" in openpi's sign convention, pointing
from data toward noise), iterate per sample::

    Ã_k     = A_k + μ (A_k − A_{k−1})           lookahead (Ã_k = A_k for plain GD)
    r_k     = ‖f(Ã_k) ⊙ m‖ / sqrt(Σ m)          normalized residual at the lookahead, m = real-action-dim mask
    A_{k+1} = Ã_k − η f(Ã_k)                    "nesterov" (standard Nesterov / Sutskever)
    A_{k+1} = A_k − η f(Ã_k)                    "eqm_nag"  (EqM paper Algorithm 2)
    A_{k+1} = A_k − η f(A_k)                    "gd"

A sample stops at the first k with ``r_k < ε`` and returns ``Ã_k`` (the point the residual certifies); samples that
hit ``max_iters`` return ``A_K`` with the residual of their last lookahead. Converged samples are frozen while the
others continue; the loop ends when all samples have converged or at the cap. ``A_{−1} = A_0`` (momentum starts at
zero, and resets for every new chunk). The iterate and residual are kept in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from pi0_eqm.decoders.config import SolverConfig

FieldFn = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class SolveResult:
    actions: jax.Array  # [B, H, D]
    iterations: jax.Array  # [B] int32: field evaluations spent on each sample
    residual: jax.Array  # [B] float32: last residual r_k of each sample
    converged: jax.Array  # [B] bool: r_k < ε was reached
    # Optional trajectory (record=True): iterates[k] = A_k for k = 0..K (frozen samples repeat), residuals[k] = r_k
    # (NaN once a sample has stopped), lookaheads[k] = Ã_k.
    iterates: jax.Array | None = None  # [K+1, B, H, D]
    lookaheads: jax.Array | None = None  # [K, B, H, D]
    residuals: jax.Array | None = None  # [K, B]


def normalized_residual(field: jax.Array, dim_mask: jax.Array | None) -> jax.Array:
    """RMS of ``field [B, H, D]`` over real entries: ‖f ⊙ m‖ / sqrt(H · Σ m) → ``[B]``."""
    field = field.astype(jnp.float32)
    if dim_mask is None:
        dim_mask = jnp.ones(field.shape[-1], bool)
    m = dim_mask.astype(jnp.float32)
    n = field.shape[-2] * jnp.sum(m)
    return jnp.sqrt(jnp.sum(jnp.square(field) * m, axis=(-2, -1)) / n)


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
    record: bool = False,
) -> SolveResult:
    """Runs the solver from ``init [B, H, D]``.

    ``config.variant`` and ``record`` are static. ``step_size``, ``momentum``, ``threshold`` and ``max_iters`` default
    to the config's values and may be traced arrays, so one compiled decoder serves every ε / budget (with
    ``record=True`` the trajectory buffers are sized by ``config.max_iters``, which then also caps the loop).
    A threshold <= 0 never stops early.
    """
    eta = jnp.asarray(config.step_size if step_size is None else step_size, jnp.float32)
    mu = jnp.asarray(config.momentum if momentum is None else momentum, jnp.float32)
    eps = jnp.asarray(config.threshold if threshold is None else threshold, jnp.float32)
    k_max = jnp.asarray(config.max_iters if max_iters is None else max_iters, jnp.int32)
    if record:
        k_max = jnp.minimum(k_max, config.max_iters)
    variant = config.variant
    if config.residual_dims == "all":
        dim_mask = None

    a0 = init.astype(jnp.float32)
    b = a0.shape[0]
    bcast = lambda v: v[:, None, None]

    def cond(carry):
        k, _, _, _, _, active = carry[:6]
        return (k < k_max) & jnp.any(active)

    def body(carry):
        k, a, a_prev, r, iters, active = carry[:6]
        look = a if variant == "gd" else a + mu * (a - a_prev)
        f = field_fn(look).astype(jnp.float32)
        r_now = normalized_residual(f, dim_mask)
        conv = active & (eps > 0) & (r_now < eps)
        step_from = look if variant == "nesterov" else a
        a_step = step_from - eta * f
        moving = active & ~conv
        a_next = jnp.where(bcast(moving), a_step, jnp.where(bcast(conv), look, a))
        a_prev_next = jnp.where(bcast(moving), a, jnp.where(bcast(conv), look, a_prev))
        r = jnp.where(active, r_now, r)
        iters = iters + active.astype(jnp.int32)
        out = (k + 1, a_next, a_prev_next, r, iters, active & ~conv)
        if record:
            traj, looks, res = carry[6:]
            traj = traj.at[k + 1].set(a_next)
            looks = looks.at[k].set(look)
            res = res.at[k].set(jnp.where(active, r_now, jnp.nan))
            out = out + (traj, looks, res)
        return out

    carry = (
        jnp.int32(0),
        a0,
        a0,
        jnp.full((b,), jnp.inf, jnp.float32),
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
    k, a, _, r, iters, active = out[:6]
    result = SolveResult(actions=a, iterations=iters, residual=r, converged=~active)
    if record:
        traj, looks, res = out[6:]
        # Frozen samples keep their final iterate in the rest of the trajectory buffer.
        steps = jnp.arange(traj.shape[0])[:, None]
        filled = steps <= iters[None, :]
        traj = jnp.where(filled[..., None, None], traj, a[None])
        result = result.replace(iterates=traj, lookaheads=looks, residuals=res)
    return result
