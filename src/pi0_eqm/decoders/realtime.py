"""Real-time chunking: the committed prefix and the overlap of the previous chunk, as a decoder input.

Conventions (used by the evaluator, the policy, the server and the docs): chunk length ``H``, execution horizon
``s`` (actions executed per chunk), inference delay ``d`` (control steps, ``d + s ≤ H``). Inference for chunk k starts
at step ``t_k = k·s`` from observation ``o_k``; while it runs the robot executes ``d`` more actions of chunk k−1, so
chunk k's first ``d`` rows are already decided: the **committed prefix** ``A_{k−1}[s : s+d]`` (in chunk k's indices
``A_k[0 : d]``). The **overlap** ``A_{k−1}[s+d : H]`` is the rest of the old plan (chunk k's rows ``d : H−s``).

``Prefix`` carries both into a decode, in model space (normalized, padded), with per-row weights:

    W_i = 1                                   i < d            (committed)
    W_i = c_i · (e^{c_i} − 1) / (e − 1)       d ≤ i < d + m    (overlap, m rows; RTC's soft mask)
    W_i = 0                                   i ≥ d + m        (free)
    c_i = (d + m − i) / (m + 1)

(Black, Galliker, Levine 2025, "Real-Time Execution of Action Chunking Flow Policies", eq. 5, with ``d + m = H − s``.)
What a decoder does with it is its own: flow follows RTC's guided inpainting (one VJP per Euler step) or, trained
with committed prefixes (``max_delay``, ``sample_committed``), conditions on them with per-token time; EqM clamps the
committed rows inside its solver and optionally pulls the overlap rows toward the old plan.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Prefix:
    actions: jax.Array  # [B, H, D] model space; rows past the committed + overlap rows are ignored (weight 0)
    weights: jax.Array  # [B, H] float32 in [0, 1]: 1 exactly on the committed rows (``prefix_weights``)
    max_guidance: jax.Array  # [B] float32: flow's guidance clip β (RTC)
    pull: jax.Array  # [B] float32 in [0, 1]: EqM's per-iteration pull of the overlap rows toward the old plan

    @property
    def committed(self) -> jax.Array:
        """[B, H] bool: the rows that are already executing."""
        return self.weights >= 1.0


def prefix_weights(horizon: int, delay: int, overlap: int) -> np.ndarray:
    """``W [H]`` for ``delay`` committed rows followed by ``overlap`` soft rows (see the module docstring)."""
    if not 0 <= delay <= horizon or overlap < 0 or delay + overlap > horizon:
        raise ValueError(f"need 0 <= delay and delay + overlap <= H = {horizon}; got delay {delay}, overlap {overlap}")
    w = np.zeros(horizon, np.float32)
    w[:delay] = 1.0
    if overlap:
        i = np.arange(delay, delay + overlap)
        c = (delay + overlap - i) / (overlap + 1)
        w[delay:delay + overlap] = c * np.expm1(c) / np.expm1(1.0)
    return w


def sample_committed(rng: jax.Array, batch_size: int, horizon: int, max_delay: int) -> jax.Array:
    """``bool [B, H]``: the committed rows of a training chunk, its first d rows with d ~ U{0, …, max_delay} per
    sample (training-time real-time chunking). ``rng`` is the training example's key: the draw uses a stream of its
    own (the key folded with 1), so the example's noise and time draws stay those of training without prefixes."""
    d = jax.random.randint(jax.random.fold_in(rng, 1), (batch_size,), 0, max_delay + 1)
    return jnp.arange(horizon)[None, :] < d[:, None]


def clamp_committed(a: jax.Array, prefix: Prefix | None) -> jax.Array:
    """``a [B, H, D]`` with its committed rows replaced by the prefix's (exactly)."""
    if prefix is None:
        return a
    return jnp.where(prefix.committed[..., None], prefix.actions.astype(a.dtype), a)


def rtc_guidance_weight(tau: jax.Array, max_guidance: jax.Array) -> jax.Array:
    """RTC's guidance weight min(β, (1−τ) / (τ · r_τ²)), r_τ² = (1−τ)² / (τ² + (1−τ)²), for RTC's time τ (0: noise,
    1: data); β where τ(1−τ) = 0."""
    tau = jnp.asarray(tau, jnp.float32)
    denom = tau * (1.0 - tau)
    raw = (jnp.square(tau) + jnp.square(1.0 - tau)) / jnp.where(denom > 0, denom, 1.0)
    return jnp.where(denom > 0, jnp.minimum(max_guidance, raw), max_guidance)
