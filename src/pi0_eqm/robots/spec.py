"""``RobotSpec``: everything the code needs to know about one robot, declared once.

A robot file (``libero.py``, ``metaworld.py``, ``aloha.py``) declares one ``RobotSpec``: where its client puts each
camera and the state, the state and action dims, the LeRobot feature names of its datasets and which action dims are
made relative to the state when a config trains on delta actions. Everything else is derived from it here:

* ``inputs()`` — the robot input transform: client observation → the model's structure
  (``image`` / ``image_mask`` for the three model views, ``state``, and ``prompt`` / ``actions`` passed through);
* ``outputs()`` — the robot output transform: the first ``action_dim`` dims of the model's padded chunk;
* ``convention`` — where the model's units differ from the robot's (openpi's ALOHA ``adapt_to_pi``), the conversion
  of the state and actions into model units (end of ``inputs()``; ``action_inputs()`` for a robot-unit chunk) and of
  the model's actions back (end of ``outputs()``);
* ``repack()`` — dataset sample keys → the client's keys, so training sees exactly what a client sends;
* ``lerobot_keys()`` — the ``LeRobotDataset`` arguments that read this robot's features;
* ``schema()`` — the ``ObservationSchema`` the server checks requests against;
* ``example()`` — a valid random observation (load tests, smoke tests).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any
from typing import Protocol

import numpy as np

from pi0_eqm.data import transforms as _t
from pi0_eqm.models.pi0 import IMAGE_KEYS
from pi0_eqm.serving.realtime import COMMITTED_KEY
from pi0_eqm.serving.realtime import OVERLAP_KEY
from pi0_eqm.serving.schema import ArraySpec
from pi0_eqm.serving.schema import ImageSpec
from pi0_eqm.serving.schema import ObservationSchema
from pi0_eqm.serving.schema import StringSpec

Key = tuple[str, ...]  # a path into the (possibly nested) observation dict
STATE_MAX_ABS = 1e6  # the schema's bound on |state| (robot states are meters, radians, gripper widths)


@dataclasses.dataclass(frozen=True)
class Camera:
    key: Key  # where the client sends it: ("observation/image",) or ("images", "cam_high")
    view: str | None  # the model view it fills (one of IMAGE_KEYS), or None: accepted, not used
    lerobot_feature: str | None = None  # its LeRobot dataset feature (None: not in the datasets)
    rlds_feature: str | None = None  # its step path in an RLDS dataset, e.g. "observation/image" (None: not there)
    layouts: tuple[str, ...] = ("HWC",)  # what the schema accepts (the transform takes either)
    required: bool = True

    @property
    def sample_key(self) -> str:
        """The key of this camera in a dataset sample (``ChunkedDataset``)."""
        return "/".join(self.key)


class UnitConvention(Protocol):
    """Robot units (what clients send and execute, what datasets record) ↔ the units the model is trained in."""

    def state_to_model(self, state: np.ndarray) -> np.ndarray: ...

    def actions_to_model(self, actions: np.ndarray) -> np.ndarray: ...

    def actions_from_model(self, actions: np.ndarray) -> np.ndarray: ...

    def example_state(self, rng: np.random.Generator) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class RobotSpec:
    name: str
    state_dim: int
    action_dim: int
    cameras: tuple[Camera, ...]
    state_key: Key
    lerobot_state: str  # LeRobot feature names
    lerobot_actions: str
    delta_mask: tuple[bool, ...] | None = None  # dims made relative to the state under delta actions
    rlds_state: str = "observation/state"  # RLDS step paths (LIBERO's modified_libero_rlds layout by default)
    rlds_actions: str = "action"
    rlds_instruction: str = "language_instruction"
    prompt_required: bool = True
    image_size: int | None = 224  # what clients send (None: the model's resolution)
    convention: UnitConvention | None = None  # robot units → model units (None: the same)

    def __post_init__(self):
        views = [c.view for c in self.cameras if c.view is not None]
        if len(views) != len(set(views)) or not set(views) <= set(IMAGE_KEYS):
            raise ValueError(f"robot {self.name!r}: camera views must be distinct and among {IMAGE_KEYS}, got {views}")
        if IMAGE_KEYS[0] not in views:
            raise ValueError(f"robot {self.name!r}: one camera must fill the base view {IMAGE_KEYS[0]!r}")

    def inputs(self) -> RobotInputs:
        return RobotInputs(self)

    def outputs(self) -> SliceActions:
        return SliceActions(self.action_dim, self.convention)

    def action_inputs(self) -> tuple[_t.DataTransformFn, ...]:
        """What ``inputs()`` does to ``{"state", "actions"}`` in robot units (a previous chunk brought back into model
        space for a warm start or a real-time prefix): the unit conversion, if any."""
        return (ToModelUnits(self.convention),) if self.convention is not None else ()

    def repack(self) -> _t.RepackTransform:
        return _t.RepackTransform(_nest([*((c.key, c.sample_key) for c in self.cameras if c.lerobot_feature is not None),
                                         (self.state_key, "state"), (("actions",), "actions"), (("prompt",), "prompt")]))

    def lerobot_keys(self) -> dict[str, Any]:
        return {"image_keys": {c.sample_key: c.lerobot_feature for c in self.cameras if c.lerobot_feature is not None},
                "state_key": self.lerobot_state, "action_key": self.lerobot_actions}

    def rlds_keys(self) -> dict[str, Any]:
        """The ``RldsDataset`` keyword arguments that read this robot's cameras, state and actions."""
        images = {c.sample_key: c.rlds_feature for c in self.cameras if c.rlds_feature is not None}
        if not images:
            raise ValueError(f"robot {self.name!r} names no RLDS camera features (Camera.rlds_feature); it cannot "
                             "read RLDS datasets")
        return {"image_keys": images, "state_key": self.rlds_state, "action_key": self.rlds_actions,
                "instruction_key": self.rlds_instruction}

    def stats_placeholders(self) -> dict[str, np.ndarray]:
        """1×1 images under every dataset camera key, so the robot transforms run on samples read without images."""
        return {c.sample_key: np.zeros((1, 1, 3), np.uint8) for c in self.cameras if c.lerobot_feature is not None}

    def schema(self, image_size: int | None = None, allow_extra: bool = True) -> ObservationSchema:
        size = image_size or self.image_size
        if size is None:
            raise ValueError(f"robot {self.name!r} has no fixed image size; pass image_size")
        entries = [(c.key, ImageSpec(size, size, layouts=c.layouts, required=c.required)) for c in self.cameras]
        entries.append((self.state_key, ArraySpec((self.state_dim,), kinds="f", finite=True, max_abs=STATE_MAX_ABS)))
        entries.append((("prompt",), StringSpec(required=True, max_len=4096) if self.prompt_required
                        else StringSpec(required=False)))
        for key in (COMMITTED_KEY, OVERLAP_KEY):  # real-time chunking (optional): robot-unit action rows
            entries.append(((key,), ArraySpec((None, self.action_dim), kinds="fi", finite=True, max_abs=STATE_MAX_ABS,
                                              required=False)))
        return ObservationSchema(_nest(entries), allow_extra=allow_extra, name=self.name)

    def example(self, rng: np.random.Generator, image_size: int | None = None, prompt: str = "do the task") -> dict:
        """A random observation that ``schema(image_size)`` accepts (every camera, uint8 in its first layout)."""
        size = image_size or self.image_size
        values = [(c.key, _random_image(rng, size, c.layouts[0])) for c in self.cameras]
        state = (self.convention.example_state(rng) if self.convention is not None
                 else rng.normal(size=self.state_dim)).astype(np.float32)
        values += [(self.state_key, state), (("prompt",), prompt)]
        return _nest(values)


