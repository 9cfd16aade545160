"""The model-side observation structure (openpi's ``Observation``) and attention-mask helpers."""

from __future__ import annotations

from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Observation:
    """Batched model inputs.

    ``images``: ``{key: float32 [B, h, w, 3]}`` in [-1, 1]; ``image_masks``: ``{key: bool [B]}``;
    ``state``: ``float32 [B, action_dim]`` (padded); ``tokenized_prompt`` / ``tokenized_prompt_mask``: ``[B, L]``.
    """

    images: dict[str, jax.Array]
    image_masks: dict[str, jax.Array]
    state: jax.Array
    tokenized_prompt: jax.Array
    tokenized_prompt_mask: jax.Array
    # Knowledge-insulation training only (``pi0_eqm.models.ki``): <begin> FAST tokens <end>, padded; None otherwise.
    fast_tokens: jax.Array | None = None
    fast_mask: jax.Array | None = None

    @classmethod
    def from_dict(cls, data: Mapping) -> Observation:
        """Builds an observation from transform outputs (keys ``image``, ``image_mask``, ``state``, ...).

        uint8 images are converted to float32 in [-1, 1] as openpi does.
        """
        missing = [k for k in ("image", "state", "tokenized_prompt", "tokenized_prompt_mask") if k not in data]
        if missing:
            raise KeyError(f"observation is missing keys {missing}; got {sorted(data)}")
        if ("fast_tokens" in data) != ("fast_mask" in data):
            raise KeyError("fast_tokens and fast_mask must come together")
        images = {}
        for key, img in data["image"].items():
            if img.dtype == np.uint8 or img.dtype == jnp.uint8:
                img = jnp.asarray(img, jnp.float32) / 255.0 * 2.0 - 1.0
            images[key] = img
        masks = data.get("image_mask") or {}
        batch_shape = data["state"].shape[:-1]
        image_masks = {k: masks.get(k, jnp.ones(batch_shape, dtype=bool)) for k in images}
        return cls(
            images=images,
            image_masks=image_masks,
            state=data["state"],
            tokenized_prompt=data["tokenized_prompt"],
            tokenized_prompt_mask=data["tokenized_prompt_mask"],
            fast_tokens=data.get("fast_tokens"),
            fast_mask=data.get("fast_mask"),
        )

    def to_dict(self) -> dict:
        return {
            "image": self.images,
            "image_mask": self.image_masks,
            "state": self.state,
            "tokenized_prompt": self.tokenized_prompt,
            "tokenized_prompt_mask": self.tokenized_prompt_mask,
        } | ({} if self.fast_tokens is None else {"fast_tokens": self.fast_tokens, "fast_mask": self.fast_mask})


def make_attn_mask(input_mask: jax.Array, mask_ar: jax.Array) -> jax.Array:
    """big_vision / openpi ``make_attn_mask``: token i attends to j iff ``cumsum(ar)[j] <= cumsum(ar)[i]``.

    ``input_mask`` [B, N] marks valid tokens; ``mask_ar`` [B, N] (or [N]) is True where a new causal block starts.
    Returns ``bool [B, N, N]``.
    """
    mask_ar = jnp.broadcast_to(mask_ar, input_mask.shape)
    cumsum = jnp.cumsum(mask_ar, axis=1)
    attn_mask = cumsum[:, None, :] <= cumsum[:, :, None]
    valid_mask = input_mask[:, None, :] * input_mask[:, :, None]
    return jnp.logical_and(attn_mask, valid_mask)


def posemb_sincos(pos: jax.Array, embedding_dim: int, min_period: float, max_period: float) -> jax.Array:
    """Sine-cosine embedding of scalar positions ``[...]`` → ``[..., embedding_dim]`` (openpi: periods 4e-3 .. 4.0
    for the flow time; ``[B]`` per sample, ``[B, H]`` per action token)."""
    if embedding_dim % 2:
        raise ValueError(f"embedding_dim ({embedding_dim}) must be divisible by 2")
    fraction = jnp.linspace(0.0, 1.0, embedding_dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    sinusoid_input = jnp.einsum(
        "...,j->...j", pos, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST
    )
    return jnp.concatenate([jnp.sin(sinusoid_input), jnp.cos(sinusoid_input)], axis=-1)
