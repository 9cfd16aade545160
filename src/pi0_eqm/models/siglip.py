"""SigLIP vision transformer with big_vision / openpi parameter names.

Tree (layers stacked on a leading axis by ``nn.scan``)::

    embedding/{kernel [p, p, 3, W], bias}          patch convolution
    pos_embedding [1, N, W]                        learned positions
    Transformer/encoderblock/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1,
                              MlpBlock_0/{Dense_0, Dense_1}}
    Transformer/encoder_norm/{scale, bias}
    head/{kernel [W, out], bias}                   zero-initialised projection to the language model width

Image tokens are not scaled by sqrt(width) (text tokens are).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int


_VARIANTS: dict[str, SiglipConfig] = {
    "So400m/14": SiglipConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14),
    "tiny/8": SiglipConfig(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=8),
    "tiny/16": SiglipConfig(width=96, depth=2, mlp_dim=192, num_heads=4, patch_size=16),
    "small/8": SiglipConfig(width=128, depth=3, mlp_dim=256, num_heads=4, patch_size=8),
}


def get_config(variant: str) -> SiglipConfig:
    if variant not in _VARIANTS:
        raise ValueError(f"Unknown SigLIP variant {variant!r}; expected one of {sorted(_VARIANTS)}")
    return _VARIANTS[variant]


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                     bias_init=nn.initializers.normal(1e-6))(x)
        x = nn.gelu(x)
        return nn.Dense(d, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                        bias_init=nn.initializers.normal(1e-6))(x)


class Encoder1DBlock(nn.Module):
    mlp_dim: int
    num_heads: int
    dtype: str

    @nn.compact
    def __call__(self, x, _):
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype,
            deterministic=True,
        )(y, y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype)(x)
        x = x + MlpBlock(self.mlp_dim, self.dtype)(y)
        return x, None


class Encoder(nn.Module):
    depth: int
    mlp_dim: int
    num_heads: int
    dtype: str
    remat: bool = True

    @nn.compact
    def __call__(self, x):
        block = Encoder1DBlock
        if self.remat:
            block = nn.remat(Encoder1DBlock, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
        x, _ = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=self.depth,
        )(name="encoderblock", mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype)(x, None)
        return nn.LayerNorm(name="encoder_norm", dtype=self.dtype)(x)


class Module(nn.Module):
    """ViT with ``pool_type="none"``: returns ``[B, N, out_dim]`` tokens (N = (res / patch)^2)."""

    config: SiglipConfig
    out_dim: int
    dtype: str = "bfloat16"
    remat: bool = True

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        cfg = self.config
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"expected images [B, H, W, 3], got {image.shape}")
        x = nn.Conv(cfg.width, (cfg.patch_size, cfg.patch_size), strides=(cfg.patch_size, cfg.patch_size),
                    padding="VALID", name="embedding", dtype=jnp.float32)(image.astype(jnp.float32))
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / jnp.sqrt(c)), (1, h * w, c))
        x = (x + pos).astype(self.dtype)
        x = Encoder(cfg.depth, cfg.mlp_dim, cfg.num_heads, self.dtype, self.remat, name="Transformer")(x)
        return nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros_init(), name="head", dtype=self.dtype)(x)
