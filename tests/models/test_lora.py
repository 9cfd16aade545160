"""LoRA on the Gemma einsums: openpi's names, shapes, equations and scaling; the freeze filter's openpi counts."""

import dataclasses

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.models import gemma
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.lora import LoRAConfig
from pi0_eqm.training.freeze import FreezeConfig
from pi0_eqm.training.freeze import ParamPartition
from tests.models.test_pi0 import OPENPI_PI0_TREE

L = 18
# openpi's gemma_2b_lora (rank 16) / gemma_300m_lora (rank 32) factors: lora_a is the weight's shape with the last
# axis replaced by the rank, lora_b with the second-to-last (openpi's `lora.py` einsum equations).
OPENPI_LORA_TREE = {
    "PaliGemma/llm/layers/attn/q_einsum/lora_a": (L, 8, 2048, 16),
    "PaliGemma/llm/layers/attn/q_einsum/lora_b": (L, 8, 16, 256),
    "PaliGemma/llm/layers/attn/kv_einsum/lora_a": (L, 2, 1, 2048, 16),
    "PaliGemma/llm/layers/attn/kv_einsum/lora_b": (L, 2, 1, 16, 256),
    "PaliGemma/llm/layers/attn/attn_vec_einsum/lora_a": (L, 8, 256, 16),
    "PaliGemma/llm/layers/attn/attn_vec_einsum/lora_b": (L, 8, 16, 2048),
    "PaliGemma/llm/layers/mlp/gating_einsum_lora_a": (L, 2, 2048, 16),
    "PaliGemma/llm/layers/mlp/gating_einsum_lora_b": (L, 2, 16, 16384),
    "PaliGemma/llm/layers/mlp/linear_lora_a": (L, 16384, 16),
    "PaliGemma/llm/layers/mlp/linear_lora_b": (L, 16, 2048),
    "PaliGemma/llm/layers/attn/q_einsum_1/lora_a": (L, 8, 1024, 32),
    "PaliGemma/llm/layers/attn/q_einsum_1/lora_b": (L, 8, 32, 256),
    "PaliGemma/llm/layers/attn/kv_einsum_1/lora_a": (L, 2, 1, 1024, 32),
    "PaliGemma/llm/layers/attn/kv_einsum_1/lora_b": (L, 2, 1, 32, 256),
    "PaliGemma/llm/layers/attn/attn_vec_einsum_1/lora_a": (L, 8, 256, 32),
    "PaliGemma/llm/layers/attn/attn_vec_einsum_1/lora_b": (L, 8, 32, 1024),
    "PaliGemma/llm/layers/mlp_1/gating_einsum_lora_a": (L, 2, 1024, 32),
    "PaliGemma/llm/layers/mlp_1/gating_einsum_lora_b": (L, 2, 32, 4096),
    "PaliGemma/llm/layers/mlp_1/linear_lora_a": (L, 4096, 32),
    "PaliGemma/llm/layers/mlp_1/linear_lora_b": (L, 32, 1024),
}


def _flat_shapes(tree):
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


