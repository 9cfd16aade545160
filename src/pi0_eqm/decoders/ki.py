"""Knowledge-insulation training loss for either decoder (see ``pi0_eqm.models.ki``).

``ki_losses`` returns the decoder's per-token loss (the expert reading stop-gradient backbone K/V) and the per-token
FAST next-token cross-entropy of the backbone; the train step weights and sums them. ``fast_generate`` +
``fast_actions`` decode actions from the backbone alone (greedy FAST tokens → DCT⁻¹), to inspect what the insulated
backbone learned; policies still act with the expert.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0


def ki_losses(decoder, params, obs: Observation, actions: jax.Array, rng: jax.Array):
    """→ ``(action_loss [B, H], action_loss_mask [B, H] | None, fast_ce [B, F−1], fast_correct [B, F−1],
    fast_loss_mask [B, F−1])``."""
    ki = decoder.config.ki
    if ki is None:
        raise ValueError("ki_losses needs a model config with ki set")
    if obs.fast_tokens is None or obs.fast_mask is None:
        raise ValueError("knowledge insulation needs FAST tokens in the batch (observation.fast_tokens / fast_mask); "
                         "the data config adds them when the model config has ki set")
    x, t, target, action_mask = decoder.training_example(actions, rng)
    tokens, mask = obs.fast_tokens, obs.fast_mask.astype(bool)
    field, logits = decoder.model.apply({"params": params}, obs, tokens[:, :-1], mask[:, :-1], x, t,
                                        stop_gradient=ki.stop_gradient, method=Pi0.ki_forward)
    action_loss = jnp.mean(jnp.square(field - target), axis=-1)
    targets = tokens[:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = jnp.argmax(logits, axis=-1) == targets
    return action_loss, action_mask, ce, correct, mask[:, 1:]


def fast_generate(decoder, params, obs: Observation, max_len: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Greedy FAST tokens from the backbone → ``(tokens int32 [B, L], mask bool [B, L])`` as ``<begin> … <end>``.

    Jittable; only FAST ids and ``<end>`` can be emitted. Each step reruns the backbone over prefix + tokens so far
    (no KV cache: a diagnostic, not a serving path).
    """
    cfg = decoder.config
    layout = cfg.fast_layout
    if layout is None:
        raise ValueError("fast_generate needs a model config with ki set")
    max_len = max_len or cfg.ki.max_fast_tokens
    b = obs.state.shape[0]
    vocab = np.arange(cfg.vocab_size)
    allowed = jnp.asarray((layout.from_lm(vocab) >= 0) | (vocab == layout.end_id))  # FAST ids and <end>
    tokens = jnp.zeros((b, max_len), jnp.int32).at[:, 0].set(layout.begin_id)
    mask = jnp.zeros((b, max_len), bool).at[:, 0].set(True)

    def body(i, carry):
        tokens, mask, done = carry
        logits = decoder.model.apply({"params": params}, obs, tokens, mask, method=Pi0.fast_logits)
        step_logits = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
        nxt = jnp.argmax(jnp.where(allowed, step_logits, -jnp.inf), axis=-1).astype(jnp.int32)
        write = ~done
        tokens = tokens.at[:, i + 1].set(jnp.where(write, nxt, 0))
        mask = mask.at[:, i + 1].set(write)
        return tokens, mask, done | (nxt == layout.end_id)

    tokens, mask, _ = jax.lax.fori_loop(0, max_len - 1, body, (tokens, mask, jnp.zeros((b,), bool)))
    return tokens, mask


def fast_actions(tokenizer, layout, tokens, mask) -> tuple[np.ndarray, np.ndarray]:
    """Host side: generated ``<begin> … <end>`` sequences → (normalised actions ``[B, H, D]``, valid ``[B]``).

    A sequence is valid when it ends with ``<end>`` and its FAST tokens decode to exactly ``H × D`` coefficients.
    """
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    out, valid = [], []
    for seq, m in zip(tokens, mask, strict=True):
        seq = seq[m][1:]  # drop <begin>
        ended = len(seq) > 0 and seq[-1] == layout.end_id
        fast = layout.from_lm(seq[:-1] if ended else seq)
        actions, ok = tokenizer.decode_with_validity(fast.tolist())
        out.append(actions)
        valid.append(bool(ok and ended and (fast >= 0).all()))
    return np.stack(out).astype(np.float32), np.asarray(valid)
