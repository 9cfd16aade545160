"""The pure, jittable train step: decoder loss (+ FAST loss under knowledge insulation) → grads → optax update → EMA.

All mutable training state lives in one ``TrainState`` pytree (checkpointed whole). The per-step RNG is
``fold_in(state.rng, state.step)`` so a resumed run draws the same noise as an uninterrupted one. With a
``ParamPartition`` (``training/freeze.py``) gradients, optimizer state and EMA updates cover the trainable params
only; frozen params pass through unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from pi0_eqm.decoders.base import Decoder
from pi0_eqm.decoders.ki import ki_losses
from pi0_eqm.models.observation import Observation
from pi0_eqm.training.freeze import ParamPartition

_NOTHING_FROZEN = ParamPartition()


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any | None
    rng: jax.Array  # raw uint32 key data, so it checkpoints as a plain array


def init_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array, ema: bool,
                     partition: ParamPartition = _NOTHING_FROZEN) -> TrainState:
    params = partition.cast_frozen(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(partition.split(params)[0]),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
    )


def _param_norm(params) -> jax.Array:
    leaves = [
        x
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if x.ndim > 1 and not any(getattr(k, "key", None) in ("pos_embedding", "input_embedding") for k in path)
    ]
    return optax.global_norm(leaves)


def masked_mean_loss(per_token: jax.Array, action_is_pad: jax.Array | None,
                     loss_mask: jax.Array | None = None) -> jax.Array:
    """Mean of ``[B, H]`` per-token losses, excluding chunk positions padded past the episode end and positions whose
    ``loss_mask`` is False (a decoder's committed rows)."""
    if action_is_pad is None and loss_mask is None:
        return jnp.mean(per_token)
    keep = jnp.ones(per_token.shape, bool)
    if action_is_pad is not None:
        keep = keep & ~action_is_pad
    if loss_mask is not None:
        keep = keep & loss_mask
    w = keep.astype(per_token.dtype)
    return jnp.sum(per_token * w) / jnp.maximum(jnp.sum(w), 1.0)


def make_train_step(decoder: Decoder, tx: optax.GradientTransformation, ema_decay: float | None, lr_schedule=None,
                    partition: ParamPartition = _NOTHING_FROZEN):
    """Returns ``step(state, obs, actions, action_is_pad) -> (state, metrics)`` (not jitted; callers jit/shard).

    With knowledge insulation (``decoder.config.ki``) the loss is ``action_loss + ki.loss_weight · fast_ce`` and the
    metrics add ``action_loss``, ``fast_ce`` and ``fast_acc`` (next-FAST-token accuracy).
    """
    ki = decoder.config.ki

    def step_fn(state: TrainState, obs: Observation, actions: jax.Array, action_is_pad: jax.Array | None = None):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        trainable, frozen = partition.split(state.params)

        def loss_fn(trainable):
            params = partition.merge(trainable, frozen)
            if ki is None:
                per_token, loss_mask = decoder.loss(params, obs, actions, rng)
                return masked_mean_loss(per_token, action_is_pad, loss_mask), {}
            per_token, loss_mask, ce, correct, ce_mask = ki_losses(decoder, params, obs, actions, rng)
            action_loss = masked_mean_loss(per_token, action_is_pad, loss_mask)
            w = ce_mask.astype(jnp.float32)
            n = jnp.maximum(jnp.sum(w), 1.0)
            fast_ce = jnp.sum(ce * w) / n
            aux = {"action_loss": action_loss, "fast_ce": fast_ce, "fast_acc": jnp.sum(correct * w) / n}
            return action_loss + ki.loss_weight * fast_ce, aux

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        params = partition.merge(trainable, frozen)
        ema_params = state.ema_params
        if ema_decay is not None and ema_params is not None:
            ema_trainable, ema_frozen = partition.split(ema_params)
            ema_trainable = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema_trainable, trainable)
            ema_params = partition.merge(ema_trainable, ema_frozen)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "param_norm": _param_norm(params), **aux}
        if lr_schedule is not None:
            metrics["lr"] = lr_schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
        return new_state, metrics

    return step_fn
