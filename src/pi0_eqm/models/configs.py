"""Named model presets: the full-size π₀ / π₀.5 and CPU-sized variants with the same structure."""

from __future__ import annotations

from pi0_eqm.models.decoder_config import DecoderConfig
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.pi0 import Pi0Config

_PRESETS: dict[str, dict] = {
    # openpi's Pi0Config(): Gemma-2B + Gemma-300M, SigLIP So400m/14, 3 × 224² images, H 50, D 32, 48 tokens.
    "pi0": dict(),
    # A few-hundred-thousand-parameter model for unit tests (runs in seconds on 2 CPU cores).
    "pi0_tiny": dict(
        dtype="float32",
        paligemma_variant="gemma_tiny",
        action_expert_variant="gemma_tiny_expert",
        siglip_variant="tiny/8",
        vocab_size=512,
        action_horizon=8,
        max_token_len=8,
        image_resolution=(32, 32),
        remat=False,
    ),
    # A few-million-parameter model for the embedded benchmark and the demo.
    "pi0_small": dict(
        dtype="float32",
        paligemma_variant="gemma_small",
        action_expert_variant="gemma_small_expert",
        siglip_variant="small/8",
        vocab_size=512,
        action_horizon=16,
        max_token_len=16,
        image_resolution=(64, 64),
        remat=False,
    ),
    # The embedded Meta-World benchmark: two 64 px cameras (corner + wrist), 4-d state/action, H = 16. Sized to train
    # in minutes on 2 CPU cores.
    "pi0_metaworld": dict(
        dtype="float32",
        paligemma_variant="gemma_tiny",
        action_expert_variant="gemma_tiny_expert",
        siglip_variant="tiny/16",
        vocab_size=512,
        tokenizer="words",
        action_horizon=16,
        max_token_len=12,
        image_keys=("base_0_rgb", "left_wrist_0_rgb"),
        image_resolution=(64, 64),
        real_action_dim=4,
        remat=False,
    ),
}
# π₀.5 twins: openpi's Pi0Config(pi05=True) (adaRMS expert, no state token, 200 prompt tokens, discrete state in
# the prompt) and CPU variants whose word-level prompts fit the state bins.
_PRESETS["pi05"] = dict(pi05=True)
_PRESETS["pi05_tiny"] = dict(_PRESETS["pi0_tiny"], pi05=True, tokenizer="words", max_token_len=24)
_PRESETS["pi05_metaworld"] = dict(_PRESETS["pi0_metaworld"], pi05=True, max_token_len=24)


def presets() -> list[str]:
    return sorted(_PRESETS)


def model_config(name: str, decoder: DecoderConfig | None = None, **overrides) -> Pi0Config:
    """``Pi0Config`` for preset ``name`` with the given decoder (default EqM) and field overrides."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {presets()}")
    kwargs = dict(_PRESETS[name])
    kwargs["decoder"] = decoder if decoder is not None else EqmConfig()
    kwargs.update(overrides)
    return Pi0Config(**kwargs)


