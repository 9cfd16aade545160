"""Training with committed prefixes (decoder ``max_delay``): per-token time in π₀ and π₀.5 (per-chunk time when
constant), training examples whose committed rows are clean and carry no loss, the masked train loss, decoding
with the committed rows held exactly (flow: training-time RTC, no VJPs), and config validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.decoders import make_decoder
from pi0_eqm.decoders.realtime import Prefix
from pi0_eqm.decoders.realtime import prefix_weights
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.training.toy_data import make_batch
from pi0_eqm.training.train_step import masked_mean_loss

B, MAX_DELAY = 4, 3
SMALL = dict(real_action_dim=4, image_resolution=(16, 16))


def _setup(preset, decoder):
    cfg = model_config(preset, decoder, **SMALL)
    obs, actions, _ = make_batch(cfg, B, np.random.default_rng(0))
    return cfg, make_decoder(cfg), cfg.init(jax.random.key(0)), obs, actions


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["pi0_tiny", "pi05_tiny"])
def test_per_token_time_equals_per_chunk_time_when_constant(preset):
    cfg, _, params, obs, actions = _setup(preset, FlowConfig())
    # π₀.5's adaRMS projections start at zero (time has no effect at init): perturb every weight
    noise = np.random.default_rng(9)  # numpy: one jax.random program per param shape would compile for seconds
    params = jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + 0.05 * noise.standard_normal(p.shape, np.float32)),
                          params)
    x = jax.random.normal(jax.random.key(1), actions.shape)
    t = jnp.linspace(0.1, 0.9, B)
    field = jax.jit(lambda time: Pi0(cfg).apply({"params": params}, obs, x, time, method=Pi0.full_field))
    per_chunk = field(t)
    per_token = jnp.broadcast_to(t[:, None], x.shape[:2])
    # equal op by op; compiled, the two shapes fuse differently (measured: ≤ 7e-7 apart for π₀.5)
    np.testing.assert_allclose(np.asarray(field(per_token)), np.asarray(per_chunk), atol=1e-5, rtol=0)
    mixed = per_token.at[:, 0].set(0.0)  # one token's time changed
    assert not np.allclose(np.asarray(field(mixed)), np.asarray(per_chunk))
    with pytest.raises(ValueError, match=r"time must be \[B\] or \[B, H\]"):
        field(jnp.zeros((B, 3)))


@pytest.mark.parametrize("decoder", [FlowConfig(max_delay=MAX_DELAY), EqmConfig(max_delay=MAX_DELAY),
                                     EqmConfig(max_delay=MAX_DELAY, prefix_flag=True)], ids=["flow", "eqm", "eqm_flag"])
def test_committed_rows_are_clean_and_carry_no_loss(decoder):
    cfg = model_config("pi0_tiny", decoder, **SMALL)
    dec = make_decoder(cfg)
    h = cfg.action_horizon
    actions = jax.random.normal(jax.random.key(2), (512, h, cfg.action_dim))
    x, t, _, loss_mask = dec.training_example(actions, jax.random.key(3))
    committed = ~np.asarray(loss_mask)
    d = committed.sum(axis=1)
    # a leading block of d ~ U{0..max_delay} rows per sample
    np.testing.assert_array_equal(committed, np.arange(h)[None] < d[:, None])
    assert set(d.tolist()) == set(range(MAX_DELAY + 1)) and abs(d.mean() - MAX_DELAY / 2) < 0.25
    np.testing.assert_array_equal(np.asarray(x)[committed], np.asarray(actions)[committed])
    assert not np.any(np.isclose(np.asarray(x)[~committed], np.asarray(actions)[~committed]).all(axis=-1))
    if decoder.kind == "flow":
        t = np.asarray(t)
        assert t.shape == (512, h) and np.all(t[committed] == 0) and np.all(t[~committed] > 0)
        np.testing.assert_array_equal(t.max(axis=1, keepdims=True) * ~committed, t)  # one time per chunk otherwise
    elif decoder.prefix_flag:  # EqM's time input flags the committed rows
        np.testing.assert_array_equal(np.asarray(t), committed.astype(np.float32))
    else:
        assert np.asarray(t).shape == (512,) and not np.any(t)  # EqM's time path stays t ≡ 0


@pytest.mark.parametrize("decoder", [FlowConfig(max_delay=MAX_DELAY), EqmConfig(max_delay=MAX_DELAY)],
                         ids=["flow", "eqm"])
def test_the_train_loss_is_the_mean_over_free_rows_only(decoder):
    cfg, dec, params, obs, actions = _setup("pi0_tiny", decoder)
    rng = jax.random.key(7)
    per_token, loss_mask = jax.jit(dec.loss)(params, obs, actions, rng)
    x, t, target, _ = dec.training_example(actions, rng)
    field = jax.jit(lambda p: Pi0(cfg).apply({"params": p}, obs, x, t, method=Pi0.full_field))(params)
    by_hand = np.mean(np.square(np.asarray(field - target)), axis=-1)[np.asarray(loss_mask)].mean()
    np.testing.assert_allclose(float(masked_mean_loss(per_token, None, loss_mask)), by_hand, rtol=1e-5)
    assert not np.asarray(loss_mask).all()  # this batch has committed rows
    # no gradient reaches a committed row's loss
    grad = jax.grad(lambda p: masked_mean_loss(p, None, loss_mask))(per_token)
    assert np.all(np.asarray(grad)[~np.asarray(loss_mask)] == 0)
    # with max_delay 0 there is no mask and the loss is openpi's plain mean
    plain = make_decoder(dataclasses.replace(cfg, decoder=dataclasses.replace(decoder, max_delay=0)))
    assert plain.loss(params, obs, actions, rng)[1] is None


def test_trained_flow_decodes_with_the_committed_rows_held_and_no_vjps():
    cfg, dec, params, obs, _ = _setup("pi0_tiny", FlowConfig(max_delay=MAX_DELAY))
    assert dec.prefix_method == "rtc_trained" and dec.prefix_trained == MAX_DELAY
    h, dim = cfg.action_horizon, cfg.action_dim
    target = np.random.default_rng(4).normal(size=(B, h, dim)).astype(np.float32)
    decode = jax.jit(lambda p, o, r, pre: dec.decode(p, o, r, prefix=pre))
    for d in (1, MAX_DELAY):  # the delay is data: one compiled decode for both
        pre = Prefix(actions=jnp.asarray(target), weights=jnp.asarray(np.broadcast_to(prefix_weights(h, d, 2), (B, h))),
                     max_guidance=jnp.full((B,), 5.0), pull=jnp.zeros((B,)))
        out, stats = decode(params, obs, jax.random.key(0), pre)
        np.testing.assert_array_equal(np.asarray(out)[:, :d], target[:, :d])
        assert np.all(np.asarray(stats.vjps) == 0)
        free = np.asarray(out)[:, d:]
        plain = np.asarray(jax.jit(lambda p, o, r: dec.decode(p, o, r)[0])(params, obs, jax.random.key(0)))[:, d:]
        assert not np.allclose(free, plain)  # the free rows are conditioned on the committed ones
    assert decode._cache_size() == 1


def test_max_delay_is_validated():
    with pytest.raises(ValueError, match="max_delay must be an int >= 0"):
        FlowConfig(max_delay=-1)
    with pytest.raises(ValueError, match="max_delay must be an int >= 0"):
        EqmConfig(max_delay=1.5)
    with pytest.raises(ValueError, match="prefix_flag .* needs max_delay > 0"):
        EqmConfig(prefix_flag=True)
    with pytest.raises(ValueError, match="must leave a free row"):
        model_config("pi0_tiny", FlowConfig(max_delay=8), **SMALL)  # H = 8


def test_flagged_eqm_tells_the_field_which_rows_are_committed():
    cfg, dec, params, obs, _ = _setup("pi0_tiny", EqmConfig(max_delay=MAX_DELAY, prefix_flag=True))
    h = cfg.action_horizon
    committed = jnp.asarray(np.broadcast_to(np.arange(h) < 2, (B, h)))
    np.testing.assert_array_equal(np.asarray(dec.committed_flag(committed)), np.asarray(committed, np.float32))
    assert np.asarray(dec.committed_flag(None, B)).shape == (B, h) and not np.any(dec.committed_flag(None, B))
    target = np.random.default_rng(4).normal(size=(B, h, cfg.action_dim)).astype(np.float32)
    pre = Prefix(actions=jnp.asarray(target), weights=jnp.asarray(np.broadcast_to(prefix_weights(h, 2, 0), (B, h))),
                 max_guidance=jnp.full((B,), 5.0), pull=jnp.zeros((B,)))
    out, _ = jax.jit(lambda p, o, r: dec.decode(p, o, r, prefix=pre))(params, obs, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out)[:, :2], target[:, :2])
    flagged = jax.jit(lambda p, o, a: dec.field_fn(p, o, pre)(a))(params, obs, jnp.asarray(target))
    unflagged = jax.jit(lambda p, o, a: dec.field_fn(p, o)(a))(params, obs, jnp.asarray(target))
    assert not np.allclose(np.asarray(flagged), np.asarray(unflagged))  # the flag reaches the field
