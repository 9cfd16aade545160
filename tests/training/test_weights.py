"""Weight loaders: merge rules, openpi checkpoints (with/without ``value``), big_vision PaliGemma ``.npz``."""

from __future__ import annotations

import logging
import re

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.models.configs import model_config
from pi0_eqm.training import checkpoints as ckpt
from pi0_eqm.training import weights


@pytest.fixture(scope="module")
def reference():
    return jax.jit(model_config("pi0_tiny").init)(jax.random.key(0))


@pytest.fixture(scope="module")
def pretrained(reference):
    """'Pretrained' weights: same tree, different values."""
    rng = np.random.default_rng(7)
    return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), reference)


def _flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


def _assert_equal(a, b):
    fa, fb = _flat(a), _flat(b)
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


# ----------------------------------------------------------------------------------------------------------------
# merge_params
# ----------------------------------------------------------------------------------------------------------------


def test_merge_keeps_loaded_and_casts_to_reference_dtype():
    reference = {"a": {"w": jnp.zeros((2, 3), jnp.bfloat16)}, "b": jnp.zeros(4, jnp.float32)}
    loaded = {"a": {"w": np.full((2, 3), 1.5, np.float32)}, "b": np.arange(4, dtype=np.float64)}
    merged = weights.merge_params(loaded, reference, missing_regex="^$")
    assert merged["a"]["w"].dtype == jnp.bfloat16 and merged["b"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(merged["a"]["w"], np.float32), 1.5)
    np.testing.assert_array_equal(merged["b"], np.arange(4))


def test_merge_drops_extra_keys_and_logs_them(caplog):
    reference = {"a": jnp.zeros(2)}
    loaded = {"a": np.ones(2, np.float32), "old_head": {"kernel": np.ones((3, 3), np.float32)}}
    with caplog.at_level(logging.WARNING, logger="pi0_eqm.training.weights"):
        merged = weights.merge_params(loaded, reference, missing_regex="^$")
    assert set(merged) == {"a"}
    assert "old_head/kernel" in caplog.text


def test_merge_fills_only_missing_keys_matching_regex():
    reference = {"llm": {"w": jnp.full(2, 7.0)}, "lora": {"a": jnp.full(3, 5.0)}, "head": jnp.full(1, 3.0)}
    loaded = {"llm": {"w": np.ones(2, np.float32)}, "head": np.zeros(1, np.float32)}
    merged = weights.merge_params(loaded, reference, missing_regex=".*lora.*")
    np.testing.assert_array_equal(merged["llm"]["w"], 1.0)
    np.testing.assert_array_equal(merged["lora"]["a"], 5.0)  # fresh init from the reference
    np.testing.assert_array_equal(merged["head"], 0.0)


def test_merge_names_every_missing_key_and_shape_mismatch():
    reference = {
        "PaliGemma": {"llm": {"w": jnp.zeros((4, 8)), "v": jnp.zeros(8)}},
        "action_in_proj": {"kernel": jnp.zeros((32, 16)), "bias": jnp.zeros(16)},
        "state_proj": {"kernel": jnp.zeros((32, 16))},
        "lora_a": jnp.zeros(2),
    }
    loaded = {
        "PaliGemma": {"llm": {"w": np.zeros((4, 9), np.float32), "v": np.zeros(8, np.float32)}},
        "action_in_proj": {"kernel": np.zeros((7, 16), np.float32)},
        "extra": np.zeros(1, np.float32),
    }
    with pytest.raises(weights.WeightLoadError) as info:
        weights.merge_params(loaded, reference, missing_regex=".*lora.*")
    msg = str(info.value)
    assert "2 model params are missing" in msg
    assert "action_in_proj/bias: shape (16,)" in msg and "state_proj/kernel: shape (32, 16)" in msg
    assert "lora_a" not in msg  # allowed to be missing
    assert "2 shape mismatches" in msg
    assert "PaliGemma/llm/w: expected shape (4, 8), got (4, 9)" in msg
    assert "action_in_proj/kernel: expected shape (32, 16), got (7, 16)" in msg
    assert "extra" in msg


def test_merge_with_abstract_reference_leaves_placeholders(reference, pretrained):
    abstract = jax.eval_shape(lambda: reference)
    partial = {k: v for k, v in pretrained.items() if k != "state_proj"}
    merged = weights.merge_params(partial, abstract, missing_regex="^state_proj/.*")
    assert isinstance(merged["state_proj"]["kernel"], jax.ShapeDtypeStruct)
    np.testing.assert_array_equal(merged["action_out_proj"]["kernel"], pretrained["action_out_proj"]["kernel"])


# ----------------------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------------------


def test_noop_loader(reference):
    assert weights.NoOpWeightLoader().load(reference) is reference


