"""Episodes -> training samples with action chunks, as openpi/LeRobot build them.

For frame ``t`` of an episode of length ``T`` the sample carries the next ``H`` actions ``[t, t + H)``; past the end
of the episode the last action is repeated and ``action_is_pad`` is True there (LeRobot clamps the
``delta_timestamps`` indices to the episode and reports ``actions_is_pad``).

Sample dict (one frame)::

    <image key>      uint8 [H_img, W_img, C]   for each image key of the source (e.g. "observation/image")
    "state"          float32 [S]               observation/state at t
    "actions"        float32 [H, A]            actions t .. t+H-1, last action repeated past the end
    "action_is_pad"  bool [H]                  True where the action is padding
    "prompt"         str                       the episode's task instruction
    "episode_index"  int64 scalar              position of the episode in the source
    "frame_index"    int64 scalar              t
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np

from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import STATE_KEY
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.episodes import EpisodeSource
from pi0_eqm.data.episodes import InMemoryDataset


def chunk_actions(actions: np.ndarray, frame: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``(actions[t : t + H] padded by repeating the last action, is_pad [H])``."""
    T = actions.shape[0]
    if not 0 <= frame < T:
        raise IndexError(f"frame {frame} out of range for an episode of {T} steps")
    steps = np.arange(frame, frame + horizon)
    return actions[np.minimum(steps, T - 1)], steps >= T


class ChunkedDataset:
    """Random access to every frame of a dataset as a training sample (see the module docstring).

    ``dataset`` is an :class:`~pi0_eqm.data.episodes.EpisodeSource` (``RldsDataset``, ``LeRobotDataset``, ...) or a
    list of canonical episodes. Index ``i`` enumerates frames episode by episode. Low-dimensional arrays are cached per
    episode; images are decoded for the requested frame only. With ``images=False`` samples carry no images.
    """

    def __init__(self, dataset: EpisodeSource | Sequence[Episode], horizon: int, *, images: bool = True):
        if isinstance(dataset, (list, tuple)):
            dataset = InMemoryDataset(dataset)
        if not isinstance(dataset, EpisodeSource):
            raise TypeError(
                f"ChunkedDataset needs an EpisodeSource (RldsDataset, LeRobotDataset, InMemoryDataset) or a list of "
                f"Episode, got {type(dataset).__name__}"
            )
        if int(horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.dataset = dataset
        self.horizon = int(horizon)
        self.images = images
        lengths = np.asarray(dataset.episode_lengths(), dtype=np.int64)
        if lengths.shape != (len(dataset),):
            raise ValueError(f"episode_lengths() returned {lengths.shape[0]} lengths for {len(dataset)} episodes")
        if len(lengths) == 0 or np.any(lengths <= 0):
            raise ValueError(f"dataset must have at least one episode and no empty episodes; lengths: {lengths[:20]}")
        self.episode_lengths = lengths
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self._low: dict[int, tuple[np.ndarray, np.ndarray, str]] = {}

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(self.dataset.image_keys) if self.images else ()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global frame index -> ``(episode, frame)``."""
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} frames")
        index %= n
        episode = int(np.searchsorted(self._starts, index, side="right") - 1)
        return episode, index - int(self._starts[episode])

    def _low_dim(self, episode: int) -> tuple[np.ndarray, np.ndarray, str]:
        entry = self._low.get(episode)
        if entry is None:
            ep = self.dataset.episode(episode, images=False)
            T = int(self.episode_lengths[episode])
            state, actions = ep.steps[STATE_KEY], ep.steps[ACTION_KEY]
            if len(ep) != T:
                raise ValueError(f"episode {episode} has {len(ep)} steps but the index says {T}")
            entry = (np.asarray(state, dtype=np.float32), np.asarray(actions, dtype=np.float32), ep.prompt)
            self._low[episode] = entry
        return entry

    def episode_arrays(self, episode: int) -> tuple[np.ndarray, np.ndarray, str]:
        """``(state [T, S], actions [T, A], prompt)`` of an episode as training reads them (float32, cached)."""
        return self._low_dim(episode)

    def sample(self, episode: int, frame: int, *, images: bool | None = None) -> dict:
        state, actions, prompt = self._low_dim(episode)
        chunk, is_pad = chunk_actions(actions, frame, self.horizon)
        out: dict = {}
        if self.images if images is None else images:
            out.update(self.dataset.frame_images(episode, frame))
        out |= {
            "state": state[frame],
            "actions": chunk,
            "action_is_pad": is_pad,
            "prompt": prompt,
            "episode_index": np.int64(episode),
            "frame_index": np.int64(frame),
        }
        return out

    def __getitem__(self, index: int) -> dict:
        return self.sample(*self.locate(index))

    def low_dim_samples(self, *, seed: int | None = None, max_frames: int | None = None) -> Iterator[dict]:
        """Samples without images (for norm stats): in order, or in a ``seed``-shuffled order; at most ``max_frames``."""
        order: Sequence[int] = range(len(self)) if seed is None else np.random.default_rng(seed).permutation(len(self))
        if max_frames is not None:
            order = order[: int(max_frames)]
        for index in order:
            yield self.sample(*self.locate(int(index)), images=False)
