"""Robot-specific input/output transforms (openpi's ``LiberoInputs``/``LiberoOutputs`` and friends).

Inputs map a robot's observation dict (the keys its client sends) to the model's structure::

    {"image": {"base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"}, "image_mask": {...}, "state", "prompt",
     "actions" (training only)}

Outputs cut the model's padded action chunk back to the robot's action dimension.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _uint8_hwc(img) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:  # CHW → HWC
        img = np.transpose(img, (1, 2, 0))
    if np.issubdtype(img.dtype, np.floating):
        img = (255 * np.clip(img, 0.0, 1.0)).astype(np.uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected a uint8 HxWx3 (or CHW / float [0,1]) image, got {img.dtype} {img.shape}")
    return img


def _pass_actions_and_prompt(data: dict, out: dict) -> dict:
    """Carries the training actions and the prompt through a robot input transform."""
    if "actions" in data:
        out["actions"] = np.asarray(data["actions"], np.float32)
    if "prompt" in data:
        out["prompt"] = data["prompt"]
    return out


@dataclasses.dataclass(frozen=True)
class _SliceActions:
    """Robot output transform: the first ``dim`` dims of the model's padded action chunk."""

    dim: int

    def __call__(self, data: dict) -> dict:
        return {"actions": np.asarray(data["actions"][..., : self.dim])}


def _two_camera_inputs(data: dict, base_key: str, wrist_key: str, state_key: str) -> dict:
    base = _uint8_hwc(data[base_key])
    wrist = _uint8_hwc(data[wrist_key])
    out = {
        "state": np.asarray(data[state_key], np.float32),
        "image": {"base_0_rgb": base, "left_wrist_0_rgb": wrist, "right_wrist_0_rgb": np.zeros_like(base)},
        "image_mask": {"base_0_rgb": np.True_, "left_wrist_0_rgb": np.True_, "right_wrist_0_rgb": np.False_},
    }
    return _pass_actions_and_prompt(data, out)


@dataclasses.dataclass(frozen=True)
class LiberoInputs:
    """``observation/image``, ``observation/wrist_image`` (uint8 224² HWC), ``observation/state`` (8,), ``prompt``."""

    def __call__(self, data: dict) -> dict:
        return _two_camera_inputs(data, "observation/image", "observation/wrist_image", "observation/state")


@dataclasses.dataclass(frozen=True)
class LiberoOutputs(_SliceActions):
    dim: int = 7


@dataclasses.dataclass(frozen=True)
class MetaWorldInputs(LiberoInputs):
    """Same keys as LIBERO: corner camera (upright), ``gripperPOV`` wrist camera, 4-d state (hand xyz + gripper)."""


@dataclasses.dataclass(frozen=True)
class MetaWorldOutputs(_SliceActions):
    dim: int = 4


@dataclasses.dataclass(frozen=True)
class AlohaInputs:
    """ALOHA / RoboTwin (openpi ALOHA keys, ``adapt_to_pi=False``): ``state`` (14,), ``images`` dict of
    ``cam_high``, ``cam_left_wrist``, ``cam_right_wrist`` (uint8 CHW or HWC), optional ``prompt``."""

    def __call__(self, data: dict) -> dict:
        images = data["images"]
        if "cam_high" not in images:
            raise KeyError(f"ALOHA observation needs images['cam_high']; got {sorted(images)}")
        base = _uint8_hwc(images["cam_high"])
        out_images, masks = {"base_0_rgb": base}, {"base_0_rgb": np.True_}
        for src, dst in (("cam_left_wrist", "left_wrist_0_rgb"), ("cam_right_wrist", "right_wrist_0_rgb")):
            if src in images:
                out_images[dst], masks[dst] = _uint8_hwc(images[src]), np.True_
            else:
                out_images[dst], masks[dst] = np.zeros_like(base), np.False_
        out = {"state": np.asarray(data["state"], np.float32), "image": out_images, "image_mask": masks}
        return _pass_actions_and_prompt(data, out)


@dataclasses.dataclass(frozen=True)
class AlohaOutputs(_SliceActions):
    dim: int = 14
