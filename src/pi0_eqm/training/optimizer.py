"""Learning-rate schedules and optimizers (openpi defaults: cosine 1k warmup → 2.5e-5 → 2.5e-6, AdamW, clip 1)."""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class CosineDecaySchedule:
    warmup_steps: int = 1_000
    peak_lr: float = 2.5e-5
    decay_steps: int = 30_000
    decay_lr: float = 2.5e-6

    def __post_init__(self):
        if not 0 <= self.warmup_steps < self.decay_steps:
            raise ValueError(f"need 0 <= warmup_steps ({self.warmup_steps}) < decay_steps ({self.decay_steps})")

    def create(self) -> optax.Schedule:
        return optax.warmup_cosine_decay_schedule(
            init_value=self.peak_lr / (self.warmup_steps + 1),
            peak_value=self.peak_lr,
            warmup_steps=self.warmup_steps,
            decay_steps=self.decay_steps,
            end_value=self.decay_lr,
        )


@dataclasses.dataclass(frozen=True)
class ConstantSchedule:
    lr: float = 1e-4

    def create(self) -> optax.Schedule:
        return optax.constant_schedule(self.lr)


@dataclasses.dataclass(frozen=True)
class AdamW:
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 1e-10
    clip_gradient_norm: float = 1.0

    def create(self, lr: optax.Schedule) -> optax.GradientTransformation:
        return optax.chain(
            optax.clip_by_global_norm(self.clip_gradient_norm),
            optax.adamw(lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay),
        )


LRScheduleConfig = CosineDecaySchedule | ConstantSchedule
