"""The in-memory episode type shared by every dataset format, and the reader protocol.

An :class:`Episode` holds the per-step arrays of one demonstration under flat ``/``-joined keys (LIBERO naming:
``observation/image``, ``observation/wrist_image``, ``observation/state``, ``action``), each with a leading time axis
``T``, plus the language prompt.

Readers (:class:`~pi0_eqm.data.rlds.RldsDataset`, :class:`~pi0_eqm.data.lerobot.LeRobotDataset`,
:class:`InMemoryDataset`) implement :class:`EpisodeSource`, which lets the chunker read the low-dimensional arrays of
an episode without decoding images and decode only the one frame a training sample needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import io
from typing import Any
from typing import Protocol
from typing import runtime_checkable

import numpy as np
from PIL import Image

STATE_KEY = "observation/state"
ACTION_KEY = "action"
LIBERO_IMAGE_KEYS = ("observation/image", "observation/wrist_image")


@dataclasses.dataclass(frozen=True, eq=False)
class Episode:
    """One demonstration: ``steps[key]`` is an array ``[T, ...]``; ``prompt`` is the task instruction."""

    steps: Mapping[str, np.ndarray]
    prompt: str
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.steps, Mapping) or not self.steps:
            raise ValueError(f"Episode.steps must be a non-empty mapping of key -> array [T, ...], got {self.steps!r}")
        if not isinstance(self.prompt, str):
            raise TypeError(f"Episode.prompt must be a str, got {type(self.prompt).__name__}")
        if not isinstance(self.metadata, Mapping):
            raise TypeError(f"Episode.metadata must be a mapping, got {type(self.metadata).__name__}")
        steps: dict[str, np.ndarray] = {}
        lengths: dict[str, int] = {}
        for key, value in self.steps.items():
            if not isinstance(key, str) or not key or key.startswith("/") or key.endswith("/") or "//" in key:
                raise ValueError(f"Episode step keys must be non-empty '/'-joined strings like 'observation/state', got {key!r}")
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                raise TypeError(
                    f"Episode.steps[{key!r}] has dtype {arr.dtype}; expected a bool, integer or float array "
                    "(strings belong in Episode.prompt, object arrays are not allowed)"
                )
            if arr.ndim == 0:
                raise ValueError(f"Episode.steps[{key!r}] is a scalar; expected an array with a leading time axis [T, ...]")
            steps[key] = arr
            lengths[key] = arr.shape[0]
        if len(set(lengths.values())) != 1:
            raise ValueError(f"All Episode.steps arrays must share the leading time axis T; got lengths {lengths}")
        if next(iter(lengths.values())) == 0:
            raise ValueError("Episode has T=0 steps; expected at least one step")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __len__(self) -> int:
        return next(iter(self.steps.values())).shape[0]

    @property
    def length(self) -> int:
        return len(self)


@runtime_checkable
class EpisodeSource(Protocol):
    """Random access to the episodes of a dataset, in the canonical key layout.

    ``episode(i)`` returns the image keys of :attr:`image_keys` plus :data:`STATE_KEY` and :data:`ACTION_KEY`.
    """

    @property
    def image_keys(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def episode_lengths(self) -> np.ndarray:
        """Number of steps of every episode, int64 ``[num_episodes]`` (cheap: no image decoding)."""
        ...

    def episode(self, index: int, *, images: bool = True) -> Episode:
        """Episode ``index``; with ``images=False`` only the low-dimensional arrays (no image is decoded)."""
        ...

    def frame_images(self, index: int, frame: int) -> dict[str, np.ndarray]:
        """The images of one frame, ``{image_key: uint8 [H, W, C]}``."""
        ...


class InMemoryDataset:
    """An :class:`EpisodeSource` over a list of canonical episodes (tests, toy data, freshly converted data)."""

    def __init__(self, episodes: Sequence[Episode], *, image_keys: Sequence[str] | None = None):
        self._episodes = list(episodes)
        if not self._episodes:
            raise ValueError("InMemoryDataset needs at least one episode")
        first = self._episodes[0]
        if image_keys is None:
            image_keys = [k for k, v in first.steps.items() if is_image_array(v)]
        self._image_keys = tuple(image_keys)
        required = (*self._image_keys, STATE_KEY, ACTION_KEY)
        for i, ep in enumerate(self._episodes):
            check_keys(ep.steps, required, where=f"InMemoryDataset episode {i}")

    @property
    def image_keys(self) -> tuple[str, ...]:
        return self._image_keys

    def __len__(self) -> int:
        return len(self._episodes)

    def episode_lengths(self) -> np.ndarray:
        return np.array([len(ep) for ep in self._episodes], dtype=np.int64)

    def episode(self, index: int, *, images: bool = True) -> Episode:
        ep = self._episodes[check_index(index, len(self))]
        if images:
            return ep
        steps = {k: v for k, v in ep.steps.items() if k not in self._image_keys}
        return Episode(steps=steps, prompt=ep.prompt, metadata=ep.metadata)

    def frame_images(self, index: int, frame: int) -> dict[str, np.ndarray]:
        ep = self._episodes[check_index(index, len(self))]
        return {k: ep.steps[k][frame] for k in self._image_keys}


def is_image_array(arr: np.ndarray) -> bool:
    """True for ``uint8 [T, H, W, C]`` arrays with C in (1, 3, 4)."""
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] in (1, 3, 4)


def check_keys(steps: Mapping[str, Any], required: Sequence[str], *, where: str) -> None:
    missing = [k for k in required if k not in steps]
    if missing:
        raise KeyError(f"{where}: missing keys {missing}; available keys: {sorted(steps)}")


def check_index(index: int, length: int) -> int:
    index = int(index)
    if not -length <= index < length:
        raise IndexError(f"episode index {index} out of range for a dataset of {length} episodes")
    return index % length


def encode_png(image: np.ndarray) -> bytes:
    """PNG-encode a ``uint8 [H, W, C]`` image with Pillow (no TensorFlow needed)."""

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected a uint8 image [H, W, C] with C in (1, 3, 4), got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_image(data: bytes, *, channels: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to ``uint8 [H, W, C]`` (C = ``channels`` if given, else what the file holds)."""

    with Image.open(io.BytesIO(data)) as pil:
        if channels == 3 and pil.mode != "RGB":
            pil = pil.convert("RGB")
        elif channels == 1 and pil.mode != "L":
            pil = pil.convert("L")
        elif channels == 4 and pil.mode != "RGBA":
            pil = pil.convert("RGBA")
        arr = np.array(pil)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        raise ValueError(f"decoded image has dtype {arr.dtype}; only 8-bit images are supported")
    return arr
