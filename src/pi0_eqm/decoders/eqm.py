"""Equilibrium Matching decoder: a time-free field trained on (ε − A)·c(γ), decoded by the Nesterov solver.

Training (openpi variables, γ = 1 − t): γ ~ U(0, 1) (or a mixture with U(a, 1), ``gamma_sampling``),
x = γ·A + (1−γ)·ε, target (ε − A)·c(γ) with c(γ) = λ·min(1, (1−γ)/(1−a)), λ = 4, a = 0.8. The field gets no time input: the existing time path is fed t ≡ 0, so the
parameter tree is identical to π₀'s and openpi checkpoints load unchanged.

With ``max_delay`` > 0 (training with a committed prefix) each training chunk's first d ~ U{0, …, max_delay} rows
are clean (γ = 1) and carry no loss: the field learns the free rows given clean committed rows, which is what the
solver's inpainting (committed rows clamped) shows it. With ``prefix_flag`` the time input carries, per token, 1 on
the committed rows and 0 elsewhere, in training and in decoding.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from pi0_eqm.decoders.base import DecodeStats
from pi0_eqm.decoders.realtime import Prefix
from pi0_eqm.decoders.realtime import sample_committed
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.decoders.solver import solve
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.decoder_config import solver_preset
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.models.pi0 import Pi0Config


def eqm_weight(gamma: jax.Array, grad_multiplier: float, decay_start: float) -> jax.Array:
    """c(γ) = λ·min(1, (1−γ)/(1−a)) (truncated decay; c(1) = 0 so data points are stationary)."""
    return grad_multiplier * jnp.minimum(1.0, (1.0 - gamma) / (1.0 - decay_start))


def sample_gamma(rng: jax.Array, batch_size: int, eqm: EqmConfig) -> jax.Array:
    """γ per sample: U(gamma_min, gamma_max), or for "data_mixture" U(a, 1) with probability ``data_fraction``."""
    if eqm.gamma_sampling == "uniform":
        return jax.random.uniform(rng, (batch_size,), minval=eqm.gamma_min, maxval=eqm.gamma_max)
    u_rng, mix_rng, pick_rng = jax.random.split(rng, 3)
    gamma = jax.random.uniform(u_rng, (batch_size,), minval=eqm.gamma_min, maxval=eqm.gamma_max)
    near = jax.random.uniform(mix_rng, (batch_size,), minval=eqm.decay_start, maxval=1.0)
    return jnp.where(jax.random.uniform(pick_rng, (batch_size,)) < eqm.data_fraction, near, gamma)


def eqm_training_pair(actions: jax.Array, rng: jax.Array, eqm: EqmConfig,
                      dim_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(x_γ, target) for a batch of clean chunks ``[B, ...]``: x_γ = γA + (1−γ)ε, target (ε − A)·c(γ).

    With ``dim_mask`` (``loss_dims="real"``) the padded dims of x_γ and of the target are zero."""
    noise_rng, gamma_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, actions.shape)
    if dim_mask is not None:
        noise = noise * dim_mask.astype(noise.dtype)
    gamma = sample_gamma(gamma_rng, actions.shape[0], eqm)
    g = gamma.reshape((-1,) + (1,) * (actions.ndim - 1))
    x = g * actions + (1 - g) * noise
    c = eqm_weight(gamma, eqm.grad_multiplier, eqm.decay_start).reshape(g.shape)
    return x, (noise - actions) * c


@dataclasses.dataclass(frozen=True)
class EqmDecodeSettings:
    """The solver's evaluation-time settings; ``None`` keeps the config's value. ``max_iters`` is the budget of
    expert forwards per chunk. ``variant`` is compiled in; the other fields may be traced arrays (one compiled decoder
    then serves every value)."""

    max_iters: Any = None
    threshold: Any = None
    step_size: Any = None
    momentum: Any = None
    variant: str | None = None
    guard: Any = None


