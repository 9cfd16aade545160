"""Weight loaders used at init time (openpi's ``training/weight_loaders.py``), with errors that name every problem.

A loader's ``load(reference_params)`` returns params with exactly the reference's tree: loaded values where the
checkpoint has them (cast to the reference dtype), reference values (fresh init) for the missing keys allowed by
``missing_regex``. Extra checkpoint keys are dropped and logged. Anything else — a missing key not allowed by the
regex, or a shape mismatch — raises one :class:`WeightLoadError` listing every offending path.

If ``reference_params`` is abstract (``jax.eval_shape``), filled-in keys stay ``jax.ShapeDtypeStruct`` placeholders
that the caller replaces with a real init.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import logging
import os
from pathlib import Path
import re
from typing import Any

import flax.traverse_util
import numpy as np

from pi0_eqm.training.params_io import restore_params

logger = logging.getLogger(__name__)

PI0_BASE_PARAMS = "gs://openpi-assets/checkpoints/pi0_base/params"
PALIGEMMA_NPZ = "gs://vertex-model-garden-paligemma-us/paligemma/pt_224.npz"


class WeightLoadError(ValueError):
    """Loaded weights do not fit the model (missing keys and/or shape mismatches, all listed)."""


def _flatten(tree: Mapping) -> dict[str, Any]:
    return flax.traverse_util.flatten_dict(tree, sep="/")


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def merge_params(loaded: Mapping, reference: Mapping, *, missing_regex: str) -> dict:
    """Merge ``loaded`` into the tree of ``reference`` (see the module docstring).

    ``missing_regex`` is matched with ``re.fullmatch`` against ``/``-joined paths (openpi semantics): ``"^$"``
    allows nothing to be missing, ``".*"`` everything, ``".*lora.*"`` only LoRA weights.
    """
    flat_loaded = _flatten(loaded)
    flat_ref = _flatten(reference)
    pattern = re.compile(missing_regex)

    out: dict[str, Any] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    filled: list[str] = []
    for key, ref in flat_ref.items():
        if key in flat_loaded:
            value = flat_loaded[key]
            if _shape(value) != _shape(ref):
                mismatched.append(f"{key}: expected shape {_shape(ref)}, got {_shape(value)}")
                continue
            out[key] = value if value.dtype == ref.dtype else value.astype(ref.dtype)
        elif pattern.fullmatch(key):
            out[key] = ref
            filled.append(key)
        else:
            missing.append(f"{key}: shape {_shape(ref)} {np.dtype(ref.dtype).name}")

    extra = sorted(set(flat_loaded) - set(flat_ref))
    if extra:
        logger.warning("dropping %d loaded weights the model does not have: %s", len(extra), ", ".join(extra))
    if filled:
        logger.info("%d params not in the loaded weights keep their fresh init: %s", len(filled), ", ".join(filled))

    if missing or mismatched:
        parts = ["loaded weights do not fit the model:"]
        if missing:
            parts.append(
                f"{len(missing)} model params are missing from the weights (and do not match missing_regex "
                f"{missing_regex!r}):"
            )
            parts += [f"  {m}" for m in missing]
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches:")
            parts += [f"  {m}" for m in mismatched]
        if extra:
            parts.append(f"({len(extra)} extra loaded keys were ignored, e.g. {', '.join(extra[:5])})")
        raise WeightLoadError("\n".join(parts))
    return flax.traverse_util.unflatten_dict(out, sep="/")


def _local_path(path: str | os.PathLike, *, what: str, howto: str) -> Path:
    text = str(path)
    if "://" in text:
        raise FileNotFoundError(f"{what}: {text} is a remote path, and nothing is downloaded at run time. {howto}")
    local = Path(text).expanduser().absolute()
    if not local.exists():
        raise FileNotFoundError(f"{what} not found: looked for {local}. {howto}")
    return local


@dataclasses.dataclass(frozen=True)
class NoOpWeightLoader:
    """Keep the freshly initialized params."""

    def load(self, params: dict) -> dict:
        return params


@dataclasses.dataclass(frozen=True)
class CheckpointWeightLoader:
    """Load an openpi π₀ params checkpoint (``<ckpt>/params``, released or training, with or without ``value``).

    As openpi's loader, only LoRA params (absent from a base checkpoint) may be missing; they keep their init.
    """

    params_path: str
    missing_regex: str = ".*lora.*"

    def load(self, params: dict) -> dict:
        path = _local_path(
            self.params_path,
            what="π₀ params checkpoint",
            howto=(
                f"Copy the checkpoint to local disk yourself, e.g. `gsutil -m cp -r {PI0_BASE_PARAMS} "
                "<dir>/pi0_base/` (openpi's download cache keeps it under ~/.cache/openpi/openpi-assets/checkpoints/"
                "pi0_base/params), or convert your own weights with pi0_eqm.training.checkpoints.save_params, and "
                "pass the local 'params' directory."
            ),
        )
        loaded = restore_params(path, restore_type=np.ndarray)
        return merge_params(loaded, params, missing_regex=self.missing_regex)


@dataclasses.dataclass(frozen=True)
class PaliGemmaWeightLoader:
    """Load big_vision PaliGemma weights (``.npz`` with flat keys ``params/img/...``, ``params/llm/...``) under
    ``PaliGemma/``; everything else (action expert, projections) keeps its fresh init."""

    npz_path: str

    def load(self, params: dict) -> dict:
        path = _local_path(
            self.npz_path,
            what="PaliGemma .npz weights",
            howto=(
                f"Download them once yourself, e.g. `gsutil cp {PALIGEMMA_NPZ} <dir>/` (openpi's download cache keeps "
                "it under ~/.cache/openpi/vertex-model-garden-paligemma-us/paligemma/pt_224.npz), and pass the local "
                "file."
            ),
        )
        with np.load(path, allow_pickle=False) as f:
            flat = {k: f[k] for k in f.files}
        if not flat:
            raise ValueError(f"{path} holds no arrays")
        if all(k.startswith("params/") for k in flat):
            flat = {k[len("params/") :]: v for k, v in flat.items()}
        loaded = {"PaliGemma": flax.traverse_util.unflatten_dict(flat, sep="/")}
        return merge_params(loaded, params, missing_regex=".*")