@pytest.mark.parametrize("value_suffix", [False, True])
def test_checkpoint_loader_reads_openpi_params(tmp_path, reference, pretrained, value_suffix):
    tree = jax.tree.map(lambda x: {"value": x}, pretrained) if value_suffix else pretrained
    ckpt.save_params(tmp_path / "pi0" / "params", tree)
    loaded = weights.CheckpointWeightLoader(str(tmp_path / "pi0" / "params")).load(reference)
    _assert_equal(loaded, pretrained)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(loaded))


def test_checkpoint_loader_missing_regex_and_bf16_checkpoint(tmp_path, reference, pretrained):
    """A bf16 checkpoint (serving export) without the action heads: heads keep their init, the rest is cast to f32."""
    heads = {"state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out"}
    exported = {k: jax.tree.map(lambda x: x.astype(jnp.bfloat16), v) for k, v in pretrained.items() if k not in heads}
    ckpt.save_params(tmp_path / "params", exported)

    with pytest.raises(weights.WeightLoadError, match="state_proj/kernel"):
        weights.CheckpointWeightLoader(str(tmp_path / "params")).load(reference)

    loader = weights.CheckpointWeightLoader(str(tmp_path / "params"), missing_regex="^(?!PaliGemma/).*")
    loaded = loader.load(reference)
    for k in heads:
        _assert_equal(loaded[k], reference[k])
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(loaded["PaliGemma"]))
    expected = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32), pretrained["PaliGemma"])
    _assert_equal(loaded["PaliGemma"], expected)


def test_checkpoint_loader_missing_path(tmp_path, reference):
    with pytest.raises(FileNotFoundError) as info:
        weights.CheckpointWeightLoader(str(tmp_path / "nowhere" / "params")).load(reference)
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "params") in msg
    assert "gs://openpi-assets/checkpoints/pi0_base/params" in msg
    with pytest.raises(FileNotFoundError, match="remote path.*nothing is downloaded"):
        weights.CheckpointWeightLoader("gs://openpi-assets/checkpoints/pi0_base/params").load(reference)


def _write_paligemma_npz(path, pretrained, *, extra=None, mutate=None):
    """big_vision layout: flat '/'-joined keys under 'params/', no action-expert ('_1') weights."""
    flat = _flat(pretrained["PaliGemma"])
    expert = re.compile(r"(^|/)(\w+_1)(/|$)")
    flat = {k: v for k, v in flat.items() if not (k.startswith("llm/") and expert.search(k))}
    if mutate:
        flat = mutate(flat)
    arrays = {f"params/{k}": v for k, v in flat.items()}
    arrays.update(extra or {})
    np.savez(path, **arrays)
    return flat


def test_paligemma_loader(tmp_path, reference, pretrained):
    path = tmp_path / "pt_224.npz"
    flat = _write_paligemma_npz(path, pretrained, extra={"params/img/extra_head/kernel": np.ones(3, np.float32)})
    assert any("q_einsum_1" in k for k in _flat(reference["PaliGemma"]))
    assert not any("q_einsum_1" in k for k in flat)
    loaded = weights.PaliGemmaWeightLoader(str(path)).load(reference)

    flat_loaded, flat_ref = _flat(loaded), _flat(reference)
    assert set(flat_loaded) == set(flat_ref)  # extra key dropped, nothing missing
    for k, v in flat_loaded.items():
        sub = k.removeprefix("PaliGemma/")
        expected = flat[sub] if k.startswith("PaliGemma/") and sub in flat else flat_ref[k]
        np.testing.assert_array_equal(np.asarray(v), np.asarray(expected), err_msg=k)
    assert np.array_equal(loaded["state_proj"]["kernel"], reference["state_proj"]["kernel"])


def test_paligemma_loader_shape_mismatch_and_missing_file(tmp_path, reference, pretrained):
    path = tmp_path / "pt_224.npz"

    def bigger_vocab(flat):
        key = "llm/embedder/input_embedding"
        flat[key] = np.zeros((flat[key].shape[0] + 1, flat[key].shape[1]), np.float32)
        return flat

    _write_paligemma_npz(path, pretrained, mutate=bigger_vocab)
    with pytest.raises(weights.WeightLoadError, match=r"PaliGemma/llm/embedder/input_embedding: expected shape"):
        weights.PaliGemmaWeightLoader(str(path)).load(reference)

    with pytest.raises(FileNotFoundError) as info:
        weights.PaliGemmaWeightLoader(str(tmp_path / "missing.npz")).load(reference)
    assert str(tmp_path / "missing.npz") in str(info.value)
    assert "gs://vertex-model-garden-paligemma-us/paligemma/pt_224.npz" in str(info.value)
