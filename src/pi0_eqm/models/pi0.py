"""π₀: SigLIP + Gemma-2B backbone + Gemma-300M action expert sharing one attention (openpi layout).

The model is a pure function of ``(params, inputs)``. It exposes the pieces the decoders need:

* ``prefill(obs)``: prefix (images + prompt, bidirectional) through the backbone once → KV cache + prefix mask;
* ``expert_field(cache, prefix_mask, state, x, time)``: suffix (state token + H action tokens) through the action
  expert against the cached prefix → ``[B, H, action_dim]`` (flow velocity or EqM field);
* ``full_field(obs, x, time)``: the same output from one uncached forward over prefix + suffix (used for training).

Parameter tree (identical to openpi's ``Pi0`` for the same config)::

    PaliGemma/img/...  PaliGemma/llm/...  state_proj  action_in_proj  action_time_mlp_in  action_time_mlp_out
    action_out_proj

π₀.5 (``pi05=True``, openpi's semantics): no state token — the suffix is ``action_in_proj(x)`` only — and the time
embedding goes through ``time_mlp_in/out`` (swish after each) into adaRMS conditioning of every expert norm
(``pre_attention_norm_1``, ``pre_ffw_norm_1``, ``final_norm_1`` each get a ``Dense_0`` instead of ``scale``);
``max_token_len`` defaults to 200 and the discretised state goes into the prompt (``discrete_state_input``, read by
the tokenizer transform). EqM passes t ≡ 0 through the same path, so the tree stays π₀.5's.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pi0_eqm.models import gemma as _gemma
from pi0_eqm.models import siglip as _siglip
from pi0_eqm.models.decoder_config import DecoderConfig
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.ki import FastTokenLayout
from pi0_eqm.models.ki import KIConfig
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.observation import make_attn_mask
from pi0_eqm.models.observation import posemb_sincos

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    dtype: str = "bfloat16"
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    siglip_variant: str = "So400m/14"
    vocab_size: int = _gemma.PALIGEMMA_VOCAB_SIZE
    action_dim: int = 32  # padded model action dim
    action_horizon: int = 50
    max_token_len: int | None = None  # None → 48 (π₀) / 200 (π₀.5), as openpi
    image_keys: tuple[str, ...] = IMAGE_KEYS
    image_resolution: tuple[int, int] = (224, 224)
    tokenizer: str = "auto"  # auto (PaliGemma for its vocab, bytes for small vocabs) | paligemma | bytes | words
    real_action_dim: int | None = None  # robot action dims (the rest is zero padding); None = all dims are real
    decoder: DecoderConfig = dataclasses.field(default_factory=EqmConfig)
    remat: bool = True
    ki: KIConfig | None = None  # knowledge insulation: FAST next-token loss on the backbone, stop-grad K/V for the expert
    pi05: bool = False  # π₀.5: adaRMS time conditioning in the expert, no state token
    discrete_state_input: bool | None = None  # state discretised into the prompt; None → pi05

    def __post_init__(self):
        if self.max_token_len is None:
            object.__setattr__(self, "max_token_len", 200 if self.pi05 else 48)
        if self.max_token_len < 1:
            raise ValueError(f"max_token_len must be >= 1, got {self.max_token_len}")
        llm = _gemma.get_config(self.paligemma_variant)
        exp = _gemma.get_config(self.action_expert_variant)
        if (llm.depth, llm.num_heads, llm.num_kv_heads, llm.head_dim) != (
            exp.depth, exp.num_heads, exp.num_kv_heads, exp.head_dim
        ):
            raise ValueError(
                f"{self.paligemma_variant} and {self.action_expert_variant} must share depth/heads/head_dim"
            )
        sig = _siglip.get_config(self.siglip_variant)
        for r in self.image_resolution:
            if r % sig.patch_size:
                raise ValueError(f"image resolution {self.image_resolution} not divisible by patch {sig.patch_size}")
        if self.real_action_dim is not None and not 0 < self.real_action_dim <= self.action_dim:
            raise ValueError(f"real_action_dim must be in [1, {self.action_dim}], got {self.real_action_dim}")
        if not isinstance(getattr(self.decoder, "kind", None), str):  # the registry (decoders.DECODERS) checks the kind
            raise TypeError(f"decoder must be a decoder config with a string `kind`, got {type(self.decoder).__name__}")
        if self.ki is not None:
            FastTokenLayout.of(self.vocab_size, self.ki)
        if getattr(self.decoder, "max_delay", 0) >= self.action_horizon:
            raise ValueError(f"decoder max_delay ({self.decoder.max_delay}) must leave a free row of the "
                             f"{self.action_horizon}-step chunk (< action_horizon)")

    @property
    def state_in_prompt(self) -> bool:
        """True when the tokenizer writes the discretised normalised state into the prompt (openpi's π₀.5 format)."""
        return self.pi05 if self.discrete_state_input is None else self.discrete_state_input

    @property
    def fast_layout(self) -> FastTokenLayout | None:
        return None if self.ki is None else FastTokenLayout.of(self.vocab_size, self.ki)

    @property
    def text_vocab_size(self) -> int:
        """Ids a prompt tokenizer may use (the whole vocab unless KI reserves the tail for FAST tokens)."""
        return self.vocab_size if self.ki is None else self.fast_layout.text_vocab_size

    @property
    def llm_config(self) -> _gemma.GemmaConfig:
        return _gemma.get_config(self.paligemma_variant)

    @property
    def expert_config(self) -> _gemma.GemmaConfig:
        return _gemma.get_config(self.action_expert_variant)

    @property
    def num_image_tokens(self) -> int:
        p = _siglip.get_config(self.siglip_variant).patch_size
        return (self.image_resolution[0] // p) * (self.image_resolution[1] // p)

    @property
    def prefix_len(self) -> int:
        return len(self.image_keys) * self.num_image_tokens + self.max_token_len

    def action_dim_mask(self) -> jax.Array:
        """``bool [action_dim]``: True on real (non-padded) action dims."""
        n = self.action_dim if self.real_action_dim is None else self.real_action_dim
        return jnp.arange(self.action_dim) < n

    def fake_obs(self, batch_size: int = 1) -> Observation:
        h, w = self.image_resolution
        return Observation(
            images={k: jnp.zeros((batch_size, h, w, 3), jnp.float32) for k in self.image_keys},
            image_masks={k: jnp.ones((batch_size,), bool) for k in self.image_keys},
            state=jnp.zeros((batch_size, self.action_dim), jnp.float32),
            tokenized_prompt=jnp.zeros((batch_size, self.max_token_len), jnp.int32),
            tokenized_prompt_mask=jnp.ones((batch_size, self.max_token_len), bool),
        )

    def fake_actions(self, batch_size: int = 1) -> jax.Array:
        return jnp.zeros((batch_size, self.action_horizon, self.action_dim), jnp.float32)

    def build(self) -> Pi0:
        return Pi0(self)

    def init(self, rng: jax.Array, batch_size: int = 1) -> dict[str, Any]:
        """Random parameters (float32) as a pure dict ``{"PaliGemma": ..., "state_proj": ...}``. One compiled
        program per config (bit-identical to running the initializers op by op, and seconds faster)."""
        return _init(self, batch_size, rng)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(config: Pi0Config, batch_size: int, rng: jax.Array) -> dict[str, Any]:
    return config.build().init(rng, config.fake_obs(batch_size), config.fake_actions(batch_size),
                               method=Pi0.init_all)["params"]


class _PaliGemma(nn.Module):
    config: Pi0Config

    def setup(self):
        cfg = self.config
        self.llm = _gemma.Module(
            configs=(cfg.llm_config, cfg.expert_config), vocab_size=cfg.vocab_size, dtype=cfg.dtype, remat=cfg.remat
        )
        self.img = _siglip.Module(
            config=_siglip.get_config(cfg.siglip_variant), out_dim=cfg.llm_config.width, dtype=cfg.dtype,
            remat=cfg.remat,
        )


class Pi0(nn.Module):
    config: Pi0Config

    def setup(self):
        cfg = self.config
        ew = cfg.expert_config.width
        self.PaliGemma = _PaliGemma(cfg)
        self.action_in_proj = nn.Dense(ew, name="action_in_proj")
        if cfg.pi05:
            self.time_mlp_in = nn.Dense(ew, name="time_mlp_in")
            self.time_mlp_out = nn.Dense(ew, name="time_mlp_out")
        else:
            self.state_proj = nn.Dense(ew, name="state_proj")
            self.action_time_mlp_in = nn.Dense(ew, name="action_time_mlp_in")
            self.action_time_mlp_out = nn.Dense(ew, name="action_time_mlp_out")
        self.action_out_proj = nn.Dense(cfg.action_dim, name="action_out_proj")

    # ------------------------------------------------------------------ embeddings
    def embed_prefix(self, obs: Observation) -> tuple[jax.Array, jax.Array, jax.Array]:
        tokens, input_mask = [], []
        for key in self.config.image_keys:
            if key not in obs.images:
                raise KeyError(f"observation lacks image {key!r}; has {sorted(obs.images)}")
            img_tokens = self.PaliGemma.img(obs.images[key])
            tokens.append(img_tokens)
            input_mask.append(jnp.broadcast_to(obs.image_masks[key][:, None], img_tokens.shape[:2]))
        tokens.append(self.PaliGemma.llm.embed(obs.tokenized_prompt))
        input_mask.append(obs.tokenized_prompt_mask)
        tokens = jnp.concatenate(tokens, axis=1)
        input_mask = jnp.concatenate(input_mask, axis=1).astype(bool)
        ar_mask = jnp.zeros((tokens.shape[1],), dtype=bool)
        return tokens, input_mask, ar_mask

    def embed_suffix(self, state: jax.Array, x: jax.Array, time: jax.Array):
        """Suffix tokens, input mask, ar mask and the expert's adaRMS condition (``None`` for π₀).

        ``time`` is ``[B]`` (one flow time per chunk, openpi) or ``[B, H]`` (one per action token: training-time
        real-time chunking gives the committed rows time 0); π₀.5's adaRMS condition is then per token too."""
        cfg = self.config
        b, h, _ = x.shape
        if time.shape not in ((b,), (b, h)):
            raise ValueError(f"time must be [B] or [B, H] = {(b,)} or {(b, h)}, got {time.shape}")
        action_tokens = self.action_in_proj(x.astype(jnp.float32))
        time_emb = posemb_sincos(time.astype(jnp.float32), cfg.expert_config.width, 4e-3, 4.0)
        if cfg.pi05:
            cond = nn.swish(self.time_mlp_out(nn.swish(self.time_mlp_in(time_emb))))
            ar_mask = jnp.array([True] + [False] * (h - 1))
            return action_tokens, jnp.ones((b, h), dtype=bool), ar_mask, cond
        state_token = self.state_proj(state.astype(jnp.float32))[:, None, :]
        if time_emb.ndim == 2:
            time_emb = time_emb[:, None, :]
        time_tokens = jnp.broadcast_to(time_emb, (b, h, time_emb.shape[-1]))
        action_time = jnp.concatenate([action_tokens, time_tokens], axis=-1)
        action_time = self.action_time_mlp_out(nn.swish(self.action_time_mlp_in(action_time)))
        tokens = jnp.concatenate([state_token, action_time], axis=1)
        input_mask = jnp.ones(tokens.shape[:2], dtype=bool)
        ar_mask = jnp.array([True] + [True] + [False] * (h - 1))
        return tokens, input_mask, ar_mask, None

    # ------------------------------------------------------------------ forward pieces
    def prefill(self, obs: Observation) -> tuple[_gemma.KVCache, jax.Array]:
        """Runs the prefix once; returns the per-layer KV cache and the prefix input mask ``[B, P]``."""
        tokens, input_mask, ar_mask = self.embed_prefix(obs)
        attn_mask = make_attn_mask(input_mask, ar_mask)
        positions = jnp.cumsum(input_mask, axis=1) - 1
        _, kv_cache = self.PaliGemma.llm([tokens, None], positions=positions, mask=attn_mask)
        return kv_cache, input_mask

    def expert_field(
        self, kv_cache: _gemma.KVCache, prefix_mask: jax.Array, state: jax.Array, x: jax.Array, time: jax.Array
    ) -> jax.Array:
        """Action-expert output ``[B, H, D]`` (float32) for noisy actions ``x`` against a cached prefix."""
        tokens, suffix_mask, suffix_ar, cond = self.embed_suffix(state, x, time)
        b, s = suffix_mask.shape
        p = prefix_mask.shape[1]
        suffix_attn = make_attn_mask(suffix_mask, suffix_ar)
        prefix_attn = jnp.broadcast_to(prefix_mask[:, None, :], (b, s, p))
        full_mask = jnp.concatenate([prefix_attn, suffix_attn], axis=-1)
        positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
        (_, suffix_out), _ = self.PaliGemma.llm([None, tokens], positions=positions, mask=full_mask, kv_cache=kv_cache,
                                                adarms_cond=[None, cond])
        return self.action_out_proj(suffix_out[:, -x.shape[1]:].astype(jnp.float32))

    def full_field(self, obs: Observation, x: jax.Array, time: jax.Array) -> jax.Array:
        """Same output as ``prefill`` + ``expert_field`` from one uncached forward over prefix and suffix."""
        prefix_tokens, prefix_mask, prefix_ar = self.embed_prefix(obs)
        suffix_tokens, suffix_mask, suffix_ar, cond = self.embed_suffix(obs.state, x, time)
        input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
        ar_mask = jnp.concatenate([prefix_ar, suffix_ar], axis=0)
        attn_mask = make_attn_mask(input_mask, ar_mask)
        positions = jnp.cumsum(input_mask, axis=1) - 1
        (_, suffix_out), _ = self.PaliGemma.llm([prefix_tokens, suffix_tokens], positions=positions, mask=attn_mask,
                                                adarms_cond=[None, cond])
        return self.action_out_proj(suffix_out[:, -x.shape[1]:].astype(jnp.float32))

    def ki_forward(self, obs: Observation, fast_in: jax.Array, fast_in_mask: jax.Array, x: jax.Array,
                   time: jax.Array, *, stop_gradient: bool = True) -> tuple[jax.Array, jax.Array]:
        """Knowledge-insulation training forward → (expert output ``[B, H, D]``, FAST logits ``[B, F, V]``).

        The backbone runs images + prompt + FAST tokens (``fast_in``, causal among themselves; logits at FAST
        position i predict token i + 1). The expert then attends to the backbone's K/V through ``stop_gradient``
        (when set) with the FAST positions masked out and the same positions as at inference, so its output equals
        ``prefill`` + ``expert_field`` on ``obs`` and no expert gradient reaches the backbone.
        """
        logits, kv_cache, prefix_mask = self._backbone_with_fast(obs, fast_in, fast_in_mask)
        if stop_gradient:
            kv_cache = jax.lax.stop_gradient(kv_cache)
        expert_prefix_mask = jnp.concatenate([prefix_mask, jnp.zeros_like(fast_in_mask, dtype=bool)], axis=1)
        return self.expert_field(kv_cache, expert_prefix_mask, obs.state, x, time), logits

    def fast_logits(self, obs: Observation, fast_in: jax.Array, fast_in_mask: jax.Array) -> jax.Array:
        """Backbone next-FAST-token logits ``[B, F, V]`` (position i predicts token i + 1); no expert."""
        return self._backbone_with_fast(obs, fast_in, fast_in_mask)[0]

    def _backbone_with_fast(self, obs: Observation, fast_in: jax.Array, fast_in_mask: jax.Array):
        prefix_tokens, prefix_mask, prefix_ar = self.embed_prefix(obs)
        fast_in_mask = fast_in_mask.astype(bool)
        tokens = jnp.concatenate([prefix_tokens, self.PaliGemma.llm.embed(fast_in)], axis=1)
        input_mask = jnp.concatenate([prefix_mask, fast_in_mask], axis=1)
        ar_mask = jnp.concatenate([prefix_ar, jnp.ones((fast_in.shape[1],), bool)])
        positions = jnp.cumsum(input_mask, axis=1) - 1
        (prefix_out, _), kv_cache = self.PaliGemma.llm([tokens, None], positions=positions,
                                                       mask=make_attn_mask(input_mask, ar_mask))
        return self.PaliGemma.llm.logits(prefix_out[:, prefix_tokens.shape[1]:]), kv_cache, prefix_mask

    def init_all(self, obs: Observation, actions: jax.Array) -> jax.Array:
        # Touch the embedder's full table and both final norms through a normal forward.
        return self.full_field(obs, actions, jnp.zeros((actions.shape[0],), jnp.float32))
