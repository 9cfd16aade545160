"""Small real datasets for the data-pipeline tests: 3 episodes of 12-18 steps with 32x32 images."""

from __future__ import annotations

import numpy as np
import pytest

from pi0_eqm.data.episodes import Episode

IMAGE_SIZE = 32
LENGTHS = (12, 15, 18)
PROMPTS = ("pick up the red block", "open the drawer", "pick up the red block")


def make_image(episode: int, t: int, *, wrist: bool = False, size: int = IMAGE_SIZE) -> np.ndarray:
    """A smooth image whose brightness encodes (episode, t): consecutive frames differ by 4 gray levels."""
    y, x = np.mgrid[0:size, 0:size]
    if wrist:
        x, y = y, x
    channels = [2 * x + y + 40 * c + 4 * t + 2 * episode for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def make_episode(episode: int, length: int, prompt: str, *, seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed + episode)
    state = rng.normal(size=(length, 8)).astype(np.float32)
    state[:, 7] = 0.04  # a constant gripper dimension, like LIBERO's
    return Episode(
        steps={
            "observation/image": np.stack([make_image(episode, t) for t in range(length)]),
            "observation/wrist_image": np.stack([make_image(episode, t, wrist=True) for t in range(length)]),
            "observation/state": state,
            "action": (rng.normal(size=(length, 7)) + 100 * episode).astype(np.float32),
        },
        prompt=prompt,
        metadata={"file_path": f"/demos/episode_{episode}.hdf5", "success": True},
    )


def make_episodes(lengths=LENGTHS, prompts=PROMPTS, *, seed: int = 0) -> list[Episode]:
    return [make_episode(i, n, p, seed=seed) for i, (n, p) in enumerate(zip(lengths, prompts, strict=True))]


@pytest.fixture(scope="session")
def episodes() -> list[Episode]:
    return make_episodes()


@pytest.fixture(scope="session")
def rlds_dir(tmp_path_factory, episodes):
    from pi0_eqm.data.rlds import write_rlds_dataset

    return write_rlds_dataset(tmp_path_factory.mktemp("rlds"), "toy_libero", episodes)


@pytest.fixture(scope="session")
def lerobot_dir(tmp_path_factory, episodes):
    from pi0_eqm.data.lerobot import write_lerobot_dataset

    return write_lerobot_dataset(tmp_path_factory.mktemp("lerobot") / "libero", episodes, fps=10)


@pytest.fixture(scope="session")
def lerobot_video_dir(tmp_path_factory, episodes):
    from pi0_eqm.data.lerobot import write_lerobot_dataset

    return write_lerobot_dataset(tmp_path_factory.mktemp("lerobot_video") / "libero", episodes, fps=10, video=True)


def assert_episodes_equal(a: Episode, b: Episode, *, image_atol: float = 0) -> None:
    assert a.prompt == b.prompt
    assert set(a.steps) == set(b.steps), (sorted(a.steps), sorted(b.steps))
    for key in a.steps:
        assert a.steps[key].shape == b.steps[key].shape, key
        assert a.steps[key].dtype == b.steps[key].dtype, key
        if a.steps[key].dtype == np.uint8 and image_atol:
            diff = np.abs(a.steps[key].astype(np.int16) - b.steps[key].astype(np.int16)).mean()
            assert diff <= image_atol, (key, diff)
        else:
            np.testing.assert_array_equal(a.steps[key], b.steps[key], err_msg=key)
