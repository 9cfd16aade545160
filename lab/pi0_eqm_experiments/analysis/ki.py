"""What an insulated backbone learned: actions decoded from its FAST tokens vs the expert's, on dataset chunks.

``backbone_vs_expert(config, step_dir)`` takes ``n`` chunks of the config's dataset (the real transform pipeline,
normalised actions), greedily decodes FAST tokens from the backbone and actions from the expert (the configured
decoder), and reports the FAST next-token accuracy under teacher forcing, the fraction of valid FAST sequences, and
both RMSEs against the dataset chunk in normalised units (real action dims only).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def backbone_vs_expert(config, step_dir: str | os.PathLike, *, n: int = 64, seed: int = 0) -> dict:
    from pi0_eqm.data.chunking import ChunkedDataset
    from pi0_eqm.decoders import make_decoder
    from pi0_eqm.decoders.ki import fast_actions
    from pi0_eqm.decoders.ki import fast_generate
    from pi0_eqm.decoders.ki import ki_losses
    from pi0_eqm.models.observation import Observation
    from pi0_eqm.training.params_io import restore_params

    model = config.model
    if model.ki is None:
        raise ValueError(f"config {config.name!r} has no knowledge insulation (model.ki is None)")
    data_cfg = config.data.create(model, config.assets_dir)
    if data_cfg.fast_tokenizer is None or data_cfg.norm_stats is None:
        raise FileNotFoundError(f"no norm stats / FAST tokenizer under {config.assets_dir}; run "
                                f"`uv run scripts/compute_norm_stats.py {config.name}`")
    source = ChunkedDataset(config.data.open_source(), model.action_horizon)
    transform = data_cfg.pipeline.training()
    rng = np.random.default_rng(seed)
    samples = []
    for i in rng.permutation(len(source)):
        s = source[int(i)]
        if s["action_is_pad"].any():
            continue
        samples.append(transform(s))
        if len(samples) == n:
            break
    batch = jax.tree.map(lambda *x: np.stack(x), *samples)
    obs = Observation.from_dict(batch)
    actions = jnp.asarray(batch["actions"], jnp.float32)
    params = restore_params(Path(step_dir) / "params", restore_type=np.ndarray)
    params = jax.tree.map(jnp.asarray, params)
    decoder = make_decoder(model)
    real = model.real_action_dim or model.action_dim

    _, _, ce, correct, mask = jax.jit(lambda p: ki_losses(decoder, p, obs, actions, jax.random.key(seed)))(params)
    w = np.asarray(mask, np.float32)
    tokens, tmask = jax.jit(lambda p: fast_generate(decoder, p, obs))(params)
    from_backbone, valid = fast_actions(data_cfg.fast_tokenizer, model.fast_layout, tokens, tmask)
    from_expert, stats = jax.jit(lambda p: decoder.decode(p, obs, jax.random.key(seed + 1)))(params)
    target = np.asarray(actions)[..., :real]

    def rmse(x, sel=None):
        err = np.square(np.asarray(x)[..., :real] - target)
        if sel is not None:
            err = err[sel]
        return float(np.sqrt(err.mean())) if err.size else None

    return {
        "chunks": len(samples),
        "fast_ce": float((np.asarray(ce) * w).sum() / w.sum()),
        "fast_acc_teacher_forced": float((np.asarray(correct) * w).sum() / w.sum()),
        "fast_valid": float(valid.mean()),
        "fast_rmse_valid": rmse(from_backbone, valid),
        "fast_rmse_all": rmse(from_backbone),
        "expert_rmse": rmse(from_expert),
        "expert_iters_mean": float(np.mean(np.asarray(stats.iterations))),
        "zero_rmse": rmse(np.zeros_like(target)),  # predicting the mean chunk (0 after z-scoring)
    }