class EqmDecoder:
    kind: ClassVar[str] = "eqm"
    warm_starts: ClassVar[bool] = True
    Settings: ClassVar[type] = EqmDecodeSettings
    compiled_fields: ClassVar[tuple[str, ...]] = ("variant",)
    prefix_method: ClassVar[str] = "inpaint"  # what decode(prefix=...) does (decoders.realtime)

    def __init__(self, config: Pi0Config):
        if not isinstance(config.decoder, EqmConfig):
            raise TypeError(f"EqmDecoder needs an EqmConfig, got {type(config.decoder).__name__}")
        self.config = config
        self.eqm = config.decoder
        self.model = Pi0(config)
        # loss_dims="real": padded dims stay zero in training and in the solver.
        self._real_mask = config.action_dim_mask() if self.eqm.loss_dims == "real" else None
        self.prefix_trained = config.decoder.max_delay  # committed rows trained with (0: none)

    def resolve(self, settings: DecoderSettings) -> EqmDecodeSettings:
        """Every solver field: the explicit setting, else the preset's, else the config's solver's."""
        preset = solver_preset(settings.preset) if settings.preset is not None else None
        solver = self.eqm.solver

        def pick(name):
            value = getattr(settings, name)
            if value is None and preset is not None:
                value = getattr(preset, name)
            return getattr(solver, name) if value is None else value

        return EqmDecodeSettings(**{f.name: pick(f.name) for f in dataclasses.fields(EqmDecodeSettings)})

    def traced(self, settings: EqmDecodeSettings) -> dict[str, np.ndarray]:
        """Everything but the (compiled-in) variant."""
        return {"max_iters": np.int32(settings.max_iters), "threshold": np.float32(settings.threshold),
                "step_size": np.float32(settings.step_size), "momentum": np.float32(settings.momentum),
                "guard": np.bool_(settings.guard)}

    def training_example(self, actions: jax.Array, rng: jax.Array):
        """``(x_γ, t ≡ 0, target, loss_mask)``: the field has no time input, so the time path is fed zeros. With
        ``max_delay`` the committed rows of x_γ are the clean actions and ``loss_mask`` ``[B, H]`` is False on them;
        otherwise ``loss_mask`` is None."""
        x, target = eqm_training_pair(actions, rng, self.eqm, self._real_mask)
        loss_mask = None
        if self.prefix_trained:
            b, h = actions.shape[:2]
            committed = sample_committed(rng, b, h, self.prefix_trained)
            clean = actions if self._real_mask is None else actions * self._real_mask.astype(actions.dtype)
            x, loss_mask = jnp.where(committed[..., None], clean, x), ~committed
            if self.eqm.prefix_flag:
                return x, self.committed_flag(committed), target, loss_mask
        return x, jnp.zeros((actions.shape[0],), jnp.float32), target, loss_mask

    def committed_flag(self, committed: jax.Array | None, batch_size: int | None = None) -> jax.Array:
        """The time input: ``[B, H]`` 1.0 on committed rows with ``prefix_flag`` (0 everywhere without a prefix),
        else ``[B]`` zeros."""
        if not (self.prefix_trained and self.eqm.prefix_flag):
            return jnp.zeros((batch_size if committed is None else committed.shape[0],), jnp.float32)
        if committed is None:
            return jnp.zeros((batch_size, self.config.action_horizon), jnp.float32)
        return committed.astype(jnp.float32)

    def loss(self, params, obs: Observation, actions: jax.Array, rng: jax.Array):
        """``(per-token loss [B, H], loss_mask [B, H] | None)``."""
        x, time, target, loss_mask = self.training_example(actions, rng)
        f = self.model.apply({"params": params}, obs, x, time, method=Pi0.full_field)
        if self._real_mask is None:
            return jnp.mean(jnp.square(f - target), axis=-1), loss_mask
        m = self._real_mask.astype(f.dtype)
        return jnp.sum(jnp.square(f - target) * m, axis=-1) / jnp.sum(m), loss_mask

    def field_fn(self, params, obs: Observation, prefix: Prefix | None = None):
        """Computes the prefix KV cache once; returns ``f(A)`` evaluating only the action expert (with
        ``prefix_flag``, told which rows of ``prefix`` are committed)."""
        variables = {"params": params}
        kv_cache, prefix_mask = self.model.apply(variables, obs, method=Pi0.prefill)
        time = self.committed_flag(None if prefix is None else prefix.committed, obs.state.shape[0])

        mask = None if self._real_mask is None else self._real_mask.astype(jnp.float32)

        def f(a):
            out = self.model.apply(variables, kv_cache, prefix_mask, obs.state, a, time, method=Pi0.expert_field)
            return out if mask is None else out * mask

        return f

    def solver_config(self, settings: EqmDecodeSettings | None, record: bool = False):
        """The config's solver with the (static) variant of ``settings``; the other settings are traced (``decode``).
        With ``record`` an int ``max_iters`` also sizes the trajectory buffers."""
        solver = self.eqm.solver
        if settings is not None and settings.variant is not None:
            solver = dataclasses.replace(solver, variant=settings.variant)
        if record and settings is not None and isinstance(settings.max_iters, int):
            solver = dataclasses.replace(solver, max_iters=settings.max_iters)
        return solver

    def decode(self, params, obs: Observation, rng: jax.Array, *, init=None, settings: EqmDecodeSettings | None = None,
               prefix: Prefix | None = None, record: bool = False):
        """The solver from ``init`` (default: noise); with ``prefix`` the committed rows are clamped inside it
        (inpainting, no extra forwards) and the overlap rows optionally pulled toward the old plan."""
        cfg = self.config
        b = obs.state.shape[0]
        shape = (b, cfg.action_horizon, cfg.action_dim)
        a0 = jax.random.normal(rng, shape) if init is None else init
        if self._real_mask is not None:
            a0 = a0 * self._real_mask.astype(a0.dtype)
        s = settings or EqmDecodeSettings()
        result = solve(self.field_fn(params, obs, prefix), a0, self.solver_config(settings, record),
                       cfg.action_dim_mask(), step_size=s.step_size, momentum=s.momentum, threshold=s.threshold,
                       max_iters=s.max_iters, guard=s.guard, prefix=prefix, record=record)
        stats = DecodeStats(iterations=result.iterations, residual=result.residual, converged=result.converged,
                            iterates=result.iterates, lookaheads=result.lookaheads, residuals=result.residuals)
        return result.actions, stats
