"""LoRA / frozen-parameter training on the tiny model through the real loop and real orbax checkpoints."""

import dataclasses
from pathlib import Path
import subprocess
import sys

import flax.traverse_util
import jax
import numpy as np
import pytest

from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.training import loop
from pi0_eqm.training import weights
from pi0_eqm.training.config import get_config
from pi0_eqm.training.config import with_decoder_kind
from pi0_eqm.training.freeze import FreezeConfig
from pi0_eqm.training.freeze import ParamPartition
from pi0_eqm.training.norm_stats import compute_for_config
from pi0_eqm.training.params_io import restore_params
from pi0_eqm.training.params_io import save_params
from pi0_eqm.training.train_step import init_train_state
from tests.policies.conftest import libero_obs
from tests.policies.conftest import make_libero_dataset


def _cfg(tmp_path, name, **kw):
    base = get_config(name)
    model = dataclasses.replace(base.model, image_resolution=(16, 16), action_horizon=4)
    fields = dict(model=model, checkpoint_base_dir=str(tmp_path), exp_name="run", num_train_steps=4, save_interval=2,
                  async_checkpoint=False)
    return dataclasses.replace(base, **{**fields, **kw})


def _flat(tree):
    return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/").items()}


def _initial_params(cfg):
    init_rng = jax.random.split(jax.random.key(cfg.seed))[1]
    part = ParamPartition.of(jax.eval_shape(cfg.model.init, init_rng), cfg.model, cfg.freeze)
    return part, _flat(part.cast_frozen(cfg.model.init(init_rng)))


@pytest.fixture(scope="module")
def lora_libero_run(tmp_path_factory):
    """Flow LoRA on the LIBERO pipeline, trained once for this module: dataset → norm stats → 2 steps → a run
    directory (the EqM LoRA model trains on toy data below, in the compiled step the resume test shares)."""
    tmp = tmp_path_factory.mktemp("lora_libero")
    base = with_decoder_kind(get_config("debug_libero"), "flow")
    ds = make_libero_dataset(tmp / "data")
    model = dataclasses.replace(base.model, paligemma_variant="gemma_tiny_lora",
                                action_expert_variant="gemma_tiny_expert_lora")
    cfg = dataclasses.replace(base, model=model, data=dataclasses.replace(base.data, path=str(ds)), num_train_steps=2,
                              save_interval=2, checkpoint_base_dir=str(tmp / "ckpt"),
                              assets_base_dir=str(tmp / "assets"), async_checkpoint=False)
    compute_for_config(cfg)
    part, before = _initial_params(cfg)
    return cfg, part, before, loop.train(cfg, progress=False)


def _assert_only_lora_trained(part, before, out):
    assert all(np.isfinite(h["loss"]) for h in out["history"])
    after = _flat(out["state"].params)
    assert set(after) == set(before)
    frozen = {p for p in after if p in part.frozen}
    assert len(frozen) == 17
    for p in after:
        if p in part.frozen:
            np.testing.assert_array_equal(after[p], before[p], err_msg=p)  # bit-identical
        elif "lora" in p:
            assert not np.array_equal(after[p], before[p]), f"{p} did not train"
    # AdamW holds mu and nu for the trainable params only.
    opt_sizes = sum(x.size for x in jax.tree.leaves(out["state"].opt_state) if x.ndim > 0)
    n_train, n_frozen = part.count(out["state"].params)
    assert opt_sizes == 2 * n_train and n_frozen > 0


@pytest.mark.slow
def test_only_lora_params_change_and_optimizer_holds_only_them_flow(lora_libero_run):
    """The flow LoRA model, trained through the LIBERO pipeline (the run the serving test below uses)."""
    cfg, part, before, out = lora_libero_run
    assert cfg.model.decoder.kind == "flow"
    _assert_only_lora_trained(part, before, out)


@pytest.mark.slow
def test_only_lora_params_change_and_optimizer_holds_only_them_eqm(tmp_path):
    cfg = _cfg(tmp_path, "debug_eqm_lora")
    part, before = _initial_params(cfg)
    _assert_only_lora_trained(part, before, loop.train(cfg, progress=False))


