"""π₀ model: shapes, attention masks, KV-cached decoding vs an uncached forward, and openpi's param tree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.models.observation import make_attn_mask
from pi0_eqm.models.observation import posemb_sincos
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.models.pi0 import Pi0Config

# openpi's full π₀ param tree (`pi0.Pi0Config().create` in openpi, as pure-dict paths, float32 at init).
L, V = 18, 27
OPENPI_PI0_TREE = {
    "PaliGemma/img/embedding/kernel": (14, 14, 3, 1152),
    "PaliGemma/img/embedding/bias": (1152,),
    "PaliGemma/img/pos_embedding": (1, 256, 1152),
    "PaliGemma/img/Transformer/encoderblock/LayerNorm_0/scale": (V, 1152),
    "PaliGemma/img/Transformer/encoderblock/LayerNorm_0/bias": (V, 1152),
    "PaliGemma/img/Transformer/encoderblock/LayerNorm_1/scale": (V, 1152),
    "PaliGemma/img/Transformer/encoderblock/LayerNorm_1/bias": (V, 1152),
    "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel": (V, 1152, 4304),
    "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_0/bias": (V, 4304),
    "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_1/kernel": (V, 4304, 1152),
    "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_1/bias": (V, 1152),
    **{
        f"PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/{n}/kernel": (V, 1152, 16, 72)
        for n in ("query", "key", "value")
    },
    **{
        f"PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/{n}/bias": (V, 16, 72)
        for n in ("query", "key", "value")
    },
    "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/out/kernel": (V, 16, 72, 1152),
    "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/out/bias": (V, 1152),
    "PaliGemma/img/Transformer/encoder_norm/scale": (1152,),
    "PaliGemma/img/Transformer/encoder_norm/bias": (1152,),
    "PaliGemma/img/head/kernel": (1152, 2048),
    "PaliGemma/img/head/bias": (2048,),
    "PaliGemma/llm/embedder/input_embedding": (257152, 2048),
    "PaliGemma/llm/final_norm/scale": (2048,),
    "PaliGemma/llm/final_norm_1/scale": (1024,),
    "PaliGemma/llm/layers/attn/q_einsum/w": (L, 8, 2048, 256),
    "PaliGemma/llm/layers/attn/kv_einsum/w": (L, 2, 1, 2048, 256),
    "PaliGemma/llm/layers/attn/attn_vec_einsum/w": (L, 8, 256, 2048),
    "PaliGemma/llm/layers/attn/q_einsum_1/w": (L, 8, 1024, 256),
    "PaliGemma/llm/layers/attn/kv_einsum_1/w": (L, 2, 1, 1024, 256),
    "PaliGemma/llm/layers/attn/attn_vec_einsum_1/w": (L, 8, 256, 1024),
    "PaliGemma/llm/layers/mlp/gating_einsum": (L, 2, 2048, 16384),
    "PaliGemma/llm/layers/mlp/linear": (L, 16384, 2048),
    "PaliGemma/llm/layers/mlp_1/gating_einsum": (L, 2, 1024, 4096),
    "PaliGemma/llm/layers/mlp_1/linear": (L, 4096, 1024),
    "PaliGemma/llm/layers/pre_attention_norm/scale": (L, 2048),
    "PaliGemma/llm/layers/pre_ffw_norm/scale": (L, 2048),
    "PaliGemma/llm/layers/pre_attention_norm_1/scale": (L, 1024),
    "PaliGemma/llm/layers/pre_ffw_norm_1/scale": (L, 1024),
    "state_proj/kernel": (32, 1024),
    "state_proj/bias": (1024,),
    "action_in_proj/kernel": (32, 1024),
    "action_in_proj/bias": (1024,),
    "action_time_mlp_in/kernel": (2048, 1024),
    "action_time_mlp_in/bias": (1024,),
    "action_time_mlp_out/kernel": (1024, 1024),
    "action_time_mlp_out/bias": (1024,),
    "action_out_proj/kernel": (1024, 32),
    "action_out_proj/bias": (32,),
}


def flat_shapes(tree) -> dict[str, tuple]:
    return {
        "/".join(str(k.key) for k in path): (tuple(v.shape), v.dtype)
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.mark.parametrize("decoder", ["eqm", "flow"])
def test_full_size_param_tree_matches_openpi(decoder):
    cfg = model_config("pi0", FlowConfig() if decoder == "flow" else None)
    abstract = jax.eval_shape(lambda: cfg.init(jax.random.key(0)))
    got = flat_shapes(abstract)
    assert {k: s for k, (s, _) in got.items()} == OPENPI_PI0_TREE
    assert all(dt == jnp.float32 for _, dt in got.values())
    n_params = sum(int(np.prod(s)) for s in OPENPI_PI0_TREE.values())
    assert abs(n_params / 1e6 - 3238.0) < 1.0  # openpi's π₀: 3238.0M parameters
    assert cfg.prefix_len == 816


def test_make_attn_mask_matches_openpi_semantics():
    # prefix of 3 (one padded), state token (ar), 2 action tokens (first ar).
    input_mask = jnp.array([[True, True, False, True, True, True]])
    ar = jnp.array([False, False, False, True, True, False])
    m = np.asarray(make_attn_mask(input_mask, ar))[0]
    # Prefix tokens see valid prefix tokens only.
    assert m[0].tolist() == [True, True, False, False, False, False]
    # Padded token sees nothing and is seen by no one.
    assert not m[2].any() and not m[:, 2].any()
    # State token sees prefix + itself, not actions.
    assert m[3].tolist() == [True, True, False, True, False, False]
    # Action tokens see prefix, state and all action tokens.
    assert m[4].tolist() == [True, True, False, True, True, True]
    assert m[5].tolist() == [True, True, False, True, True, True]


def test_posemb_sincos():
    emb = posemb_sincos(jnp.array([0.0, 0.5]), 16, 4e-3, 4.0)
    assert emb.shape == (2, 16)
    np.testing.assert_allclose(emb[0, :8], 0.0, atol=1e-7)
    np.testing.assert_allclose(emb[0, 8:], 1.0, atol=1e-7)
    period = 4e-3 * (4.0 / 4e-3) ** np.linspace(0, 1, 8)
    np.testing.assert_allclose(emb[1, :8], np.sin(2 * np.pi * 0.5 / period), atol=1e-4)


def _random_obs(cfg: Pi0Config, b: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 8)
    obs = cfg.fake_obs(b)
    lengths = jnp.array([2, cfg.max_token_len, 1][:b])
    return obs.replace(
        images={k: jax.random.uniform(keys[i], v.shape, minval=-1, maxval=1) for i, (k, v) in enumerate(obs.images.items())},
        image_masks={k: jnp.array([True, False, True][:b]) if i == 2 else v for i, (k, v) in enumerate(obs.image_masks.items())},
        state=jax.random.normal(keys[4], obs.state.shape),
        tokenized_prompt=jax.random.randint(keys[5], obs.tokenized_prompt.shape, 0, cfg.vocab_size),
        tokenized_prompt_mask=jnp.arange(cfg.max_token_len)[None, :] < lengths[:, None],
    )


@pytest.fixture(scope="module")
def tiny():
    cfg = model_config("pi0_tiny")
    params = cfg.init(jax.random.key(0))
    # openpi zero-initialises the SigLIP head; randomise it so the images actually reach the expert in these tests.
    head = params["PaliGemma"]["img"]["head"]
    head["kernel"] = 0.2 * jax.random.normal(jax.random.key(1), head["kernel"].shape)
    return cfg, params


def test_shapes_and_kv_cache(tiny):
    cfg, params = tiny
    b = 3
    obs = _random_obs(cfg, b)
    model = Pi0(cfg)
    v = {"params": params}
    cache, prefix_mask = model.apply(v, obs, method=Pi0.prefill)
    k, val = cache
    llm = cfg.llm_config
    assert k.shape == (llm.depth, b, cfg.prefix_len, llm.num_kv_heads, llm.head_dim)
    assert val.shape == k.shape
    assert prefix_mask.shape == (b, cfg.prefix_len)
    # Image 2 of sample 1 is masked: its tokens are invalid.
    n = cfg.num_image_tokens
    assert not prefix_mask[1, 2 * n : 3 * n].any() and prefix_mask[0, 2 * n : 3 * n].all()


def test_cached_decoding_equals_uncached_forward(tiny):
    """The expert against the prefix KV cache gives the same output as one full forward (fp32, atol 1e-4)."""
    cfg, params = tiny
    b = 3
    obs = _random_obs(cfg, b)
    model = Pi0(cfg)
    v = {"params": params}
    x = jax.random.normal(jax.random.key(3), (b, cfg.action_horizon, cfg.action_dim))
    t = jnp.array([0.05, 0.5, 1.0])
    full = model.apply(v, obs, x, t, method=Pi0.full_field)
    cache, pm = model.apply(v, obs, method=Pi0.prefill)
    cached = model.apply(v, cache, pm, obs.state, x, t, method=Pi0.expert_field)
    assert full.shape == (b, cfg.action_horizon, cfg.action_dim)
    assert float(jnp.abs(full).max()) > 1e-2
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-4, rtol=1e-4)
    # The output depends on the images and on the prompt (the cache carries them).
    obs2 = obs.replace(images={k: -img for k, img in obs.images.items()})
    cache2, pm2 = model.apply(v, obs2, method=Pi0.prefill)
    other = model.apply(v, cache2, pm2, obs.state, x, t, method=Pi0.expert_field)
    assert float(jnp.abs(other - cached).max()) > 1e-3


def test_padding_prompt_tokens_do_not_change_output(tiny):
    cfg, params = tiny
    obs = _random_obs(cfg, 1)
    model = Pi0(cfg)
    x = jax.random.normal(jax.random.key(4), (1, cfg.action_horizon, cfg.action_dim))
    t = jnp.array([0.3])
    out1 = model.apply({"params": params}, obs, x, t, method=Pi0.full_field)
    tokens = obs.tokenized_prompt.at[:, 2:].set(7)  # only positions beyond the mask change
    out2 = model.apply({"params": params}, obs.replace(tokenized_prompt=tokens), x, t, method=Pi0.full_field)
    np.testing.assert_allclose(np.asarray(out1), np.asarray(out2), atol=1e-5)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="share depth"):
        Pi0Config(paligemma_variant="gemma_2b", action_expert_variant="gemma_tiny_expert")
    with pytest.raises(ValueError, match="Unknown Gemma variant"):
        Pi0Config(paligemma_variant="gemma_7b")
    with pytest.raises(ValueError, match="not divisible"):
        model_config("pi0_tiny", image_resolution=(30, 30))
