"""Knowledge-insulation training loss for either decoder (see ``pi0_eqm.models.ki``).

``ki_losses`` returns the decoder's per-token loss (the expert reading stop-gradient backbone K/V) and the per-token
FAST next-token cross-entropy of the backbone; the train step weights and sums them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0


def ki_losses(decoder, params, obs: Observation, actions: jax.Array, rng: jax.Array):
    """→ ``(action_loss [B, H], fast_ce [B, F−1], fast_correct [B, F−1], fast_loss_mask [B, F−1])``."""
    ki = decoder.config.ki
    if ki is None:
        raise ValueError("ki_losses needs a model config with ki set")
    if obs.fast_tokens is None or obs.fast_mask is None:
        raise ValueError("knowledge insulation needs FAST tokens in the batch (observation.fast_tokens / fast_mask); "
                         "the data config adds them when the model config has ki set")
    x, t, target = decoder.training_example(actions, rng)
    tokens, mask = obs.fast_tokens, obs.fast_mask.astype(bool)
    field, logits = decoder.model.apply({"params": params}, obs, tokens[:, :-1], mask[:, :-1], x, t,
                                        stop_gradient=ki.stop_gradient, method=Pi0.ki_forward)
    action_loss = jnp.mean(jnp.square(field - target), axis=-1)
    targets = tokens[:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = jnp.argmax(logits, axis=-1) == targets
    return action_loss, ce, correct, mask[:, 1:]