def test_lora_run_resumes_to_the_uninterrupted_result(tmp_path):
    full = loop.train(_cfg(tmp_path / "a", "debug_eqm_lora"), progress=False)
    loop.train(_cfg(tmp_path / "b", "debug_eqm_lora"), progress=False, stop_after=2)
    resumed = loop.train(_cfg(tmp_path / "b", "debug_eqm_lora", resume=True), progress=False)
    assert resumed["start_step"] == 2
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], [h["loss"] for h in full["history"][2:]],
                               rtol=1e-6)


@pytest.mark.slow
def test_freeze_backbone_trains_only_the_expert(tmp_path):
    cfg = _cfg(tmp_path, "debug_eqm", freeze=FreezeConfig(backbone=True), ema_decay=None)
    part, before = _initial_params(cfg)
    after = _flat(loop.train(cfg, progress=False)["state"].params)
    changed = {p for p in after if not np.array_equal(after[p], before[p])}
    expert = lambda p: p.startswith("PaliGemma/llm/") and "_1" in p
    assert changed and all(not p.startswith("PaliGemma/") or expert(p) for p in changed)
    assert part.frozen == {p for p in after if p.startswith("PaliGemma/img/")
                           or (p.startswith("PaliGemma/llm/") and not expert(p))}


def test_base_checkpoint_loads_into_lora_model_with_only_lora_missing(tmp_path):
    lora_cfg = get_config("debug_lora").model
    base_cfg = get_config("debug").model  # the same model without LoRA
    base = base_cfg.init(jax.random.key(3))
    save_params(tmp_path / "base" / "params", base)
    part = ParamPartition.of(jax.eval_shape(lora_cfg.init, jax.random.key(0)), lora_cfg, FreezeConfig())
    reference = part.cast_frozen(lora_cfg.init(jax.random.key(0)))
    loaded = _flat(weights.CheckpointWeightLoader(str(tmp_path / "base" / "params")).load(reference))
    base_flat, ref_flat = _flat(base), _flat(reference)
    for p, v in loaded.items():
        np.testing.assert_array_equal(v, ref_flat[p] if "lora" in p else base_flat[p], err_msg=p)
    # A checkpoint missing a non-LoRA param is refused, naming it.
    del base["state_proj"]
    save_params(tmp_path / "bad" / "params", base)
    with pytest.raises(weights.WeightLoadError, match="state_proj"):
        weights.CheckpointWeightLoader(str(tmp_path / "bad" / "params")).load(reference)


def test_frozen_params_are_stored_in_the_compute_dtype():
    cfg = get_config("pi0_libero_low_mem_finetune")
    tx = cfg.optimizer.create(cfg.lr_schedule.create())
    part = ParamPartition.of(jax.eval_shape(cfg.model.init, jax.random.key(0)), cfg.model, cfg.freeze)
    state = jax.eval_shape(lambda: init_train_state(cfg.model.init(jax.random.key(0)), tx, jax.random.key(1),
                                                    ema=False, partition=part))
    flat = flax.traverse_util.flatten_dict(state.params, sep="/")
    assert {str(v.dtype) for p, v in flat.items() if p in part.frozen} == {"bfloat16"}
    assert {str(v.dtype) for p, v in flat.items() if p not in part.frozen} == {"float32"}
    assert cfg.ema_decay is None and state.ema_params is None


def test_cli_freezing_everything_is_a_clear_error(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(repo / "scripts" / "train.py"), "debug_eqm", "--exp-name=x",
                          f"--checkpoint-base-dir={tmp_path}", "--freeze.regex", ".*"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "nothing would train" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "debug_eqm").exists()  # refused before the run directory was created


@pytest.mark.slow
def test_lora_libero_checkpoint_serves_through_the_policy(lora_libero_run):
    """Flow LoRA on the LIBERO pipeline: dataset → norm stats → train → the run directory → Policy.infer."""
    cfg = lora_libero_run[0]
    saved = _flat(restore_params(cfg.checkpoint_dir / "2" / "params"))
    assert sum("lora" in p for p in saved) == 20
    policy = create_trained_policy(cfg, cfg.checkpoint_dir)
    out = policy.infer(libero_obs(np.random.default_rng(0), size=48))
    assert out["actions"].shape == (cfg.model.action_horizon, 7) and np.isfinite(out["actions"]).all()
