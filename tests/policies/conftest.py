"""LIBERO observations and generated LIBERO-layout datasets for the tests (the trained checkpoint built from them is the
session fixture ``trained_libero`` in ``tests/conftest.py``)."""

import numpy as np

from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.lerobot import write_lerobot_dataset


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
