"""Warm-start initialisation of the EqM solver from the previous action chunk (receding horizon).

Modes (all in model space: normalized, padded actions):

* ``"off"``: pure noise (cold start).
* ``"aligned"`` (default): the previous chunk was produced ``s`` executed actions ago, so its entry ``s + i`` is the
  plan for the new chunk's step ``i``: ``A_0[i] = A_prev[s + i]`` for ``i < m``, ``m = min(max_reuse, H − s)``, fresh
  noise after it.
* ``"paper_half"``: the paper's literal rule, first half of the new init ← second half of the previous chunk
  (``A_0[:H/2] = A_prev[H/2:]``), noise after it. It equals ``"aligned"`` only when ``s = H/2``.

Momentum always resets on a new chunk (the solver starts from ``A_{−1} = A_0``). Cold start on the first chunk of an
episode and after every reset: callers pass ``prev_chunk=None`` (or use ``"off"``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pi0_eqm.models.decoder_config import WarmStartMode
from pi0_eqm.models.decoder_config import check_choice


def warm_start_init(
    prev_chunk: jax.Array | None,
    executed: jax.Array | int,
    noise: jax.Array,
    mode: WarmStartMode = "aligned",
    max_reuse: int | None = None,
) -> jax.Array:
    """Initial iterate ``[B, H, D]`` from ``prev_chunk [B, H, D]``, ``executed`` (s, scalar or ``[B]``) and ``noise``."""
    check_choice("warm start mode", mode, WarmStartMode)
    if prev_chunk is None or mode == "off":
        return noise
    if prev_chunk.shape != noise.shape:
        raise ValueError(f"previous chunk has shape {prev_chunk.shape}, expected {noise.shape}")
    b, h, _ = noise.shape
    idx = jnp.arange(h)
    if mode == "paper_half":
        half = h // 2
        src = idx + (h - half)
        use = idx < half
        src = jnp.broadcast_to(src, (b, h))
        use = jnp.broadcast_to(use, (b, h))
    else:
        s = jnp.broadcast_to(jnp.asarray(executed, jnp.int32), (b,))
        m = h - s
        if max_reuse is not None:
            m = jnp.minimum(m, max_reuse)
        src = idx[None, :] + s[:, None]
        use = (idx[None, :] < m[:, None]) & (s[:, None] >= 0)
    src = jnp.clip(src, 0, h - 1)
    reused = jnp.take_along_axis(prev_chunk, src[..., None], axis=1)
    return jnp.where(use[..., None], reused, noise).astype(noise.dtype)
