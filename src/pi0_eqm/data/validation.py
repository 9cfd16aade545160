"""Up-front checks of a training dataset against what the config expects, before any step runs.

:func:`validate_dataset` reads the low-dimensional arrays of every episode of a :class:`ChunkedDataset` (they are
cached for training anyway) and the first and last frame images of a spread of episodes, and raises
:class:`DatasetError` on the first problem, naming the key, the episode and the frame:

* state and actions must be ``[T, D]`` arrays with ``D`` the robot's state / action dim;
* every state and action value must be finite (after the float32 cast training uses);
* every camera the config reads must be present, ``uint8 [H, W, 3]``, with one shape per camera in the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import STATE_KEY


class DatasetError(ValueError):
    """The dataset does not match the config (dims, images) or holds non-finite values."""


def _check_low_dim(where: str, episode: int, key: str, values: np.ndarray, dim: int, what: str) -> None:
    if values.ndim != 2:
        raise DatasetError(f"{where}: episode {episode}, key {key!r}: expected a [T, {dim}] array, got shape "
                           f"{values.shape}")
    if values.shape[1] != dim:
        raise DatasetError(f"{where}: episode {episode}, key {key!r}: {values.shape[1]}-d {what} but the config's "
                           f"robot has {dim}-d {what}; is this dataset for another robot or config?")
    bad = ~np.isfinite(values)
    if bad.any():
        frame, d = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f"{where}: episode {episode}, frame {frame}, key {key!r}: dimension {d} is "
                           f"{values[frame, d]} ({int(bad.sum())} non-finite values in this episode); fix or drop "
                           "the episode")


def _image_episodes(n: int, count: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, count))})


def validate_dataset(dataset: ChunkedDataset, *, state_dim: int, action_dim: int, image_keys: Sequence[str],
                     where: str, image_episodes: int = 8) -> None:
    """Raise :class:`DatasetError` if ``dataset`` does not fit the config (see the module docstring).

    ``image_keys`` are the sample keys of the cameras the config reads; ``where`` names the dataset in messages;
    the images of ``image_episodes`` episodes spread over the dataset are decoded (first and last frame)."""
    missing = [k for k in image_keys if k not in dataset.image_keys]
    if missing:
        raise DatasetError(f"{where}: cameras {missing} are missing; the dataset has {list(dataset.image_keys)}")
    n = len(dataset.episode_lengths)
    for episode in range(n):
        state, actions, _ = dataset.episode_arrays(episode)
        _check_low_dim(where, episode, STATE_KEY, state, state_dim, "states")
        _check_low_dim(where, episode, ACTION_KEY, actions, action_dim, "actions")
    shapes: dict[str, tuple[tuple[int, ...], int, int]] = {}
    for episode in _image_episodes(n, image_episodes):
        last = int(dataset.episode_lengths[episode]) - 1
        for frame in sorted({0, last}):
            images = dataset.dataset.frame_images(episode, frame)
            for key in image_keys:
                image = np.asarray(images[key])
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                    raise DatasetError(f"{where}: episode {episode}, frame {frame}, key {key!r}: expected a uint8 "
                                       f"[H, W, 3] image, got {image.dtype} {image.shape}")
                first = shapes.setdefault(key, (image.shape, episode, frame))
                if image.shape != first[0]:
                    raise DatasetError(f"{where}: episode {episode}, frame {frame}, key {key!r}: image shape "
                                       f"{image.shape} differs from {first[0]} (episode {first[1]}, frame {first[2]})")
