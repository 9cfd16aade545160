"""π₀.5: openpi's param tree and sizes, adaRMS, the discrete-state prompt, cached decoding, and both decoders."""

import dataclasses

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

from pi0_eqm.data.transforms import TokenizePrompt
from pi0_eqm.decoders import make_decoder
from pi0_eqm.models import gemma
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.observation import posemb_sincos
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.models.tokenizer import ByteTokenizer
from pi0_eqm.models.tokenizer import PaligemmaTokenizer
from pi0_eqm.models.tokenizer import discretize_state
from pi0_eqm.models.tokenizer import pi05_prompt
from pi0_eqm.training import loop
from pi0_eqm.training.config import get_config
from tests.models.test_pi0 import OPENPI_PI0_TREE

L = 18
# openpi's π₀.5 (`Pi0Config(pi05=True)`) replaces the expert norms' scales and the π₀ heads.
_DROPPED = {"state_proj/kernel", "state_proj/bias", "action_time_mlp_in/kernel", "action_time_mlp_in/bias",
            "action_time_mlp_out/kernel", "action_time_mlp_out/bias", "PaliGemma/llm/final_norm_1/scale",
            "PaliGemma/llm/layers/pre_attention_norm_1/scale", "PaliGemma/llm/layers/pre_ffw_norm_1/scale"}
OPENPI_PI05_TREE = {
    **{k: v for k, v in OPENPI_PI0_TREE.items() if k not in _DROPPED},
    "PaliGemma/llm/final_norm_1/Dense_0/kernel": (1024, 3072),
    "PaliGemma/llm/final_norm_1/Dense_0/bias": (3072,),
    "PaliGemma/llm/layers/pre_attention_norm_1/Dense_0/kernel": (L, 1024, 3072),
    "PaliGemma/llm/layers/pre_attention_norm_1/Dense_0/bias": (L, 3072),
    "PaliGemma/llm/layers/pre_ffw_norm_1/Dense_0/kernel": (L, 1024, 3072),
    "PaliGemma/llm/layers/pre_ffw_norm_1/Dense_0/bias": (L, 3072),
    "time_mlp_in/kernel": (1024, 1024), "time_mlp_in/bias": (1024,),
    "time_mlp_out/kernel": (1024, 1024), "time_mlp_out/bias": (1024,),
}


def _flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


@pytest.mark.parametrize("decoder", ["flow", "eqm"])
def test_full_size_pi05_tree_matches_openpi(decoder):
    cfg = get_config("pi05_libero" if decoder == "flow" else "pi05_eqm_libero").model
    tree = _flat(jax.eval_shape(cfg.init, jax.random.key(0)))
    assert {k: tuple(v.shape) for k, v in tree.items()} == OPENPI_PI05_TREE
    total = sum(v.size for v in tree.values())
    expert = sum(v.size for k, v in tree.items() if k.startswith("PaliGemma/llm/") and "_1" in k)
    heads = sum(v.size for k, v in tree.items() if not k.startswith("PaliGemma/"))
    # the spec's count table: 3353.4M total, action expert 427.9M, projections 2.2M
    assert (round(total / 1e6, 1), round(expert / 1e6, 1), round(heads / 1e6, 1)) == (3353.4, 427.9, 2.2)
    assert cfg.max_token_len == 200 and cfg.action_horizon == 10 and not cfg.state_in_prompt


