"""EqM training variants of the decoder study: ``EqmConfig`` fields replaced on the registered config."""

from __future__ import annotations

from typing import Any

EQM_TRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "mix": {"gamma_sampling": "data_mixture"},  # half the batch with γ ~ U(a, 1)
    "real": {"loss_dims": "real"},  # loss on the real action dims only, padded dims held at zero
    "mix_real": {"gamma_sampling": "data_mixture", "loss_dims": "real"},
}
