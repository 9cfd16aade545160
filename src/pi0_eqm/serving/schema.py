"""Declarative observation schemas, checked before an observation reaches the policy.

openpi's server hands whatever arrives to the input transforms, so a wrong key, dtype or shape fails deep inside the
model with an unhelpful traceback (or, for NaN state, silently produces garbage actions). A served config declares
what it expects instead::

    schema = ObservationSchema({
        "observation/image": ImageSpec(224, 224),                      # uint8 HxWx3
        "observation/wrist_image": ImageSpec(224, 224),
        "observation/state": ArraySpec((8,), kinds="f", finite=True),  # float, no NaN/inf
        "prompt": StringSpec(default=""),                              # optional, filled in when absent
        "images": {"cam_high": ImageSpec(224, 224, layouts=("CHW",))}, # nested maps are nested dicts
    }, allow_extra=True)
    obs = validate(obs, schema)   # raises WireError listing *every* problem

``validate`` returns a shallow copy with defaults filled in and string scalars normalised to ``str``.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import numpy as np

from pi0_eqm.serving.wire import ALLOWED_KINDS
from pi0_eqm.serving.wire import KIND_NAMES
from pi0_eqm.serving.wire import WireError

__all__ = ["ArraySpec", "ImageSpec", "StringSpec", "ObservationSchema", "validate"]

_F32_MAX = float(np.finfo(np.float32).max)


def _kinds_text(kinds: str) -> str:
    return " or ".join(KIND_NAMES[k] for k in kinds)


def _shape_text(shape: tuple) -> str:
    dims = ", ".join("*" if d is None else str(d) for d in shape)
    return f"({dims},)" if len(shape) == 1 else f"({dims})"


def _shape_matches(shape: tuple, want: tuple) -> bool:
    return len(shape) == len(want) and all(w is None or s == w for s, w in zip(shape, want, strict=True))


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """An ndarray with allowed dtype kinds (subset of ``"biufUS"``), a shape (``None`` = any size) and value checks.

    ``finite=True`` rejects NaN/inf in float arrays and values that overflow float32 (the model's dtype);
    ``min_value``/``max_value`` bound numeric values and ``max_abs`` their magnitude (inclusive).
    """

    shape: tuple[int | None, ...]
    kinds: str = "f"
    finite: bool = False
    min_value: float | None = None
    max_value: float | None = None
    max_abs: float | None = None
    required: bool = True

    def __post_init__(self):
        if not self.kinds or set(self.kinds) - ALLOWED_KINDS:
            raise ValueError(f"ArraySpec.kinds must be a non-empty subset of {''.join(sorted(ALLOWED_KINDS))!r}")

    def expected(self) -> str:
        return f"{_kinds_text(self.kinds)} array of shape {_shape_text(self.shape)}"

    def check(self, path: str, value: Any) -> list[str]:
        if not isinstance(value, np.ndarray):
            return [f"{path}: expected a {self.expected()}, got {type(value).__name__}"]
        problems = []
        if value.dtype.kind not in self.kinds:
            problems.append(f"{path}: dtype {value.dtype.name!r} is not allowed; expected {_kinds_text(self.kinds)}")
        if not _shape_matches(value.shape, self.shape):
            problems.append(f"{path}: shape {_shape_text(value.shape)} is wrong; expected {_shape_text(self.shape)}")
        if problems or value.dtype.kind not in "biuf":
            return problems
        if self.finite and value.dtype.kind == "f":
            n_nan, n_inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
            if n_nan or n_inf:
                problems.append(f"{path}: contains {n_nan} NaN and {n_inf} inf value(s); expected finite values")
                return problems
            big = int((np.abs(value) > _F32_MAX).sum()) if value.dtype.itemsize > 4 else 0
            if big:
                problems.append(f"{path}: {big} value(s) overflow float32 (|x| > {_F32_MAX:.3g}); expected finite "
                                "float32 values")
                return problems
        if value.size and self.max_abs is not None and float(np.nanmax(np.abs(value))) > self.max_abs:
            problems.append(f"{path}: magnitude {float(np.nanmax(np.abs(value))):g} is above the allowed "
                            f"{self.max_abs:g}")
        if value.size and self.min_value is not None and np.nanmin(value) < self.min_value:
            problems.append(f"{path}: minimum {float(np.nanmin(value)):g} is below the allowed {self.min_value}")
        if value.size and self.max_value is not None and np.nanmax(value) > self.max_value:
            problems.append(f"{path}: maximum {float(np.nanmax(value)):g} is above the allowed {self.max_value}")
        return problems


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """A camera image: uint8 with ``channels`` channels in one of ``layouts`` ("HWC" and/or "CHW").

    ``height``/``width`` may be ``None`` (any size up to the wire limits). ``allow_float`` additionally accepts finite
    float images in [0, 1] (openpi's input transforms convert those to uint8).
    """

    height: int | None = 224
    width: int | None = 224
    channels: int = 3
    layouts: tuple[str, ...] = ("HWC",)
    allow_float: bool = False
    required: bool = True

    def __post_init__(self):
        if not self.layouts or set(self.layouts) - {"HWC", "CHW"}:
            raise ValueError("ImageSpec.layouts must be a non-empty subset of ('HWC', 'CHW')")

    def _shapes(self) -> list[tuple]:
        h, w, c = self.height, self.width, self.channels
        return [(h, w, c) if layout == "HWC" else (c, h, w) for layout in self.layouts]

    def expected(self) -> str:
        kinds = "uint8 (or float in [0, 1])" if self.allow_float else "uint8"
        shapes = " or ".join(f"{_shape_text(s)} {lay}" for s, lay in zip(self._shapes(), self.layouts, strict=True))
        return f"{kinds} image of shape {shapes}"

    def check(self, path: str, value: Any) -> list[str]:
        if not isinstance(value, np.ndarray):
            return [f"{path}: expected a {self.expected()}, got {type(value).__name__}"]
        problems = []
        is_float = value.dtype.kind == "f" and self.allow_float
        if value.dtype != np.uint8 and not is_float:
            problems.append(f"{path}: image dtype {value.dtype.name!r} is not allowed; expected {self.expected()}")
        if not any(_shape_matches(value.shape, s) for s in self._shapes()):
            problems.append(f"{path}: image shape {_shape_text(value.shape)} is wrong; expected {self.expected()}")
        if not problems and is_float:
            if not np.isfinite(value).all() or (value.size and (value.min() < 0 or value.max() > 1)):
                problems.append(
                    f"{path}: float image has values outside [0, 1] or non-finite; expected {self.expected()}"
                )
        return problems


@dataclasses.dataclass(frozen=True)
class StringSpec:
    """A text field such as ``prompt``; when absent and not required, ``default`` is filled in (if not None)."""

    required: bool = False
    default: str | None = None
    max_len: int = 4096
    allow_empty: bool = True

    def expected(self) -> str:
        return f"str of at most {self.max_len} characters"

    def check(self, path: str, value: Any) -> list[str]:
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
            value = value.item()
        if not isinstance(value, str):
            return [f"{path}: expected a {self.expected()}, got {type(value).__name__}"]
        if len(value) > self.max_len:
            return [f"{path}: string of {len(value)} characters is too long; expected at most {self.max_len}"]
        if not value and not self.allow_empty:
            return [f"{path}: empty string; expected a non-empty str"]
        return []


Spec = ArraySpec | ImageSpec | StringSpec | Mapping[str, "Spec"]


@dataclasses.dataclass(frozen=True)
class ObservationSchema:
    """Observation keys a served config expects. A ``Mapping`` value describes a nested map (e.g. ALOHA ``images``).

    ``allow_extra`` lets keys not named in ``fields`` through unchecked (openpi clients often send extras).
    """

    fields: Mapping[str, Spec]
    allow_extra: bool = True
    name: str = ""

    def describe(self) -> dict:
        """A plain, msgpack-able description (e.g. to add to the server metadata)."""

        def desc(fields: Mapping[str, Spec]) -> dict:
            return {k: desc(v) if isinstance(v, Mapping) else v.expected() for k, v in fields.items()}

        return {"name": self.name, "fields": desc(self.fields), "allow_extra": self.allow_extra}


def _validate_map(obs: Any, fields: Mapping[str, Spec], allow_extra: bool, path: str, problems: list[str]) -> Any:
    where = path or "message"
    if not isinstance(obs, dict):
        problems.append(f"{where}: expected a map of observation keys, got {type(obs).__name__}")
        return obs
    out = dict(obs)
    for key in obs:
        if not isinstance(key, str):
            problems.append(f"{where}: key {key!r:.40} is not a str; expected str keys")
    for key, spec in fields.items():
        sub = f"{path}/{key}" if path else key
        if key not in obs:
            if isinstance(spec, Mapping):
                problems.append(f"{sub}: required map is missing; expected keys {sorted(spec)}")
            elif isinstance(spec, StringSpec) and not spec.required:
                if spec.default is not None:
                    out[key] = spec.default
            elif spec.required:
                problems.append(f"{sub}: required key is missing; expected a {spec.expected()}")
            continue
        if isinstance(spec, Mapping):
            out[key] = _validate_map(obs[key], spec, allow_extra, sub, problems)
            continue
        found = spec.check(sub, obs[key])
        problems.extend(found)
        if not found and isinstance(spec, StringSpec):
            out[key] = str(obs[key].item() if isinstance(obs[key], np.ndarray) else obs[key])
    if not allow_extra:
        for key in obs:
            if isinstance(key, str) and key not in fields:
                sub = f"{path}/{key}" if path else key
                problems.append(f"{sub}: unexpected key; allowed keys are {sorted(fields)}")
    return out


def validate(obs: Any, schema: ObservationSchema) -> dict:
    """Check ``obs`` against ``schema``; return a shallow copy with defaults filled, or raise ``WireError``."""
    problems: list[str] = []
    out = _validate_map(obs, schema.fields, schema.allow_extra, "", problems)
    if problems:
        title = f"invalid observation{f' for {schema.name}' if schema.name else ''}"
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise WireError(f"{title} ({count}):\n" + "\n".join(f"  - {p}" for p in problems), problems)
    return out