def _nest(items) -> dict[str, Any]:
    """``[(key path, value), ...]`` → a nested dict with each value at its path."""
    out: dict[str, Any] = {}
    for key, value in items:
        node = out
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    return out


def _random_image(rng: np.random.Generator, size: int, layout: str) -> np.ndarray:
    shape = (3, size, size) if layout == "CHW" else (size, size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _lookup(data: Mapping, key: Key):
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def uint8_hwc(img) -> np.ndarray:
    """A uint8 ``[H, W, 3]`` image from HWC or CHW, uint8 or float in [0, 1]."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:  # CHW → HWC
        img = np.transpose(img, (1, 2, 0))
    if np.issubdtype(img.dtype, np.floating):
        img = (255 * np.clip(img, 0.0, 1.0)).astype(np.uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected a uint8 HxWx3 (or CHW / float [0,1]) image, got {img.dtype} {img.shape}")
    return img


@dataclasses.dataclass(frozen=True)
class RobotInputs:
    """Client observation → ``{"image": {view: uint8 HWC}, "image_mask": {view: bool}, "state", "prompt", "actions"}``.

    Views without a camera (or whose optional camera is absent) are black images of the base view's size, masked off.
    """

    spec: RobotSpec

    def __call__(self, data: dict) -> dict:
        views = {}
        for cam in self.spec.cameras:
            value = _lookup(data, cam.key)
            if value is None:
                if cam.required:
                    raise KeyError(f"{self.spec.name} observation needs the camera {cam.sample_key!r}; "
                                   f"got keys {sorted(data)}")
                continue
            if cam.view is not None:
                views[cam.view] = uint8_hwc(value)
        state = _lookup(data, self.spec.state_key)
        if state is None:
            raise KeyError(f"{self.spec.name} observation needs the state {'/'.join(self.spec.state_key)!r}; "
                           f"got keys {sorted(data)}")
        base = views[IMAGE_KEYS[0]]
        out = {
            "state": np.asarray(state, np.float32),
            "image": {v: views.get(v, np.zeros_like(base)) for v in IMAGE_KEYS},
            "image_mask": {v: np.True_ if v in views else np.False_ for v in IMAGE_KEYS},
        }
        if "actions" in data:
            out["actions"] = np.asarray(data["actions"], np.float32)
        if "prompt" in data:
            out["prompt"] = data["prompt"]
        return ToModelUnits(self.spec.convention)(out) if self.spec.convention is not None else out


@dataclasses.dataclass(frozen=True)
class ToModelUnits:
    """``state`` and ``actions`` (where present) from robot units into model units (float32 out)."""

    convention: UnitConvention

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        if "state" in out:
            out["state"] = np.asarray(self.convention.state_to_model(np.asarray(out["state"], np.float32)), np.float32)
        if "actions" in out:
            out["actions"] = np.asarray(self.convention.actions_to_model(np.asarray(out["actions"], np.float32)),
                                        np.float32)
        return out


@dataclasses.dataclass(frozen=True)
class SliceActions:
    """Robot output transform: the first ``dim`` dims of the model's padded action chunk, in robot units."""

    dim: int
    convention: UnitConvention | None = None

    def __call__(self, data: dict) -> dict:
        actions = np.asarray(data["actions"][..., : self.dim])
        if self.convention is not None:
            actions = np.asarray(self.convention.actions_from_model(actions), actions.dtype)
        return {"actions": actions}
