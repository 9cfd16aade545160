"""Decoder configurations (pure data; no model code), selected by ``Pi0Config.decoder``."""

from __future__ import annotations

import dataclasses
from typing import Literal

SolverVariant = Literal["nesterov", "eqm_nag", "gd"]
WarmStartMode = Literal["off", "paper_half", "aligned"]
ResidualDims = Literal["real", "all"]


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """openpi flow matching: t=1 noise, x_t = t·noise + (1−t)·a, target noise − a, Euler from t=1 to 0."""

    kind: Literal["flow"] = "flow"
    num_steps: int = 10
    beta_a: float = 1.5
    beta_b: float = 1.0
    time_min: float = 0.001  # t = Beta(a, b)·(1 − time_min) + time_min


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Nesterov / GD settings of the EqM solver (all evaluation-time options)."""

    variant: SolverVariant = "nesterov"  # nesterov: A ← Ã − ηf(Ã); eqm_nag (paper Alg. 2): A ← A − ηf(Ã); gd
    step_size: float = 0.003  # η
    momentum: float = 0.3  # μ
    max_iters: int = 300  # K_max (the matched budget)
    threshold: float = 1e-2  # ε on the normalized residual; <= 0 means "never stop early"
    residual_dims: ResidualDims = "real"  # RMS over real action dims only, or over all (padded) dims

    def __post_init__(self):
        if self.variant not in ("nesterov", "eqm_nag", "gd"):
            raise ValueError(f"solver variant must be 'nesterov', 'eqm_nag' or 'gd', got {self.variant!r}")
        if self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {self.max_iters}")
        if self.residual_dims not in ("real", "all"):
            raise ValueError(f"residual_dims must be 'real' or 'all', got {self.residual_dims!r}")


@dataclasses.dataclass(frozen=True)
class EqmConfig:
    """Equilibrium Matching: time-free field trained on (noise − a)·c(γ), c(γ) = λ·min(1, (1−γ)/(1−a))."""

    kind: Literal["eqm"] = "eqm"
    grad_multiplier: float = 4.0  # λ
    decay_start: float = 0.8  # a (truncated decay)
    gamma_min: float = 0.0  # γ ~ U(gamma_min, gamma_max)
    gamma_max: float = 1.0
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)


DecoderConfig = FlowConfig | EqmConfig
