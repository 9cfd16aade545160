"""The decoder interface shared by flow matching and EqM.

A decoder has two faces:

* ``loss(params, obs, actions, rng) -> [B, H]`` per-token training loss (one uncached forward over prefix + suffix);
* ``decode(params, obs, rng, *, init=None, settings=None, record=False) -> (actions, DecodeStats)``: compute the prefix
  KV cache once, then iterate only the action expert against it.

Nothing above the decoder knows which one runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Protocol

import flax.struct
import jax

from pi0_eqm.models.observation import Observation


@flax.struct.dataclass
class DecodeStats:
    iterations: jax.Array  # [B] int32: expert forwards spent (flow: num_steps)
    residual: jax.Array  # [B] float32: final normalized residual (flow: RMS of the last velocity)
    converged: jax.Array  # [B] bool
    iterates: jax.Array | None = None  # [K+1, B, H, D] when record=True
    lookaheads: jax.Array | None = None  # [K, B, H, D]
    residuals: jax.Array | None = None  # [K, B]


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Evaluation-time decoder options; ``None`` keeps the config's value.

    ``max_iters`` is the budget of expert forwards per chunk for both decoders (flow: Euler steps). ``variant`` is
    compiled in; the other fields may be traced arrays (one compiled decoder then serves every value).
    """

    max_iters: Any = None
    threshold: Any = None
    step_size: Any = None
    momentum: Any = None
    variant: str | None = None
    guard: Any = None


class Decoder(Protocol):
    def loss(self, params: Any, obs: Observation, actions: jax.Array, rng: jax.Array) -> jax.Array: ...

    def decode(
        self,
        params: Any,
        obs: Observation,
        rng: jax.Array,
        *,
        init: jax.Array | None = None,
        settings: DecodeSettings | None = None,
        record: bool = False,
    ) -> tuple[jax.Array, DecodeStats]: ...
