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

from pi0_eqm import toy
from pi0_eqm.decoders import make_decoder
from pi0_eqm.decoders.config import EqmConfig
from pi0_eqm.decoders.config import FlowConfig
from pi0_eqm.decoders.config import SolverConfig
from pi0_eqm.decoders.eqm import eqm_training_pair
from pi0_eqm.decoders.solver import solve
from pi0_eqm.models.configs import model_config

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
    res = solve(lambda a: model.apply(params, a), init, SolverConfig(threshold=1e-2), None)
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
def test_tiny_pi0_training_reduces_loss_and_decodes(decoder):
    cfg = model_config("pi0_tiny", decoder, real_action_dim=4, image_resolution=(16, 16), action_horizon=4)
    params, losses = toy.train(cfg, steps=60, batch_size=16, lr=3e-3, seed=0)
    assert np.all(np.isfinite(losses))
    dec = make_decoder(cfg)
    # Held-out loss on a fixed batch with fixed noise, before (the same seed's init) vs after training.
    obs, actions, _ = toy.make_batch(cfg, 64, np.random.default_rng(123))
    held_out = jax.jit(lambda p: jnp.mean(jnp.stack([dec.loss(p, obs, actions, jax.random.key(i)) for i in range(4)])))
    before, after = float(held_out(cfg.init(jax.random.key(0)))), float(held_out(params))
    assert after < 0.85 * before, (before, after)
    obs, _, _ = toy.make_batch(cfg, 5, np.random.default_rng(0))
    actions, stats = jax.jit(lambda p, o, r: dec.decode(p, o, r))(params, obs, jax.random.key(0))
    assert actions.shape == (5, 4, 32)
    assert np.all(np.isfinite(np.asarray(actions)))
    assert stats.iterations.shape == (5,)
    assert int(stats.iterations.max()) <= (50 if isinstance(decoder, EqmConfig) else 5)
