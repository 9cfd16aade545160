"""Gemma decoder with a list of experts that share one attention (openpi's "mixture of transformers").

Parameter names and shapes follow openpi / big_vision exactly (``tests/models/test_pi0.py`` checks the full tree):

* expert 0 uses the bare names (``q_einsum``, ``mlp``, ``pre_attention_norm``...), expert ``i`` the suffix ``_i``;
* every per-layer parameter is stacked on a leading depth axis (``nn.scan`` over ``layers``);
* einsum weights keep head axes separate: q ``[N, D, H]``, kv ``[2, K, D, H]``, out ``[N, H, D]``;
* GeGLU gate and up projections are fused as ``gating_einsum [2, D, F]``;
* ``*_lora`` variants add openpi's LoRA factors beside the attention and feed-forward weights (``models/lora.py``).

Each call takes one token stream per expert (``None`` = no tokens for that expert in this call). Per layer every expert
computes its own q/k/v, the streams are concatenated along the sequence axis in expert order, attention runs jointly
under the given mask, and the output is split back and projected per expert. A KV cache (per layer ``k, v`` of shape
``[L, B, S, K, H]``) lets the prefix be computed once and reused for every decoder iteration.

π₀.5's adaRMS: an expert given a conditioning vector ``cond [B, C]`` or ``[B, T, C]`` (one per token;
``adarms_cond[i]``) replaces each of its norms' ``scale`` by ``Dense_0 (C → 3·D, zero-initialised)(cond) → scale,
shift, gate``: the norm returns ``normed·(1 + scale) + shift`` and its residual branch is multiplied by ``gate``
(openpi's ``_gated_residual``).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from pi0_eqm.models.lora import LORA_INIT
from pi0_eqm.models.lora import LoRAConfig

PALIGEMMA_VOCAB_SIZE = 257_152
_NEG_INF = -2.3819763e38

KVCache = tuple[jax.Array, jax.Array]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    lora_attn: LoRAConfig | None = None  # LoRA on q / kv / attn_vec einsums
    lora_ffn: LoRAConfig | None = None  # LoRA on the GeGLU gating and linear weights

    @property
    def has_lora(self) -> bool:
        return self.lora_attn is not None or self.lora_ffn is not None


def _with_lora(base: GemmaConfig, rank: int) -> GemmaConfig:
    lora = LoRAConfig(rank=rank, alpha=float(rank))
    return dataclasses.replace(base, lora_attn=lora, lora_ffn=lora)


_VARIANTS: dict[str, GemmaConfig] = {
    # Full-size variants used by pi0 (PaliGemma language model and the action expert).
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    # openpi's test variant.
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    # CPU variants. Experts that share attention must agree on depth, heads, kv heads and head_dim.
    "gemma_tiny": GemmaConfig(width=128, depth=2, mlp_dim=256, num_heads=4, num_kv_heads=1, head_dim=32),
    "gemma_tiny_expert": GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=32),
    "gemma_small": GemmaConfig(width=256, depth=4, mlp_dim=1024, num_heads=4, num_kv_heads=1, head_dim=64),
    "gemma_small_expert": GemmaConfig(width=128, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=1, head_dim=64),
}
# openpi's LoRA variants: attention + FFN, rank 16 / alpha 16 on the 2B backbone, rank 32 / alpha 32 on the expert.
# The CPU variants get the same treatment at ranks 4 (backbone) and 8 (expert).
_LORA_RANKS = {"gemma_2b": 16, "gemma_300m": 32, "dummy": 4, "gemma_tiny": 4, "gemma_tiny_expert": 8,
               "gemma_small": 4, "gemma_small_expert": 8}
_VARIANTS.update({f"{name}_lora": _with_lora(_VARIANTS[name], rank) for name, rank in _LORA_RANKS.items()})


def get_config(variant: str) -> GemmaConfig:
    if variant not in _VARIANTS:
        raise ValueError(f"Unknown Gemma variant {variant!r}; expected one of {sorted(_VARIANTS)}")
    return _VARIANTS[variant]


def variants() -> list[str]:
    return sorted(_VARIANTS)


def _name(name: str, i: int) -> str:
    return name if i == 0 else f"{name}_{i}"


def _einsum_init(in_axis: int, out_axis: int, batch_axis: tuple[int, ...]) -> nn.initializers.Initializer:
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis)


class Einsum(nn.Module):
    """An einsum weight held as parameter ``w`` (openpi's ``Einsum``; the module name is the param path), with
    optional LoRA factors ``lora_a`` / ``lora_b`` beside it."""

    shape: tuple[int, ...]
    in_axis: int | tuple[int, ...]
    out_axis: int
    batch_axis: tuple[int, ...] = ()
    lora: LoRAConfig | None = None

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        w = self.param("w", _einsum_init(self.in_axis, self.out_axis, self.batch_axis), self.shape)
        y = jnp.einsum(eqn, x, w.astype(x.dtype))
        if self.lora is None:
            return y
        shape_a, shape_b = self.lora.shapes(self.shape)
        a = self.param("lora_a", LORA_INIT, shape_a)
        b = self.param("lora_b", LORA_INIT, shape_b)
        eqn_a, eqn_b = self.lora.equations(eqn)
        low = jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, a.astype(x.dtype)), b.astype(x.dtype))
        return y + low * self.lora.scaling


class RMSNorm(nn.Module):
    """``normed·(1 + scale)``; with ``cond`` (adaRMS) ``normed·(1 + scale) + shift`` and a residual gate, all three
    from a zero-initialised ``Dense_0(cond)``. Returns ``(output, gate)``; ``gate`` is ``None`` without ``cond``."""

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        dtype = x.dtype
        var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        normed = x.astype(jnp.float32) * jax.lax.rsqrt(var + 1e-6)
        if cond is None:
            scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
            return (normed * (1 + scale.astype(jnp.float32))).astype(dtype), None
        modulation = nn.Dense(3 * x.shape[-1], kernel_init=nn.initializers.zeros, dtype=dtype, name="Dense_0")(cond)
        if modulation.ndim == 2:  # one condition per sample ([B, C]); [B, T, C] is one per token
            modulation = modulation[:, None, :]
        scale, shift, gate = jnp.split(modulation, 3, axis=-1)
        return (normed * (1 + scale) + shift).astype(dtype), gate


def _gated_residual(x: jax.Array | None, y: jax.Array | None, gate: jax.Array | None) -> jax.Array | None:
    if x is None:
        return None
    return x + y if gate is None else x + y * gate


class Embedder(nn.Module):
    vocab_size: int
    width: int

    def setup(self):
        self.input_embedding = self.param(
            "input_embedding", nn.initializers.normal(stddev=1.0), (self.vocab_size, self.width)
        )

    def encode(self, tokens: jax.Array, dtype) -> jax.Array:
        x = self.input_embedding[(tokens,)]
        return (x * jnp.sqrt(self.width).astype(x.dtype)).astype(dtype)

    def decode(self, x: jax.Array) -> jax.Array:
        """Next-token logits (float32) with the tied input embedding, as big_vision / openpi's ``Embedder.decode``."""
        return jnp.dot(x.astype(jnp.float32), self.input_embedding.astype(jnp.float32).T)


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """RoPE on ``x [B, T, N, H]`` with ``positions [B, T]``, computed in float32 (openpi's ``_apply_rope``)."""
    head_dim = x.shape[-1]
    freq_exponents = (2.0 / head_dim) * jnp.arange(head_dim // 2, dtype=jnp.float32)
    timescale = max_wavelength**freq_exponents
    radians = positions[..., None].astype(jnp.float32) / timescale[None, None, :]
    radians = radians[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    res = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return res.astype(x.dtype)


class Attention(nn.Module):
    configs: Sequence[GemmaConfig]
    dtype: str

    @nn.compact
    def __call__(self, xs, positions, attn_mask, kv_cache):
        cfg0 = self.configs[0]
        qs, ks, vs = [], [], []
        for i, (x, cfg) in enumerate(zip(xs, self.configs, strict=True)):
            if x is None:
                continue
            q_einsum = Einsum((cfg.num_heads, cfg.width, cfg.head_dim), 1, 2, (0,), lora=cfg.lora_attn,
                              name=_name("q_einsum", i))
            kv_einsum = Einsum((2, cfg.num_kv_heads, cfg.width, cfg.head_dim), 2, 3, (0, 1), lora=cfg.lora_attn,
                               name=_name("kv_einsum", i))
            qs.append(q_einsum("BTD,NDH->BTNH", x))
            k, v = kv_einsum("BSD,2KDH->2BSKH", x)
            ks.append(k)
            vs.append(v)
        q = jnp.concatenate(qs, axis=1)
        k = jnp.concatenate(ks, axis=1)
        v = jnp.concatenate(vs, axis=1)

        q = apply_rope(q, positions) * (cfg0.head_dim**-0.5)
        k = apply_rope(k, positions)
        new_cache = (k, v)
        if kv_cache is not None:
            cache_k, cache_v = kv_cache
            k = jnp.concatenate([cache_k.astype(k.dtype), k], axis=1)
            v = jnp.concatenate([cache_v.astype(v.dtype), v], axis=1)
            new_cache = (k, v)

        b, t, n, h = q.shape
        kh = cfg0.num_kv_heads
        q = q.reshape(b, t, kh, n // kh, h)
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        if attn_mask.shape != (b, 1, t, k.shape[1]):
            raise ValueError(f"attention mask has shape {attn_mask.shape}, expected {(b, 1, t, k.shape[1])}")
        logits = jnp.where(attn_mask[:, :, None, :, :], logits, _NEG_INF)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)

        out = []
        start = 0
        for i, (x, cfg) in enumerate(zip(xs, self.configs, strict=True)):
            if x is None:
                out.append(None)
                continue
            end = start + x.shape[1]
            o_einsum = Einsum((cfg.num_heads, cfg.head_dim, cfg.width), (0, 1), 2, lora=cfg.lora_attn,
                              name=_name("attn_vec_einsum", i))
            out.append(o_einsum("BTNH,NHD->BTD", encoded[:, start:end]))
            start = end
        return out, new_cache


class FeedForward(nn.Module):
    """GeGLU ``gelu(x·W0) ⊙ (x·W1) · W_linear``; with ``lora``, each product adds ``x·A·B`` (unscaled, as openpi)."""

    width: int
    mlp_dim: int
    dtype: str
    lora: LoRAConfig | None = None

    @nn.compact
    def __call__(self, x):
        w_gating = self.param("gating_einsum", _einsum_init(1, 2, (0,)), (2, self.width, self.mlp_dim))
        w_linear = self.param("linear", _einsum_init(0, 1, ()), (self.mlp_dim, self.width))
        gating_lora = linear_lora = None
        if self.lora is not None:
            r = self.lora.rank
            gating_lora = (self.param("gating_einsum_lora_a", LORA_INIT, (2, self.width, r)),
                           self.param("gating_einsum_lora_b", LORA_INIT, (2, r, self.mlp_dim)))
            linear_lora = (self.param("linear_lora_a", LORA_INIT, (self.mlp_dim, r)),
                           self.param("linear_lora_b", LORA_INIT, (r, self.width)))
        gate = nn.gelu(self._dot(x, w_gating[0], None if gating_lora is None else (gating_lora[0][0], gating_lora[1][0])))
        up = self._dot(x, w_gating[1], None if gating_lora is None else (gating_lora[0][1], gating_lora[1][1]))
        return self._dot(gate * up, w_linear, linear_lora)

    def _dot(self, x, w, lora):
        y = jnp.dot(x, w.astype(self.dtype))
        if lora is None:
            return y
        return y + jnp.dot(jnp.dot(x, lora[0].astype(self.dtype)), lora[1].astype(self.dtype))


class Block(nn.Module):
    configs: Sequence[GemmaConfig]
    dtype: str

    @nn.compact
    def __call__(self, xs, kv_cache, positions, attn_mask, adarms_cond):
        normed, gates = [], []
        for i, (x, cond) in enumerate(zip(xs, adarms_cond, strict=True)):
            n, g = (None, None) if x is None else RMSNorm(name=_name("pre_attention_norm", i))(x, cond)
            normed.append(n)
            gates.append(g)
        attn_out, new_cache = Attention(self.configs, self.dtype, name="attn")(normed, positions, attn_mask, kv_cache)
        xs = [_gated_residual(x, a, g) for x, a, g in zip(xs, attn_out, gates, strict=True)]
        out = []
        for i, (x, cfg, cond) in enumerate(zip(xs, self.configs, adarms_cond, strict=True)):
            if x is None:
                out.append(None)
                continue
            h, gate = RMSNorm(name=_name("pre_ffw_norm", i))(x, cond)
            h = FeedForward(cfg.width, cfg.mlp_dim, self.dtype, lora=cfg.lora_ffn, name=_name("mlp", i))(h)
            out.append(_gated_residual(x, h, gate))
        return out, new_cache


class Module(nn.Module):
    """Multi-expert Gemma. ``configs[0]`` is the language model (owns the embedder), the rest are experts."""

    configs: Sequence[GemmaConfig]
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    dtype: str = "bfloat16"
    remat: bool = True

    def setup(self):
        depths = {(c.depth, c.num_heads, c.num_kv_heads, c.head_dim) for c in self.configs}
        if len(depths) != 1:
            raise ValueError(f"experts must share depth, num_heads, num_kv_heads and head_dim; got {self.configs}")
        self.embedder = Embedder(self.vocab_size, self.configs[0].width)
        block = Block
        if self.remat:
            block = nn.remat(Block, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.configs[0].depth,
        )(configs=tuple(self.configs), dtype=self.dtype)
        self.final_norms = [RMSNorm(name=_name("final_norm", i)) for i in range(len(self.configs))]

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embedder.encode(tokens, self.dtype)

    def logits(self, x: jax.Array) -> jax.Array:
        return self.embedder.decode(x)

    def __call__(
        self,
        embedded: Sequence[jax.Array | None],
        positions: jax.Array,
        mask: jax.Array,
        kv_cache: KVCache | None = None,
        adarms_cond: Sequence[jax.Array | None] | None = None,
    ) -> tuple[list[jax.Array | None], KVCache]:
        """Runs all layers. ``mask`` is ``[B, T, S]`` (S = cached + new tokens); ``adarms_cond`` one conditioning
        vector (or ``None``) per expert. Returns the outputs and the KV cache."""
        if len(embedded) != len(self.configs):
            raise ValueError(f"got {len(embedded)} token streams for {len(self.configs)} experts")
        adarms_cond = [None] * len(self.configs) if adarms_cond is None else list(adarms_cond)
        if len(adarms_cond) != len(self.configs):
            raise ValueError(f"got {len(adarms_cond)} adaRMS conditions for {len(self.configs)} experts")
        xs = [None if e is None else e.astype(self.dtype) for e in embedded]
        mask = jnp.asarray(mask)[:, None, :, :]
        xs, kv_cache = self.layers(xs, kv_cache, positions, mask, adarms_cond)
        outs = [None if x is None else norm(x, c)[0]
                for x, norm, c in zip(xs, self.final_norms, adarms_cond, strict=True)]
        return outs, kv_cache

    def init_all(self, tokens: jax.Array, expert_inputs: Sequence[jax.Array]):
        """Touches every parameter (embedder, all experts, all final norms); used for initialisation."""
        x0 = self.embed(tokens)
        embedded = [x0, *expert_inputs]
        total = sum(e.shape[1] for e in embedded)
        b = tokens.shape[0]
        positions = jnp.broadcast_to(jnp.arange(total)[None], (b, total))
        mask = jnp.ones((b, total, total), dtype=bool)
        return self(embedded, positions, mask)
