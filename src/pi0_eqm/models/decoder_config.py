"""Decoder configurations (pure data; no model code), selected by ``Pi0Config.decoder`` and keyed by ``kind``.

Every choice is a ``Literal`` type, validated by ``check_choice`` against the type itself (one list of names)."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal
from typing import get_args

SolverVariant = Literal["nesterov", "eqm_nag", "gd", "bb"]
WarmStartMode = Literal["off", "paper_half", "aligned"]
ResidualDims = Literal["real", "all"]
SolverPreset = Literal["action", "paper", "bb"]
GammaSampling = Literal["uniform", "data_mixture"]
LossDims = Literal["all", "real"]


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """openpi flow matching: t=1 noise, x_t = t·noise + (1−t)·a, target noise − a, Euler from t=1 to 0."""

    kind: Literal["flow"] = "flow"
    num_steps: int = 10
    beta_a: float = 1.5
    beta_b: float = 1.0
    time_min: float = 0.001  # t = Beta(a, b)·(1 − time_min) + time_min
    # Training-time real-time chunking (arXiv 2512.05964): each training chunk's first d ~ U{0, …, max_delay} rows
    # are committed (clean: time 0 per token, no loss); decoding then conditions on the committed prefix the same way
    # instead of RTC's guidance, and a request with more committed rows is refused. 0: off (openpi's training).
    max_delay: int = 0

    def __post_init__(self):
        check_max_delay(self.max_delay)


def check_max_delay(max_delay) -> None:
    """Raises ``ValueError`` unless ``max_delay`` (committed rows trained with) is an int >= 0."""
    if isinstance(max_delay, bool) or not isinstance(max_delay, int) or max_delay < 0:
        raise ValueError(f"max_delay must be an int >= 0 (committed rows per training chunk), got {max_delay!r}")


SOLVER_VARIANTS: tuple[str, ...] = get_args(SolverVariant)
WARM_START_MODES: tuple[str, ...] = get_args(WarmStartMode)


def check_choice(name: str, value, choices_type) -> None:
    """Raises ``ValueError`` unless ``value`` is one of the ``Literal`` type's values."""
    choices = get_args(choices_type)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_solver_values(*, variant=None, step_size=None, momentum=None, max_iters=None, threshold=None,
                        max_iters_limit: int = 10_000) -> None:
    """Raises ``ValueError`` naming the first bad value (η ≤ 0, μ ∉ [0, 1), unknown variant, cap ∉ [1, limit]);
    ``None`` means "not given"."""
    if variant is not None:
        check_choice("solver variant", variant, SolverVariant)
    for name, v in (("step_size", step_size), ("momentum", momentum), ("threshold", threshold)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if step_size is not None and step_size <= 0:
        raise ValueError(f"step_size (η) must be > 0, got {step_size}")
    if momentum is not None and not 0 <= momentum < 1:
        raise ValueError(f"momentum (μ) must be in [0, 1), got {momentum}")
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int)
                                  or not 1 <= max_iters <= max_iters_limit):
        raise ValueError(f"max_iters must be an int in [1, {max_iters_limit}], got {max_iters!r}")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """EqM solver settings (all evaluation-time options); the defaults are the ``"action"`` preset.

    Chosen by closed-loop success on the embedded benchmark (README, "Flow vs EqM"): 10 forwards of Nesterov with
    η = 0.03, μ = 0.3 stop short of the root (the learned roots are farther from the expert than the partly solved
    chunk) and beat the EqM paper's image-latent setting (η = 0.003, μ = 0.3, 300 forwards: the ``"paper"`` preset)
    and η = 0.05, μ = 0.5 (which reaches the root) on the same episodes. The field's stiffness at the root is
    λ_max ≈ 22–25, so plain GD is stable up to η ≈ 0.08. The step guard (off by default) shrinks a step that is too
    large, but it also halves η on a residual that rises for a good reason (a far field whose magnitude grows toward
    the data, a half-warm-started chunk) and can then stall; closed loop it changed nothing measurable here.
    """

    variant: SolverVariant = "nesterov"  # nesterov: A ← Ã − ηf(Ã); eqm_nag (paper Alg. 2): A ← A − ηf(Ã); gd; bb
    step_size: float = 0.03  # η (for "bb": the first step α_0)
    momentum: float = 0.3  # μ (unused by "gd" and "bb")
    max_iters: int = 10  # K_max: expert forwards per chunk (the matched budget)
    threshold: float = 1e-2  # ε on the normalized residual; <= 0 means "never stop early"
    residual_dims: ResidualDims = "real"  # RMS over real action dims only, or over all (padded) dims
    guard: bool = False  # halve a sample's η and restart its momentum whenever its residual grows (not for "bb")
    bb_min_step: float = 1e-3  # "bb": α_k = clip(sᵀs / sᵀy, bb_min_step, bb_max_step)
    bb_max_step: float = 0.3

    def __post_init__(self):
        check_solver_values(variant=self.variant, step_size=self.step_size, momentum=self.momentum,
                            max_iters=self.max_iters, threshold=self.threshold)
        check_choice("residual_dims", self.residual_dims, ResidualDims)
        if not 0 < self.bb_min_step <= self.bb_max_step:
            raise ValueError(f"need 0 < bb_min_step <= bb_max_step, got {self.bb_min_step}, {self.bb_max_step}")


