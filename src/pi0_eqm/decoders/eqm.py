"""Equilibrium Matching decoder: a time-free field trained on (ε − A)·c(γ), decoded by the Nesterov solver.

Training (openpi variables, γ = 1 − t): γ ~ U(0, 1), x = γ·A + (1−γ)·ε, target (ε − A)·c(γ) with
c(γ) = λ·min(1, (1−γ)/(1−a)), λ = 4, a = 0.8. The field gets no time input: the existing time path is fed t ≡ 0, so the
parameter tree is identical to π₀'s and openpi checkpoints load unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pi0_eqm.decoders.base import DecodeSettings
from pi0_eqm.decoders.base import DecodeStats
from pi0_eqm.decoders.config import EqmConfig
from pi0_eqm.decoders.solver import solve
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.models.pi0 import Pi0Config


def eqm_weight(gamma: jax.Array, grad_multiplier: float, decay_start: float) -> jax.Array:
    """c(γ) = λ·min(1, (1−γ)/(1−a)) (truncated decay; c(1) = 0 so data points are stationary)."""
    return grad_multiplier * jnp.minimum(1.0, (1.0 - gamma) / (1.0 - decay_start))


def eqm_training_pair(actions: jax.Array, rng: jax.Array, eqm: EqmConfig) -> tuple[jax.Array, jax.Array]:
    """(x_γ, target) for a batch of clean chunks ``[B, ...]``: x_γ = γA + (1−γ)ε, target (ε − A)·c(γ)."""
    noise_rng, gamma_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, actions.shape)
    gamma = jax.random.uniform(gamma_rng, (actions.shape[0],), minval=eqm.gamma_min, maxval=eqm.gamma_max)
    g = gamma.reshape((-1,) + (1,) * (actions.ndim - 1))
    x = g * actions + (1 - g) * noise
    c = eqm_weight(gamma, eqm.grad_multiplier, eqm.decay_start).reshape(g.shape)
    return x, (noise - actions) * c


class EqmDecoder:
    def __init__(self, config: Pi0Config):
        if not isinstance(config.decoder, EqmConfig):
            raise TypeError(f"EqmDecoder needs an EqmConfig, got {type(config.decoder).__name__}")
        self.config = config
        self.eqm = config.decoder
        self.model = Pi0(config)

    def training_example(self, actions: jax.Array, rng: jax.Array):
        """``(x_γ, t ≡ 0, target)``: the field has no time input, so the time path is fed zeros."""
        x, target = eqm_training_pair(actions, rng, self.eqm)
        return x, jnp.zeros((actions.shape[0],), jnp.float32), target

    def loss(self, params, obs: Observation, actions: jax.Array, rng: jax.Array) -> jax.Array:
        x, zero_t, target = self.training_example(actions, rng)
        f = self.model.apply({"params": params}, obs, x, zero_t, method=Pi0.full_field)
        return jnp.mean(jnp.square(f - target), axis=-1)

    def field_fn(self, params, obs: Observation):
        """Computes the prefix KV cache once; returns ``f(A)`` evaluating only the action expert."""
        variables = {"params": params}
        kv_cache, prefix_mask = self.model.apply(variables, obs, method=Pi0.prefill)
        zero_t = jnp.zeros((obs.state.shape[0],), jnp.float32)

        def f(a):
            return self.model.apply(variables, kv_cache, prefix_mask, obs.state, a, zero_t, method=Pi0.expert_field)

        return f

    def solver_config(self, settings: DecodeSettings | None):
        solver = self.eqm.solver
        if settings is None:
            return solver
        updates = {
            "max_iters": settings.max_iters,
            "threshold": settings.threshold,
            "step_size": settings.step_size,
            "momentum": settings.momentum,
            "variant": settings.variant,
        }
        return dataclasses.replace(solver, **{k: v for k, v in updates.items() if v is not None})

    def decode(self, params, obs: Observation, rng: jax.Array, *, init=None, settings: DecodeSettings | None = None,
               record: bool = False):
        cfg = self.config
        b = obs.state.shape[0]
        shape = (b, cfg.action_horizon, cfg.action_dim)
        a0 = jax.random.normal(rng, shape) if init is None else init
        result = solve(self.field_fn(params, obs), a0, self.solver_config(settings), cfg.action_dim_mask(),
                       record=record)
        stats = DecodeStats(iterations=result.iterations, residual=result.residual, converged=result.converged,
                            iterates=result.iterates, lookaheads=result.lookaheads, residuals=result.residuals)
        return result.actions, stats