def test_adarms_zero_init_is_plain_rmsnorm_with_a_closed_gate():
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    cond = jax.random.normal(jax.random.key(1), (2, 8))
    norm = gemma.RMSNorm()
    plain_params = norm.init(jax.random.key(2), x)
    plain, no_gate = norm.apply(plain_params, x)
    ada_params = norm.init(jax.random.key(2), x, cond)
    assert set(ada_params["params"]) == {"Dense_0"}
    ada, gate = norm.apply(ada_params, x, cond)
    assert no_gate is None
    np.testing.assert_allclose(ada, plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(gate, 0.0)
    # a trained modulation scales, shifts and gates as openpi: normed·(1 + scale) + shift
    w = {"params": {"Dense_0": {"kernel": jnp.zeros((8, 48)), "bias": jnp.concatenate(
        [jnp.full(16, 0.5), jnp.full(16, 0.25), jnp.full(16, 2.0)])}}}
    out, gate = norm.apply(w, x, cond)
    np.testing.assert_allclose(out, plain * 1.5 + 0.25, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gate, 2.0)


def test_fresh_pi05_expert_passes_its_input_through_the_closed_gates():
    """Zero-initialised adaRMS closes every residual branch: a fresh expert returns final-norm(input tokens)."""
    cfg = model_config("pi05_tiny", EqmConfig())
    params = cfg.init(jax.random.key(0))
    model = Pi0(cfg)
    obs = cfg.fake_obs(2)
    x = jax.random.normal(jax.random.key(1), (2, cfg.action_horizon, cfg.action_dim))
    t = jnp.zeros((2,))
    out = model.apply({"params": params}, obs, x, t, method=Pi0.full_field)
    tokens = model.apply({"params": params}, x, method=lambda m, a: m.action_in_proj(a))
    var = jnp.mean(tokens**2, axis=-1, keepdims=True)
    expected = model.apply({"params": params}, tokens * jax.lax.rsqrt(var + 1e-6),
                           method=lambda m, h: m.action_out_proj(h))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_discrete_state_prompt_matches_openpi_format(tmp_path):
    state = np.array([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5, -1.2], np.float32)
    np.testing.assert_array_equal(discretize_state(state), [0, 64, 128, 255, 255, 255, -1])
    text = pi05_prompt(" pick_up the bowl\n", state)
    assert text == "Task: pick up the bowl, State: 0 64 128 255 255 255 -1;\nAction: "
    # The PaliGemma path encodes exactly that text with BOS (a sentencepiece model trained here stands in for
    # paligemma_tokenizer.model, which is not downloaded in tests).
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["Task: pick up the bowl, State: 0 64 128 255;", "Action: put it on the plate"] * 50))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=60,
                                             model_type="bpe", character_coverage=1.0)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    tok = PaligemmaTokenizer(max_len=64, model_path=str(tmp_path / "sp.model"))
    tokens, mask = tok.tokenize(" pick_up the bowl\n", state)
    expected = sp.encode(text, add_bos=True)
    np.testing.assert_array_equal(tokens[: len(expected)], expected)
    assert mask.sum() == len(expected) and not tokens[len(expected):].any()
    # without a state: the π₀ format (BOS + text + "\n")
    tokens0, _ = tok.tokenize(" pick_up the bowl\n")
    assert tokens0[: mask.sum()].tolist() != expected


def test_tokenize_transform_writes_the_normalised_state():
    tok = ByteTokenizer(max_len=96)
    data = {"prompt": "open the drawer", "state": np.array([0.0, 1.0], np.float32)}
    with_state = TokenizePrompt(tok, discrete_state=True)(data)
    without = TokenizePrompt(tok)(data)
    decoded = bytes(int(t) - 3 for t, m in zip(with_state["tokenized_prompt"][1:], with_state["tokenized_prompt_mask"][1:],
                                               strict=True) if m).decode()
    assert decoded == "Task: open the drawer, State: 128 255;\nAction: "
    assert not np.array_equal(with_state["tokenized_prompt"], without["tokenized_prompt"])
    with pytest.raises(KeyError, match="state"):
        TokenizePrompt(tok, discrete_state=True)({"prompt": "x"})


def test_discrete_state_bins_the_value_given_not_its_float32_rounding():
    """openpi bins the state it is given: a float64 value just below a bin edge stays in the lower bin even where its
    float32 rounding is the edge itself."""
    edge = -1 + 2 * 130 / 256  # a bin edge, exact in float32
    below = np.nextafter(edge, -np.inf)  # float64, within one float32 ulp of the edge
    assert np.float32(below) == edge
    tok = ByteTokenizer(max_len=96)
    out = TokenizePrompt(tok, discrete_state=True)({"prompt": "x", "state": np.array([below])})
    decoded = bytes(int(t) - 3 for t, m in zip(out["tokenized_prompt"][1:], out["tokenized_prompt_mask"][1:],
                                               strict=True) if m).decode()
    assert decoded == "Task: x, State: 129;\nAction: "


