"""Which parameters training leaves unchanged: openpi's LoRA freeze filter plus vision / backbone / regex options.

A frozen parameter gets no gradient and no optimizer state, is stored in the model's compute dtype (bf16 for the
full-size configs, as openpi casts frozen params) and keeps its value bit for bit. Paths are the ``/``-joined keys of
the param tree (``PaliGemma/llm/layers/attn/q_einsum/w``), matched with ``re.fullmatch`` as openpi's ``PathRegex``.

openpi's ``Pi0Config.get_freeze_filter`` (``lora=True``): a LoRA'd Gemma has its base weights frozen — the backbone's
are the ``.*llm.*`` paths without ``_1``, the expert's the ``.*llm.*_1.*`` ones — and ``.*lora.*`` params are never
frozen; SigLIP and the projections stay trainable. ``vision`` freezes ``PaliGemma/img``; ``backbone`` freezes SigLIP
and the Gemma-2B language model, so only the action expert and the projections train.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp

from pi0_eqm.models.pi0 import Pi0Config

_LLM = re.compile(r".*llm.*")
_EXPERT = re.compile(r".*llm.*_1.*")
_LORA = re.compile(r".*lora.*")
_VISION = re.compile(r"PaliGemma/img/.*")


class FreezeError(ValueError):
    """The freeze settings leave nothing to train."""


@dataclasses.dataclass(frozen=True)
class FreezeConfig:
    lora: bool = True  # openpi's filter: with a *_lora Gemma variant, freeze that Gemma's base weights
    vision: bool = False  # freeze the SigLIP tower
    backbone: bool = False  # freeze SigLIP and the Gemma-2B language model: train only the expert and projections
    regex: str | None = None  # also freeze every param whose path fullmatches this (LoRA params excepted)

    def __post_init__(self):
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"freeze.regex {self.regex!r} is not a regular expression: {e}") from None

    def is_frozen(self, path: str, model: Pi0Config) -> bool:
        if _LORA.fullmatch(path):
            return False
        in_llm = bool(_LLM.fullmatch(path))
        in_expert = in_llm and bool(_EXPERT.fullmatch(path))
        in_backbone_lm = in_llm and not in_expert
        if self.lora and ((model.llm_config.has_lora and in_backbone_lm) or (model.expert_config.has_lora and in_expert)):
            return True
        if (self.vision or self.backbone) and _VISION.fullmatch(path):
            return True
        if self.backbone and in_backbone_lm:
            return True
        return self.regex is not None and re.fullmatch(self.regex, path) is not None


def _flat(params: Any) -> dict[str, Any]:
    return flax.traverse_util.flatten_dict(params, sep="/")


@dataclasses.dataclass(frozen=True)
class ParamPartition:
    """A static split of a param tree into trainable and frozen sub-trees (nested dicts with the same keys)."""

    frozen: frozenset[str] = frozenset()
    frozen_dtype: str = "float32"

    @classmethod
    def of(cls, params: Any, model: Pi0Config, freeze: FreezeConfig) -> ParamPartition:
        """``params`` may be abstract (``jax.eval_shape``); only its paths are read."""
        paths = frozenset(p for p in _flat(params) if freeze.is_frozen(p, model))
        if paths and len(paths) == len(_flat(params)):
            raise FreezeError(f"the freeze settings {freeze} freeze all {len(paths)} parameters of this model; "
                              "nothing would train (loosen --freeze.regex / --freeze.backbone)")
        return cls(paths, model.dtype)

    def split(self, params: Any) -> tuple[Any, Any]:
        """``(trainable, frozen)``; with nothing frozen ``trainable`` is ``params`` itself."""
        if not self.frozen:
            return params, {}
        flat = _flat(params)
        trainable = {p: v for p, v in flat.items() if p not in self.frozen}
        frozen = {p: v for p, v in flat.items() if p in self.frozen}
        return flax.traverse_util.unflatten_dict(trainable, sep="/"), flax.traverse_util.unflatten_dict(frozen, sep="/")

    def merge(self, trainable: Any, frozen: Any) -> Any:
        if not self.frozen:
            return trainable
        flat = {**_flat(trainable), **_flat(frozen)}
        return flax.traverse_util.unflatten_dict(flat, sep="/")

    def cast_frozen(self, params: Any) -> Any:
        """Frozen params in the compute dtype (openpi stores them in bf16); trainable ones untouched."""
        trainable, frozen = self.split(params)
        return self.merge(trainable, jax.tree.map(lambda x: x.astype(jnp.dtype(self.frozen_dtype)), frozen))

    def count(self, params: Any) -> tuple[int, int]:
        """``(trainable, frozen)`` parameter counts."""
        trainable, frozen = self.split(params)
        size = lambda t: sum(int(x.size) for x in jax.tree.leaves(t))
        return size(trainable), size(frozen)
