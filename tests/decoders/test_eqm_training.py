"""EqM end to end: training on a toy distribution reduces the loss and the solver then lands near the data.

Two levels: a small MLP field on a bimodal 2-D chunk distribution (fast, many steps; pins the training-target and
solver signs together), and the tiny π₀-EqM / π₀-flow on the generated toy task (real model path).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pi0_eqm.benchmarks import toy
from pi0_eqm.decoders import make_decoder
from pi0_eqm.decoders.eqm import eqm_training_pair
from pi0_eqm.decoders.solver import solve
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import SOLVER_PRESETS
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.models.decoder_config import SolverConfig
from pi0_eqm.training import toy_data

H, D = 4, 2
MODES = jnp.array([[1.0, 0.5], [-1.0, -0.5]])  # two modes; a chunk repeats one mode H times


class Field(nn.Module):
    @nn.compact
    def __call__(self, x):
        b = x.shape[0]
        h = x.reshape(b, -1)
        for _ in range(3):
            h = nn.gelu(nn.Dense(256)(h))
        return nn.Dense(H * D)(h).reshape(b, H, D)


def test_mlp_eqm_learns_bimodal_chunks():
    model = Field()
    params = model.init(jax.random.key(0), jnp.zeros((1, H, D)))
    tx = optax.adam(1e-3)
    opt = tx.init(params)
    eqm = EqmConfig()

    @jax.jit
    def step(params, opt, rng):
        k1, k2 = jax.random.split(rng)
        ids = jax.random.bernoulli(k1, 0.5, (256,)).astype(jnp.int32)
        data = jnp.broadcast_to(MODES[ids][:, None, :], (256, H, D))
        x, target = eqm_training_pair(data, k2, eqm)
        loss, g = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - target) ** 2))(params)
        upd, opt = tx.update(g, opt)
        return optax.apply_updates(params, upd), opt, loss

    losses = []
    for i in range(1500):
        params, opt, loss = step(params, opt, jax.random.key(i + 1))
        losses.append(float(loss))
    assert np.mean(losses[-100:]) < 0.7 * np.mean(losses[:100])

    init = jax.random.normal(jax.random.key(999), (64, H, D))
    # Both the default step (η 0.03, μ 0.3, run to the root) and the paper preset land on the modes. With the step
    # guard on, the default stalls on this field: its residual rises on the way in from noise, and each rise halves η.
    res = solve(lambda a: model.apply(params, a), init, SolverConfig(threshold=1e-2, max_iters=300), None)
    paper = solve(lambda a: model.apply(params, a), init, SOLVER_PRESETS["paper"], None)
    np.testing.assert_allclose(np.asarray(paper.actions), np.asarray(res.actions), atol=0.05)
    a = np.asarray(res.actions)
    dist = np.min(np.stack([np.abs(a - np.asarray(m)).max(axis=(1, 2)) for m in MODES]), axis=0)
    assert np.mean(dist < 0.1) > 0.9, np.sort(dist)
    # Both modes are found (no collapse).
    near0 = np.abs(a - np.asarray(MODES[0])).max(axis=(1, 2)) < 0.1
    assert 0.2 < near0.mean() < 0.8
    assert float(np.median(res.iterations)) < 300
    # Following the field with the opposite sign never lands on the data.
    wrong = init
    for _ in range(100):
        wrong = wrong + 0.003 * model.apply(params, wrong)
    wd = np.min(np.stack([np.abs(np.asarray(wrong) - np.asarray(m)).max(axis=(1, 2)) for m in MODES]), axis=0)
    assert np.mean(wd < 0.1) < 0.1


@pytest.mark.parametrize("decoder", [EqmConfig(solver=SolverConfig(max_iters=50)), FlowConfig(num_steps=5)],
                         ids=["eqm", "flow"])
@pytest.mark.slow
def test_tiny_pi0_training_reduces_loss_and_decodes(decoder):
    cfg = model_config("pi0_tiny", decoder, real_action_dim=4, image_resolution=(16, 16), action_horizon=4)
    params, losses = toy.train(cfg, steps=60, batch_size=16, lr=3e-3, seed=0)
    assert np.all(np.isfinite(losses))
    dec = make_decoder(cfg)
    # Held-out loss on a fixed batch with fixed noise, before (the same seed's init) vs after training.
    obs, actions, _ = toy_data.make_batch(cfg, 64, np.random.default_rng(123))
    keys = jax.random.split(jax.random.key(0), 4)
    held_out = jax.jit(lambda p: jnp.mean(jax.lax.map(lambda k: dec.loss(p, obs, actions, k)[0], keys)))
    before, after = float(held_out(toy.init_params(cfg, seed=0))), float(held_out(params))
    assert after < 0.85 * before, (before, after)
    obs, _, _ = toy_data.make_batch(cfg, 5, np.random.default_rng(0))
    actions, stats = jax.jit(lambda p, o, r: dec.decode(p, o, r))(params, obs, jax.random.key(0))
    assert actions.shape == (5, 4, 32)
    assert np.all(np.isfinite(np.asarray(actions)))
    assert stats.iterations.shape == (5,)
    assert int(stats.iterations.max()) <= (50 if isinstance(decoder, EqmConfig) else 5)


# ------------------------------------------------------------------------------------------------ training options
def test_uniform_gamma_draws_are_unchanged():
    """The default ("uniform") draws γ exactly as before the options existed (same key → same γ)."""
    from pi0_eqm.decoders.eqm import sample_gamma

    key = jax.random.key(7)
    np.testing.assert_array_equal(np.asarray(sample_gamma(key, 64, EqmConfig())),
                                  np.asarray(jax.random.uniform(key, (64,), minval=0.0, maxval=1.0)))


def test_data_mixture_puts_the_chosen_share_of_gamma_in_the_decay_region():
    from pi0_eqm.decoders.eqm import sample_gamma

    n = 20_000
    uniform = np.asarray(sample_gamma(jax.random.key(0), n, EqmConfig()))
    mixed = np.asarray(sample_gamma(jax.random.key(0), n, EqmConfig(gamma_sampling="data_mixture", data_fraction=0.5)))
    assert np.all((mixed >= 0) & (mixed <= 1))
    # P(γ > a) = 0.2 under U(0, 1); 0.5 + 0.5·0.2 = 0.6 under the 50/50 mixture with U(a, 1).
    assert abs(np.mean(uniform > 0.8) - 0.2) < 0.02
    assert abs(np.mean(mixed > 0.8) - 0.6) < 0.02
    with pytest.raises(ValueError, match="gamma_sampling"):
        EqmConfig(gamma_sampling="beta")
    with pytest.raises(ValueError, match="data_fraction"):
        EqmConfig(data_fraction=1.5)


def test_real_dim_loss_ignores_padded_dims_and_decoding_keeps_them_zero():
    cfg = model_config("pi0_tiny", EqmConfig(loss_dims="real", solver=SolverConfig(max_iters=3)), real_action_dim=4,
                       image_resolution=(16, 16), action_horizon=4)
    dec = make_decoder(cfg)
    obs, actions, _ = toy_data.make_batch(cfg, 4, np.random.default_rng(0))
    x, _, target, loss_mask = dec.training_example(actions, jax.random.key(1))
    assert np.all(np.asarray(x)[..., 4:] == 0) and np.all(np.asarray(target)[..., 4:] == 0) and loss_mask is None
    params = cfg.init(jax.random.key(0))
    loss, _ = dec.loss(params, obs, actions, jax.random.key(1))
    # The per-token loss is the mean over the 4 real dims of the squared field error.
    from pi0_eqm.models.pi0 import Pi0

    f = dec.model.apply({"params": params}, obs, x, jnp.zeros((4,)), method=Pi0.full_field)
    np.testing.assert_allclose(np.asarray(loss), np.mean(np.square(np.asarray(f - target))[..., :4], -1), rtol=1e-5)
    out, _ = dec.decode(params, obs, jax.random.key(2))
    assert np.all(np.asarray(out)[..., 4:] == 0) and np.any(np.asarray(out)[..., :4] != 0)


@pytest.mark.slow
def test_flow_steps_are_traced_and_match_the_static_scan():
    """Flow's Euler step count reaches the decoder as a traced value (one compile for any count) and gives exactly
    the chunk of the static ``lax.scan`` path (the one ``record=True`` uses)."""
    from pi0_eqm.decoders.flow import FlowDecodeSettings

    cfg = model_config("pi0_tiny", FlowConfig(), real_action_dim=4, image_resolution=(16, 16), action_horizon=4)
    dec = make_decoder(cfg)
    params = cfg.init(jax.random.key(0))
    obs, _, _ = toy_data.make_batch(cfg, 2, np.random.default_rng(0))
    traced = jax.jit(lambda p, o, r, n: dec.decode(p, o, r, settings=FlowDecodeSettings(max_iters=n)))
    for n in (3, 10):
        a, stats = traced(params, obs, jax.random.key(1), jnp.int32(n))
        b, _ = dec.decode(params, obs, jax.random.key(1), settings=FlowDecodeSettings(max_iters=n), record=True)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert stats.iterations.tolist() == [n, n]
    assert traced._cache_size() == 1