def test_cached_decoding_equals_uncached_forward():
    cfg = model_config("pi05_tiny", EqmConfig())
    params = _flat(cfg.init(jax.random.key(0)))
    params = flax.traverse_util.unflatten_dict(
        {k: 0.05 * jax.random.normal(jax.random.key(len(k)), v.shape) if "Dense_0" in k or "img/head" in k else v
         for k, v in params.items()}, sep="/")
    model = Pi0(cfg)
    obs = cfg.fake_obs(2)
    obs = obs.replace(images={k: jax.random.uniform(jax.random.key(3), v.shape, minval=-1, maxval=1)
                              for k, v in obs.images.items()})
    x = jax.random.normal(jax.random.key(4), (2, cfg.action_horizon, cfg.action_dim))
    t = jnp.array([0.2, 0.9])
    full = model.apply({"params": params}, obs, x, t, method=Pi0.full_field)
    cache, pm = model.apply({"params": params}, obs, method=Pi0.prefill)
    cached = model.apply({"params": params}, cache, pm, obs.state, x, t, method=Pi0.expert_field)
    np.testing.assert_allclose(cached, full, atol=1e-4, rtol=1e-4)
    # the time reaches the expert through adaRMS (flow); the state does not enter the suffix
    other_t = model.apply({"params": params}, cache, pm, obs.state, x, t[::-1], method=Pi0.expert_field)
    assert float(jnp.abs(other_t - cached).max()) > 1e-4
    other_state = model.apply({"params": params}, cache, pm, obs.state + 3.0, x, t, method=Pi0.expert_field)
    np.testing.assert_array_equal(other_state, cached)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["debug_pi05", "debug_pi05_eqm"])
def test_both_decoders_train_and_decode_on_tiny_pi05(tmp_path, name):
    base = get_config(name)
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, image_resolution=(16, 16)),
                              checkpoint_base_dir=str(tmp_path), exp_name="run", num_train_steps=6, save_interval=6,
                              async_checkpoint=False)
    out = loop.train(cfg, progress=False)
    losses = [h["loss"] for h in out["history"]]
    assert len(losses) == 6 and all(np.isfinite(losses))
    params = out["state"].params
    moved = [k for k, v in _flat(jax.device_get(params)).items() if "Dense_0/kernel" in k and np.abs(v).max() > 0]
    assert moved, "adaRMS modulation did not train"
    decoder = make_decoder(cfg.model)
    actions = decoder.decode(params, cfg.model.fake_obs(2), jax.random.key(0))
    actions = actions[0] if isinstance(actions, tuple) else actions
    assert actions.shape == (2, cfg.model.action_horizon, cfg.model.action_dim) and np.isfinite(actions).all()


def test_swish_time_path_is_what_openpi_computes():
    """adarms_cond = swish(time_mlp_out(swish(time_mlp_in(posemb(t)))))."""
    cfg = model_config("pi05_tiny", EqmConfig())
    params = cfg.init(jax.random.key(0))
    model = Pi0(cfg)
    x = jnp.zeros((1, cfg.action_horizon, cfg.action_dim))
    t = jnp.array([0.4])
    _, _, _, cond = model.apply({"params": params}, cfg.fake_obs(1).state, x, t, method=Pi0.embed_suffix)
    emb = posemb_sincos(t, cfg.expert_config.width, 4e-3, 4.0)
    p = params
    h = nn.swish(emb @ p["time_mlp_in"]["kernel"] + p["time_mlp_in"]["bias"])
    expected = nn.swish(h @ p["time_mlp_out"]["kernel"] + p["time_mlp_out"]["bias"])
    np.testing.assert_allclose(cond, expected, rtol=1e-5, atol=1e-6)
