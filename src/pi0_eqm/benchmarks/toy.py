"""The toy task end to end: train a decoder on generated toy data with the real training loop, then decode held-out
toy batches (``scripts/demo.py``; ``lab/scripts/benchmark_solver.py``)."""

from __future__ import annotations

import tempfile

import jax
import numpy as np

from pi0_eqm.decoders import make_decoder
from pi0_eqm.models.pi0 import Pi0Config
from pi0_eqm.training import loop
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.data_config import ToyDataConfig
from pi0_eqm.training.optimizer import AdamW
from pi0_eqm.training.optimizer import CosineDecaySchedule
from pi0_eqm.training.toy_data import make_batch


def train(config: Pi0Config, *, steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
          log_every: int = 0, progress: bool = False):
    """Trains ``config``'s decoder on the toy task from random init with the real training loop (``ToyDataConfig``,
    cosine LR with 5% warmup, no EMA, a throwaway run directory). Returns ``(params, per-step losses)``."""
    schedule = CosineDecaySchedule(warmup_steps=max(1, steps // 20), peak_lr=lr, decay_steps=steps, decay_lr=lr / 10)
    with tempfile.TemporaryDirectory(prefix="pi0_eqm_toy_") as tmp:
        run = TrainConfig(name="toy", model=config, data=ToyDataConfig(num_samples=max(4096, steps * batch_size)),
                          lr_schedule=schedule, optimizer=AdamW(weight_decay=1e-10), ema_decay=None, seed=seed,
                          batch_size=batch_size, num_train_steps=steps, log_interval=1, save_interval=steps,
                          keep_period=None, checkpoint_base_dir=tmp, assets_base_dir=tmp, async_checkpoint=False)
        out = loop.train(run, progress=progress)
    losses = np.asarray([r["loss"] for r in out["history"]])
    if log_every:
        for end in range(log_every, steps + 1, log_every):
            print(f"step {end:5d}  loss {losses[end - log_every:end].mean():.4f}")
    return out["state"].params, losses


def init_params(config: Pi0Config, seed: int = 0):
    """The parameters ``train(config, seed=seed)`` starts from (the training loop's init key)."""
    return config.init(jax.random.split(jax.random.key(seed))[1])


def evaluate(config: Pi0Config, params, *, batch_size: int = 64, seed: int = 100, settings=None):
    """Decodes held-out toy batches; returns action RMS error (real dims) and solver statistics."""
    decoder = make_decoder(config)
    obs, actions, _ = make_batch(config, batch_size, np.random.default_rng(seed))
    decode = jax.jit(lambda p, o, r: decoder.decode(p, o, r, settings=settings))
    pred, stats = decode(params, obs, jax.random.key(seed))
    d = config.real_action_dim or config.action_dim
    err = np.sqrt(np.mean((np.asarray(pred)[..., :d] - actions[..., :d]) ** 2))
    baseline = np.sqrt(np.mean(actions[..., :d] ** 2))
    return {
        "action_rmse": float(err),
        "zero_predictor_rmse": float(baseline),
        "iterations_mean": float(np.mean(stats.iterations)),
        "iterations_p90": float(np.percentile(np.asarray(stats.iterations), 90)),
        "residual_mean": float(np.mean(stats.residual)),
        "converged_frac": float(np.mean(stats.converged)),
    }


