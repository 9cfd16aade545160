"""openpi-style data transforms: callables ``dict -> dict`` composed in groups.

Training order: ``repack → robot inputs → Normalize → model inputs``; inference: ``robot inputs → Normalize → model
inputs`` then ``model outputs → Unnormalize → robot outputs``. Model inputs are ``InjectDefaultPrompt``,
``ResizeImages``, ``TokenizePrompt`` and ``PadStatesAndActions``; their output feeds ``Observation.from_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from pi0_eqm.data import normalize as _normalize

DataTransformFn = Callable[[dict], dict]


def compose(transforms: Sequence[DataTransformFn]) -> DataTransformFn:
    transforms = tuple(transforms)

    def apply(data: dict) -> dict:
        for t in transforms:
            data = t(data)
        return data

    return apply


@dataclasses.dataclass(frozen=True)
class PassThrough:
    """``fn(sample)`` plus the sample's ``keys`` unchanged (e.g. the loader's ``action_is_pad``)."""

    fn: DataTransformFn
    keys: tuple[str, ...]

    def __call__(self, data: dict) -> dict:
        return {**self.fn(data), **{k: data[k] for k in self.keys}}


@dataclasses.dataclass(frozen=True)
class Group:
    inputs: tuple[DataTransformFn, ...] = ()
    outputs: tuple[DataTransformFn, ...] = ()

    def push(self, inputs: Sequence[DataTransformFn] = (), outputs: Sequence[DataTransformFn] = ()) -> Group:
        """Appends ``inputs`` after and prepends ``outputs`` before the existing ones (openpi's ``Group.push``)."""
        return Group(self.inputs + tuple(inputs), tuple(outputs) + self.outputs)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


@dataclasses.dataclass(frozen=True)
class RepackTransform:
    """Renames keys (openpi's ``RepackTransform``): ``structure`` is a (nested) map whose leaves name keys of the
    ``/``-flattened sample; the output has ``structure``'s shape with those values."""

    structure: Mapping[str, Any]

    def __call__(self, data: dict) -> dict:
        flat = _flatten(data)
        missing = [src for src in _flatten(self.structure).values() if src not in flat]
        if missing:
            raise KeyError(f"repack: keys {missing} not in the sample; it has {sorted(flat)}")
        return _fill(self.structure, flat)


def _fill(structure: Mapping, flat: Mapping) -> dict:
    return {k: _fill(v, flat) if isinstance(v, Mapping) else flat[v] for k, v in structure.items()}


@dataclasses.dataclass(frozen=True)
class InjectDefaultPrompt:
    prompt: str | None

    def __call__(self, data: dict) -> dict:
        if self.prompt is not None and "prompt" not in data:
            data = {**data, "prompt": self.prompt}
        return data


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Letterbox-resizes a uint8 ``[H, W, 3]`` image to ``[height, width, 3]`` (openpi-client's ``resize_with_pad``)."""
    if image.shape[:2] == (height, width):
        return image
    h, w = image.shape[:2]
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    resized = np.asarray(Image.fromarray(image).resize((rw, rh), resample=Image.BILINEAR))
    out = np.zeros((height, width, image.shape[2]), dtype=image.dtype)
    top, left = (height - rh) // 2, (width - rw) // 2
    out[top : top + rh, left : left + rw] = resized
    return out


@dataclasses.dataclass(frozen=True)
class SelectImages:
    """Keeps the model's image views (``keys``), in its order; a view's mask defaults to True."""

    keys: tuple[str, ...]

    def __call__(self, data: dict) -> dict:
        missing = [k for k in self.keys if k not in data["image"]]
        if missing:
            raise KeyError(f"model needs images {missing}; the robot transform produced {sorted(data['image'])}")
        masks = data.get("image_mask", {})
        return {**data, "image": {k: data["image"][k] for k in self.keys},
                "image_mask": {k: masks.get(k, True) for k in self.keys}}


@dataclasses.dataclass(frozen=True)
class ResizeImages:
    height: int
    width: int

    def __call__(self, data: dict) -> dict:
        images = {}
        for k, img in data["image"].items():
            if img.dtype != np.uint8:
                raise TypeError(f"image {k!r} must be uint8 before resizing, got {img.dtype}")
            images[k] = resize_with_pad(img, self.height, self.width)
        return {**data, "image": images}


@dataclasses.dataclass(frozen=True)
class TokenizePrompt:
    """``prompt`` → ``tokenized_prompt`` / ``tokenized_prompt_mask``; with ``discrete_state`` the (normalised) ``state``
    is written into the prompt too (π₀.5)."""

    tokenizer: Any  # ByteTokenizer | WordHashTokenizer | PaligemmaTokenizer
    discrete_state: bool = False

    def __call__(self, data: dict) -> dict:
        if "prompt" not in data:
            raise KeyError("a prompt is required (set a default prompt for this config or send 'prompt')")
        prompt = data["prompt"]
        if isinstance(prompt, np.ndarray):
            prompt = prompt.item()
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        state = None
        if self.discrete_state:
            if "state" not in data:
                raise KeyError("this model writes the state into the prompt, but the sample has no 'state'")
            state = np.asarray(data["state"])  # binned as given (openpi): no cast that could move it across an edge
        tokens, mask = self.tokenizer.tokenize(prompt, state)
        out = {k: v for k, v in data.items() if k != "prompt"}
        return {**out, "tokenized_prompt": tokens, "tokenized_prompt_mask": mask}


def pad_to_dim(x: np.ndarray, dim: int, axis: int = -1) -> np.ndarray:
    if x.shape[axis] > dim:
        raise ValueError(f"array of shape {x.shape} has more than {dim} entries on axis {axis}")
    if x.shape[axis] == dim:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, dim - x.shape[axis])
    return np.pad(x, pad)


@dataclasses.dataclass(frozen=True)
class PadStatesAndActions:
    model_action_dim: int

    def __call__(self, data: dict) -> dict:
        data = {**data, "state": pad_to_dim(np.asarray(data["state"], np.float32), self.model_action_dim)}
        if "actions" in data:
            data["actions"] = pad_to_dim(np.asarray(data["actions"], np.float32), self.model_action_dim)
        return data


@dataclasses.dataclass(frozen=True)
class Normalize:
    norm_stats: Mapping[str, _normalize.NormStats] | None
    use_quantiles: bool = False

    def __call__(self, data: dict) -> dict:
        if self.norm_stats is None:
            return data
        return _normalize.normalize_dict(data, self.norm_stats, use_quantiles=self.use_quantiles)


@dataclasses.dataclass(frozen=True)
class Unnormalize:
    norm_stats: Mapping[str, _normalize.NormStats] | None
    use_quantiles: bool = False

    def __call__(self, data: dict) -> dict:
        if self.norm_stats is None:
            return data
        return _normalize.unnormalize_dict(data, self.norm_stats, use_quantiles=self.use_quantiles)


def make_bool_mask(*dims: int) -> tuple[bool, ...]:
    """openpi's ``make_bool_mask(6, -1)`` → 6 × True then 1 × False."""
    out: list[bool] = []
    for d in dims:
        out.extend([d > 0] * abs(d))
    return tuple(out)


def _shift_actions(data: dict, mask: tuple[bool, ...] | None, sign: float) -> dict:
    if mask is None or "actions" not in data:
        return data
    n = len(mask)
    actions = np.array(data["actions"], dtype=np.float32, copy=True)
    state = np.asarray(data["state"], np.float32)
    actions[..., :n] += sign * np.expand_dims(np.where(np.asarray(mask), state[..., :n], 0), axis=-2)
    return {**data, "actions": actions}


@dataclasses.dataclass(frozen=True)
class DeltaActions:
    """actions[..., i] −= state[i] where mask[i] (absolute → relative to the current state)."""

    mask: tuple[bool, ...] | None

    def __call__(self, data: dict) -> dict:
        return _shift_actions(data, self.mask, -1.0)


@dataclasses.dataclass(frozen=True)
class AbsoluteActions:
    """Inverse of ``DeltaActions`` (needs the unnormalized state in the outputs)."""

    mask: tuple[bool, ...] | None

    def __call__(self, data: dict) -> dict:
        return _shift_actions(data, self.mask, 1.0)
