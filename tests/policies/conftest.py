"""A real tiny LIBERO-config checkpoint on disk, produced by the real pipeline (dataset → norm stats → training)."""

import dataclasses

import numpy as np
import pytest

from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.lerobot import write_lerobot_dataset
from pi0_eqm.training import loop
from pi0_eqm.training.config import get_config
from pi0_eqm.training.norm_stats import compute_for_config


def libero_obs(rng, size=224):
    return {
        "observation/image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8).astype(np.float32),
        "prompt": "put the bowl on the plate",
    }


def make_libero_dataset(root, episodes=3, steps=12, size=48, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(episodes):
        eps.append(Episode({
            "observation/image": rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=(steps, 8)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(steps, 7)).astype(np.float32),
        }, prompt=f"task {e % 2}"))
    return write_lerobot_dataset(root, eps, fps=10)


@pytest.fixture(scope="module")
def trained_libero(tmp_path_factory):
    """Runs the real pipeline: LeRobot dataset → norm stats → 4 training steps → checkpoint on disk."""
    tmp = tmp_path_factory.mktemp("libero")
    ds = make_libero_dataset(tmp / "data" / "debug_libero")
    cfg = get_config("debug_libero")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(ds)), num_train_steps=4,
                              save_interval=4, checkpoint_base_dir=str(tmp / "ckpt"),
                              assets_base_dir=str(tmp / "assets"), async_checkpoint=False)
    compute_for_config(cfg)
    loop.train(cfg, progress=False)
    return cfg, cfg.checkpoint_dir / "4"


