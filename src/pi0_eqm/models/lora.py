"""Low-rank adapters on the Gemma einsums, with openpi's parameter names, shapes, initialisation and scaling.

For an einsum weight ``W`` whose LoRA axes are ``(a, b)`` (the last two by default), LoRA adds ``lora_a`` (``W``'s
shape with axis ``b`` replaced by the rank ``r``) and ``lora_b`` (axis ``a`` replaced by ``r``) beside ``w``::

    y = einsum(eqn, x, W) + s · einsum(eqn_b, einsum(eqn_a, x, lora_a), lora_b),   s = α / r   (α / √r with rsLoRA)

``eqn_a`` / ``eqn_b`` are ``eqn`` with the label of axis ``b`` (resp. ``a``) renamed to ``L``. The feed-forward
weights get ``gating_einsum_lora_{a,b}`` ``[2, D, r]`` / ``[2, r, F]`` and ``linear_lora_{a,b}`` ``[F, r]`` /
``[r, D]`` and, as in openpi, no scaling. Both factors are initialised ``normal(0.01)``, so a fresh adapter is a
small perturbation of the base weights, not zero.
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn

LORA_LABEL = "L"
# openpi's default init for both factors.
LORA_INIT = nn.initializers.normal(stddev=0.01)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int
    alpha: float = 1.0
    rslora: bool = False
    axes: tuple[int, int] = (-2, -1)

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank

    def shapes(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of ``lora_a`` and ``lora_b`` for an einsum weight of ``shape``."""
        a, b = list(shape), list(shape)
        a[self.axes[1]] = self.rank
        b[self.axes[0]] = self.rank
        return tuple(a), tuple(b)

    def equations(self, eqn: str) -> tuple[str, str]:
        """``(eqn_a, eqn_b)`` for ``eqn = "lhs,rhs->out"``: the down- and up-projection through rank ``L``."""
        m = re.fullmatch(r"(.*),(.*)->(.*)", eqn)
        if m is None or LORA_LABEL in eqn:
            raise ValueError(f"LoRA needs an einsum 'lhs,rhs->out' without the label {LORA_LABEL!r}; got {eqn!r}")
        lhs, rhs, out = m.groups()
        a_label, b_label = (rhs[i] for i in self.axes)
        a_out = out.replace(b_label, LORA_LABEL)
        eqn_a = f"{lhs},{rhs.replace(b_label, LORA_LABEL)}->{a_out}"
        eqn_b = f"{a_out},{rhs.replace(a_label, LORA_LABEL)}->{out}"
        return eqn_a, eqn_b
