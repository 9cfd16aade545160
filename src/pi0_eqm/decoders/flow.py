"""openpi flow-matching decoder: t = 1 noise, x_t = t·ε + (1−t)·A, target ε − A, Euler from t = 1 to t = 0.

With a ``Prefix`` (``decoders.realtime``) the committed rows are honoured in one of two ways:

* ``rtc_guided`` (``max_delay`` 0, any openpi checkpoint): every Euler step is RTC's guided inpainting (Black,
  Galliker, Levine 2025, Algorithm 1) in openpi's time direction: Â(x) = x − t·v(x) is the predicted chunk,
  g = (∂Â/∂x)ᵀ (W ⊙ (Y − Â)) one VJP through the action expert, and the step uses v − w·g with
  w = min(β, (1−τ)/(τ r_τ²)), τ = 1 − t (RTC's time);
* ``rtc_trained`` (``max_delay`` > 0, training-time RTC, arXiv 2512.05964): the model was trained with per-token
  time, committed rows clean (t = 0, no loss); every Euler step sets the committed rows to the committed actions with
  time 0 and integrates the others. No VJP; the overlap weights are not used.
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
from pi0_eqm.decoders.realtime import rtc_guidance_weight
from pi0_eqm.decoders.realtime import sample_committed
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.decoders.solver import normalized_residual
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.models.pi0 import Pi0Config


@dataclasses.dataclass(frozen=True)
class FlowDecodeSettings:
    """Flow's evaluation-time settings: ``max_iters`` Euler steps (``None``: the config's ``num_steps``; may be a
    traced value)."""

    max_iters: Any = None


class FlowDecoder:
    kind: ClassVar[str] = "flow"
    warm_starts: ClassVar[bool] = False
    Settings: ClassVar[type] = FlowDecodeSettings
    compiled_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Pi0Config):
        if not isinstance(config.decoder, FlowConfig):
            raise TypeError(f"FlowDecoder needs a FlowConfig, got {type(config.decoder).__name__}")
        self.config = config
        self.flow = config.decoder
        self.model = Pi0(config)
        self.prefix_trained = config.decoder.max_delay  # committed rows trained with (0: none)
        self.prefix_method = "rtc_trained" if self.prefix_trained else "rtc_guided"  # what decode(prefix=...) does

    def resolve(self, settings: DecoderSettings) -> FlowDecodeSettings:
        """Only the step budget applies to flow: ``max_iters`` Euler steps (default: the config's ``num_steps``)."""
        return FlowDecodeSettings(max_iters=settings.max_iters or self.flow.num_steps)

    def traced(self, settings: FlowDecodeSettings) -> dict[str, np.ndarray]:
        return {"max_iters": np.int32(settings.max_iters)}

    def sample_time(self, rng: jax.Array, batch_size: int) -> jax.Array:
        f = self.flow
        return jax.random.beta(rng, f.beta_a, f.beta_b, (batch_size,)) * (1 - f.time_min) + f.time_min

    def training_example(self, actions: jax.Array, rng: jax.Array):
        """``(x_t, t, u_t, loss_mask)``: noisy chunk, its time and the velocity target ε − A. With ``max_delay`` the
        time is per token (``[B, H]``), 0 on the committed rows (so x_t = A there) and ``loss_mask`` ``[B, H]`` is
        False on them; otherwise ``t`` is ``[B]`` and ``loss_mask`` None."""
        noise_rng, time_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, actions.shape)
        t = self.sample_time(time_rng, actions.shape[0])
        loss_mask = None
        if self.prefix_trained:
            b, h = actions.shape[:2]
            committed = sample_committed(rng, b, h, self.prefix_trained)
            t, loss_mask = jnp.where(committed, 0.0, t[:, None]), ~committed
        te = t.reshape(t.shape + (1,) * (actions.ndim - t.ndim))
        return te * noise + (1 - te) * actions, t, noise - actions, loss_mask

    def loss(self, params, obs: Observation, actions: jax.Array, rng: jax.Array):
        """``(per-token loss [B, H], loss_mask [B, H] | None)``."""
        x_t, t, u_t, loss_mask = self.training_example(actions, rng)
        v_t = self.model.apply({"params": params}, obs, x_t, t, method=Pi0.full_field)
        return jnp.mean(jnp.square(v_t - u_t), axis=-1), loss_mask

    def decode(self, params, obs: Observation, rng: jax.Array, *, init=None, settings: FlowDecodeSettings | None = None,
               prefix: Prefix | None = None, record: bool = False):
        cfg = self.config
        num_steps = self.flow.num_steps
        if settings is not None and settings.max_iters is not None:
            num_steps = settings.max_iters  # may be traced (not with record=True, whose buffers it sizes)
        b = obs.state.shape[0]
        shape = (b, cfg.action_horizon, cfg.action_dim)
        x0 = jax.random.normal(rng, shape) if init is None else init.astype(jnp.float32)
        variables = {"params": params}
        kv_cache, prefix_mask = self.model.apply(variables, obs, method=Pi0.prefill)
        n = jnp.asarray(num_steps, jnp.int32)
        dt = -1.0 / n.astype(jnp.float32)

        def velocity(x, t):
            t = jnp.broadcast_to(t, (b,)) if jnp.ndim(t) == 0 else t  # [B] or per token [B, H]
            return self.model.apply(variables, kv_cache, prefix_mask, obs.state, x, t, method=Pi0.expert_field)

        dim_mask = cfg.action_dim_mask().astype(jnp.float32)
        if prefix is not None and self.prefix_trained:
            committed = prefix.committed[..., None]
            y = prefix.actions.astype(jnp.float32)
            x0 = jnp.where(committed, y, x0)

        def step(carry, _):
            x, t, _ = carry
            if prefix is None:
                v = velocity(x, t)
                return (x + dt * v, t + dt, v), (x if record else None)
            if self.prefix_trained:  # training-time RTC: committed rows clean (time 0), the others integrated
                v = jnp.where(committed, 0.0, velocity(x, jnp.where(prefix.committed, 0.0, t)))
                return (x + dt * v, t + dt, v), (x if record else None)
            v, vjp_fn = jax.vjp(lambda y: velocity(y, t), x)
            a_hat = x - t * v
            err = (prefix.actions - a_hat) * prefix.weights[..., None] * dim_mask
            # Â = x − t·v(x): (∂Â/∂x)ᵀ e = e − t·(∂v/∂x)ᵀ e
            g = err - t * vjp_fn(err)[0]
            w = rtc_guidance_weight(1.0 - t, prefix.max_guidance)[:, None, None]
            v_guided = v - w * g
            return (x + dt * v_guided, t + dt, v), (x if record else None)

        carry0 = (x0, jnp.float32(1.0), jnp.zeros(shape))
        if record:
            (x, _, v_last), traj = jax.lax.scan(step, carry0, None, length=int(num_steps))
        else:
            x, _, v_last = jax.lax.fori_loop(0, n, lambda _, c: step(c, None)[0], carry0)
        stats = DecodeStats(
            iterations=jnp.full((b,), n, jnp.int32),
            vjps=jnp.full((b,), n if prefix is not None and not self.prefix_trained else 0, jnp.int32),
            residual=normalized_residual(v_last, cfg.action_dim_mask()),
            converged=jnp.ones((b,), bool),
        )
        if record:
            stats = stats.replace(iterates=jnp.concatenate([traj, x[None]], axis=0))
        return x, stats
