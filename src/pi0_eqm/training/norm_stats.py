"""Compute a config's norm stats (openpi's ``compute_norm_stats.py``) from its dataset, without decoding images."""

from __future__ import annotations

import logging
from pathlib import Path

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.normalize import compute_norm_stats
from pi0_eqm.data.normalize import save_norm_stats
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.data_config import EpisodicDataConfig

logger = logging.getLogger("pi0_eqm")


def compute_for_config(config: TrainConfig, *, max_frames: int | None = None, seed: int | None = 0) -> Path:
    """Writes ``<assets_dir>/<asset_id>/norm_stats.json`` (atomically) and returns its directory."""
    if not isinstance(config.data, EpisodicDataConfig):
        raise ValueError(f"config {config.name!r} uses {type(config.data).__name__}, which needs no norm stats")
    data_cfg = config.data.create(config.model, config.assets_dir)
    chunked = ChunkedDataset(config.data.open_source(), config.model.action_horizon, images=False)
    transform = data_cfg.stats_transform()

    def samples():
        for s in chunked.low_dim_samples(seed=seed, max_frames=max_frames):
            out = _low_dim_transform(transform, s)
            yield {"state": out["state"], "actions": out["actions"], "action_is_pad": s["action_is_pad"]}

    stats = compute_norm_stats(samples(), keys=("state", "actions"), max_frames=max_frames)
    out_dir = config.assets_dir / config.data.asset_id
    save_norm_stats(out_dir, stats)
    logger.info("wrote %s", out_dir / "norm_stats.json")
    return out_dir


def _low_dim_transform(transform, sample: dict) -> dict:
    """Runs repack + robot transforms on a sample without images (dummy 1×1 images keep the transforms happy)."""
    import numpy as np

    filled = dict(sample)
    for key in ("observation/image", "observation/wrist_image"):
        filled.setdefault(key, np.zeros((1, 1, 3), np.uint8))
    return transform(filled)
