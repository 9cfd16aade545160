"""The decoder interface shared by flow matching and EqM.

A decoder (``Decoder`` below; one class per ``kind``, registered in ``pi0_eqm.decoders.DECODERS``) has two faces:

* training: ``training_example(actions, rng) -> (x, t, target, loss_mask)`` and ``loss(params, obs, actions, rng)
  -> (per-token loss [B, H], loss_mask [B, H] | None)`` (one uncached forward over prefix + suffix; ``loss_mask`` is
  False on rows that carry no loss: the committed rows of training-time real-time chunking, ``max_delay``);
* inference: each decoder owns its resolved settings type, ``Settings`` (a frozen dataclass with at least
  ``max_iters``, the budget of expert forwards per chunk; ``None`` fields keep the config's value): ``resolve
  (DecoderSettings) -> Settings`` (every field filled from the request, the preset or the config), ``traced
  (settings)`` (the values a compiled decode takes as arguments; the ``compiled_fields`` are compiled in, one program
  per value) and ``decode(params, obs, rng, *, init=None, settings=None, prefix=None, record=False) -> (actions,
  DecodeStats)``: compute the prefix KV cache
  once, then iterate only the action expert against it; ``prefix`` (``decoders.realtime.Prefix``) is the committed
  prefix and overlap of real-time chunking, which the decoder honours in its own way (``prefix_method``; a decoder
  trained with committed prefixes, ``prefix_trained`` > 0, takes at most that many committed rows).

Callers use only these members; none branches on which decoder runs.
"""

from __future__ import annotations

from typing import Any
from typing import ClassVar
from typing import Protocol

import flax.struct
import jax
import numpy as np

from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.models.pi0 import Pi0Config


@flax.struct.dataclass
class DecodeStats:
    iterations: jax.Array  # [B] int32: expert forwards spent (flow: num_steps)
    residual: jax.Array  # [B] float32: final normalized residual (flow: RMS of the last velocity)
    converged: jax.Array  # [B] bool
    iterates: jax.Array | None = None  # [K+1, B, H, D] when record=True
    lookaheads: jax.Array | None = None  # [K, B, H, D]
    residuals: jax.Array | None = None  # [K, B]
    vjps: jax.Array | None = None  # [B] int32: VJPs through the expert (flow's RTC guidance: one per Euler step)


class Decoder(Protocol):
    kind: ClassVar[str]  # the ``kind`` of the decoder config it runs ("flow", "eqm")
    Settings: ClassVar[type]  # its resolved settings (``max_iters`` and its own fields)
    compiled_fields: ClassVar[tuple[str, ...]]  # fields of ``Settings`` compiled in; the others are traced
    warm_starts: ClassVar[bool]  # whether ``decode(init=...)`` may be seeded from the previous chunk
    prefix_method: str  # what ``decode(prefix=...)`` does: "rtc_guided" / "rtc_trained" (flow), "inpaint" (EqM)
    prefix_trained: int  # the decoder config's ``max_delay``: committed rows per training chunk (0: none)
    config: Pi0Config
    model: Pi0

    def training_example(self, actions: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array,
                                                                             jax.Array | None]: ...

    def resolve(self, settings: DecoderSettings) -> Any: ...

    def traced(self, settings: Any) -> dict[str, np.ndarray]: ...

    def loss(self, params: Any, obs: Observation, actions: jax.Array,
             rng: jax.Array) -> tuple[jax.Array, jax.Array | None]: ...

    def decode(
        self,
        params: Any,
        obs: Observation,
        rng: jax.Array,
        *,
        init: jax.Array | None = None,
        settings: Any = None,
        prefix: Any = None,
        record: bool = False,
    ) -> tuple[jax.Array, DecodeStats]: ...