def test_full_size_lora_tree_matches_openpi():
    cfg = model_config("pi0", EqmConfig(), paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora")
    tree = _flat_shapes(jax.eval_shape(cfg.init, jax.random.key(0)))
    assert tree == {**OPENPI_PI0_TREE, **OPENPI_LORA_TREE}
    assert gemma.get_config("gemma_2b_lora").lora_attn == LoRAConfig(rank=16, alpha=16.0)
    assert gemma.get_config("gemma_300m_lora").lora_ffn == LoRAConfig(rank=32, alpha=32.0)


@pytest.mark.parametrize(("llm", "expert", "frozen"), [
    ("gemma_2b_lora", "gemma_300m_lora", 17), ("gemma_2b_lora", "gemma_300m", 9), ("gemma_2b", "gemma_300m_lora", 8),
    ("gemma_2b", "gemma_300m", 0),
])
def test_openpi_freeze_filter_counts(llm, expert, frozen):
    # openpi's pi0_test.py: gemma LoRA freezes 9 leaves, expert LoRA 8, both 17; LoRA and SigLIP are never frozen.
    cfg = model_config("pi0", EqmConfig(), paligemma_variant=llm, action_expert_variant=expert)
    part = ParamPartition.of(jax.eval_shape(cfg.init, jax.random.key(0)), cfg, FreezeConfig())
    assert len(part.frozen) == frozen
    assert not any("lora" in p or p.startswith("PaliGemma/img") for p in part.frozen)
    if expert.endswith("lora") and not llm.endswith("lora"):
        assert all("_1" in p for p in part.frozen)


def test_freeze_options_select_vision_and_backbone():
    cfg = model_config("pi0", EqmConfig())
    params = jax.eval_shape(cfg.init, jax.random.key(0))
    vision = ParamPartition.of(params, cfg, FreezeConfig(vision=True)).frozen
    assert vision and all(p.startswith("PaliGemma/img/") for p in vision)
    backbone = ParamPartition.of(params, cfg, FreezeConfig(backbone=True)).frozen
    trainable = set(_flat_shapes(params)) - backbone
    expert = {p for p in OPENPI_PI0_TREE if p.startswith("PaliGemma/llm/") and "_1" in p}
    assert len(expert) == 8
    assert trainable == {p for p in OPENPI_PI0_TREE if not p.startswith("PaliGemma/")} | expert
    assert "PaliGemma/llm/embedder/input_embedding" in backbone and "state_proj/kernel" in trainable
    n_train, _ = ParamPartition.of(params, cfg, FreezeConfig(backbone=True)).count(params)
    assert 0.2e9 < n_train < 0.4e9  # the 300M expert + projections


def test_freeze_errors():
    cfg = model_config("pi0_tiny", EqmConfig())
    params = jax.eval_shape(cfg.init, jax.random.key(0))
    with pytest.raises(ValueError, match="not a regular expression"):
        FreezeConfig(regex="(")
    with pytest.raises(ValueError, match="nothing would train"):
        ParamPartition.of(params, cfg, FreezeConfig(regex=".*"))


def test_lora_einsum_equals_openpi_formula():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
    lora = LoRAConfig(rank=2, alpha=3.0)
    assert lora.equations("BTD,NDH->BTNH") == ("BTD,NDL->BTNL", "BTNL,NLH->BTNH")
    assert lora.equations("BSD,2KDH->2BSKH") == ("BSD,2KDL->2BSKL", "2BSKL,2KLH->2BSKH")
    mod = gemma.Einsum((4, 6, 5), 1, 2, (0,), lora=lora)
    params = mod.init(jax.random.key(0), "BTD,NDH->BTNH", x)["params"]
    assert params["lora_a"].shape == (4, 6, 2) and params["lora_b"].shape == (4, 2, 5)
    y = mod.apply({"params": params}, "BTD,NDH->BTNH", x)
    w, a, b = params["w"], params["lora_a"], params["lora_b"]
    expected = jnp.einsum("btd,ndh->btnh", x, w) + 1.5 * jnp.einsum("btnl,nlh->btnh", jnp.einsum("btd,ndl->btnl", x, a), b)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert float(jnp.std(a)) == pytest.approx(0.01, rel=0.5)  # normal(0.01) init, as openpi


@pytest.mark.slow
def test_lora_model_with_zero_up_projection_equals_base_model():
    base = model_config("pi0_tiny", EqmConfig())
    lora = dataclasses.replace(base, paligemma_variant="gemma_tiny_lora", action_expert_variant="gemma_tiny_expert_lora")
    base_params = base.init(jax.random.key(0))
    lora_params = flax.traverse_util.flatten_dict(lora.init(jax.random.key(1)), sep="/")
    merged = {k: (jnp.zeros_like(v) if "lora_b" in k else v) for k, v in lora_params.items()}
    merged.update(flax.traverse_util.flatten_dict(base_params, sep="/"))
    merged = flax.traverse_util.unflatten_dict(merged, sep="/")
    obs, x = base.fake_obs(2), jnp.ones((2, base.action_horizon, base.action_dim)) * 0.3
    obs = obs.replace(images={k: jnp.full(v.shape, 0.2) for k, v in obs.images.items()})
    t = jnp.zeros((2,))
    out_base = base.build().apply({"params": base_params}, obs, x, t, method="full_field")
    out_lora = lora.build().apply({"params": merged}, obs, x, t, method="full_field")
    np.testing.assert_allclose(out_lora, out_base, rtol=1e-6, atol=1e-6)
    # and a non-zero adapter changes the output
    out_adapted = lora.build().apply({"params": flax.traverse_util.unflatten_dict(
        {**flax.traverse_util.flatten_dict(merged, sep="/"),
         **{k: v * 100 for k, v in lora_params.items() if "lora_b" in k}}, sep="/")}, obs, x, t, method="full_field")
    assert float(jnp.max(jnp.abs(out_adapted - out_base))) > 1e-3