# Named solver settings. "action" = the defaults above; "paper" = the EqM paper's image-latent setting this project
# shipped first (Nesterov η 0.003, μ 0.3, up to 300 forwards, no guard); "bb" = Barzilai–Borwein steps from α_0 = 0.05,
# ≤ 10 forwards.
SOLVER_PRESETS: dict[str, SolverConfig] = {
    "action": SolverConfig(),
    "paper": SolverConfig(step_size=0.003, momentum=0.3, max_iters=300, guard=False),
    "bb": SolverConfig(variant="bb", step_size=0.05),
}


def solver_preset(name: str) -> SolverConfig:
    """The named preset; a clear error for an unknown name."""
    check_choice("solver preset", name, SolverPreset)
    return SOLVER_PRESETS[name]


@dataclasses.dataclass(frozen=True)
class EqmConfig:
    """Equilibrium Matching: time-free field trained on (noise − a)·c(γ), c(γ) = λ·min(1, (1−γ)/(1−a)).

    ``gamma_sampling``: "uniform" draws γ ~ U(gamma_min, gamma_max); "data_mixture" draws a ``data_fraction`` of the
    batch from U(a, 1) (the decay region, where the roots are shaped) and the rest from U(gamma_min, gamma_max).
    ``loss_dims``: "all" regresses every (padded) action dim as openpi does; "real" keeps the padded dims of x_γ at
    zero and averages the loss over the real dims only (the solver then keeps padded dims at zero too).
    """

    kind: Literal["eqm"] = "eqm"
    grad_multiplier: float = 4.0  # λ
    decay_start: float = 0.8  # a (truncated decay)
    gamma_min: float = 0.0  # γ ~ U(gamma_min, gamma_max)
    gamma_max: float = 1.0
    gamma_sampling: GammaSampling = "uniform"
    data_fraction: float = 0.5  # "data_mixture": share of the batch with γ ~ U(a, 1)
    loss_dims: LossDims = "all"
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    # Training with a committed prefix: each training chunk's first d ~ U{0, …, max_delay} rows are clean (γ = 1)
    # and carry no loss, as the committed rows are clamped when decoding; a request with more committed rows is
    # refused. 0: off.
    max_delay: int = 0
    # With max_delay: the field is told which rows are committed through its otherwise unused time input (time 1 on
    # committed rows, 0 elsewhere, per token; the parameter tree is unchanged). False: it sees only the clean rows.
    prefix_flag: bool = False

    def __post_init__(self):
        check_max_delay(self.max_delay)
        if self.prefix_flag and not self.max_delay:
            raise ValueError("prefix_flag flags committed rows, so it needs max_delay > 0 (training with committed "
                             "prefixes); set --model.decoder.max-delay")
        check_choice("gamma_sampling", self.gamma_sampling, GammaSampling)
        check_choice("loss_dims", self.loss_dims, LossDims)
        if not 0 <= self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in [0, 1], got {self.data_fraction}")


DecoderConfig = FlowConfig | EqmConfig
