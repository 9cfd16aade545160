"""Knowledge-insulation training end to end on CPU: tiny configs, the real data pipeline, checkpoints and export."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.models.fast import FastTokenizer
from pi0_eqm.models.ki import FAST_TOKENIZER_DIR
from pi0_eqm.models.ki import KIConfig
from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.training import loop
from pi0_eqm.training.config import get_config
from pi0_eqm.training.export import export_checkpoint
from pi0_eqm.training.norm_stats import compute_for_config
from tests.policies.conftest import libero_obs
from tests.policies.conftest import make_libero_dataset


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["debug_eqm_ki", "debug_ki"])
def test_ki_trains_on_cpu_and_the_fast_loss_falls(tmp_path, name):
    cfg = dataclasses.replace(get_config(name), num_train_steps=40, save_interval=40, log_interval=5,
                              checkpoint_base_dir=str(tmp_path), async_checkpoint=False)
    loop.train(cfg, progress=False)
    recs = _records(cfg.checkpoint_dir)
    for r in recs:
        assert {"action_loss", "fast_ce", "fast_acc"} <= set(r) and np.isfinite(r["loss"])
        np.testing.assert_allclose(r["loss"], r["action_loss"] + cfg.model.ki.loss_weight * r["fast_ce"], rtol=1e-5)
    first, last = recs[0], recs[-1]
    assert last["fast_ce"] < 0.5 * first["fast_ce"], (first, last)
    assert last["fast_acc"] > first["fast_acc"]
    assert last["action_loss"] < first["action_loss"]


@pytest.fixture(scope="module")
def trained_ki_libero(tmp_path_factory):
    """Tiny LIBERO-layout π₀-EqM with KI: LeRobot dataset → norm stats + FAST fit → 4 steps → checkpoint."""
    tmp = tmp_path_factory.mktemp("ki_libero")
    ds = make_libero_dataset(tmp / "data" / "debug_libero", episodes=4, steps=16)
    base = get_config("debug_libero")
    model = dataclasses.replace(base.model, ki=KIConfig(max_fast_tokens=48, fast_vocab_size=256, skip_tokens=2))
    cfg = dataclasses.replace(base, name="debug_libero_ki", model=model,
                              data=dataclasses.replace(base.data, path=str(ds)), num_train_steps=4, save_interval=4,
                              checkpoint_base_dir=str(tmp / "ckpt"), assets_base_dir=str(tmp / "assets"),
                              async_checkpoint=False)
    return cfg


def test_missing_fast_tokenizer_is_a_clear_error(trained_ki_libero, tmp_path):
    cfg = dataclasses.replace(trained_ki_libero, assets_base_dir=str(tmp_path / "assets"),
                              checkpoint_base_dir=str(tmp_path / "ckpt"))
    # Norm stats but no FAST tokenizer (e.g. computed before ki was switched on).
    compute_for_config(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ki=None)))
    assert not (cfg.assets_dir / cfg.data.asset_id / FAST_TOKENIZER_DIR).exists()
    with pytest.raises(FileNotFoundError, match="compute_norm_stats.py"):
        loop.train(cfg, progress=False)


def test_ki_pipeline_checkpoint_export_and_policy(trained_ki_libero, tmp_path):
    cfg = trained_ki_libero
    asset_dir = compute_for_config(cfg)
    tok = FastTokenizer.load(asset_dir / FAST_TOKENIZER_DIR)
    assert (tok.action_horizon, tok.action_dim) == (cfg.model.action_horizon, 7)
    assert tok.vocab_size <= cfg.model.ki.fast_vocab_size

    result = loop.train(cfg, progress=False)
    assert all("fast_ce" in r for r in result["history"])
    step_dir = cfg.checkpoint_dir / "4"
    saved = step_dir / "assets" / cfg.data.asset_id / FAST_TOKENIZER_DIR
    loaded = FastTokenizer.load(saved)  # the tokenizer travels with the checkpoint
    chunk = np.random.default_rng(0).normal(size=(cfg.model.action_horizon, 7)) * 0.3
    assert loaded.encode(chunk) == tok.encode(chunk)

    out = export_checkpoint(step_dir, tmp_path / "exported")
    assert FastTokenizer.load(out / "assets" / cfg.data.asset_id / FAST_TOKENIZER_DIR).encode(chunk) == tok.encode(chunk)

    from pi0_eqm_experiments.analysis.ki import backbone_vs_expert

    diag = backbone_vs_expert(cfg, step_dir, n=4)
    assert diag["chunks"] == 4 and 0 <= diag["fast_valid"] <= 1 and 0 <= diag["fast_acc_teacher_forced"] <= 1
    assert diag["fast_ce"] > 0 and diag["expert_rmse"] > 0 and diag["fast_rmse_all"] > 0

    # Inference is unchanged by KI: images + prompt prefix, the expert decodes.
    policy = create_trained_policy(cfg, step_dir, settings=DecoderSettings(max_iters=5))
    actions = policy.infer(libero_obs(np.random.default_rng(1)))["actions"]
    assert actions.shape == (cfg.model.action_horizon, 7) and np.isfinite(actions).all()


def test_full_size_ki_configs_trace():
    """pi0_eqm_ki_libero / pi0_ki_libero at full size: the KI loss traces with openpi's shapes (no compute)."""
    from pi0_eqm.decoders import make_decoder
    from pi0_eqm.decoders.ki import ki_losses

    for name in ("pi0_eqm_ki_libero", "pi0_ki_libero"):
        model = get_config(name).model
        assert model.text_vocab_size == 256_000 and model.fast_layout.begin_id == 257_151
        dec = make_decoder(model)
        params = jax.eval_shape(lambda m=model: m.init(jax.random.key(0)))
        obs = model.fake_obs(2)
        f = model.ki.max_fast_tokens
        obs = obs.replace(fast_tokens=jax.ShapeDtypeStruct((2, f), np.int32),
                          fast_mask=jax.ShapeDtypeStruct((2, f), bool))
        out = jax.eval_shape(lambda p, o, d=dec, m=model: ki_losses(d, p, o, m.fake_actions(2), jax.random.key(0)),
                             params, obs)
        action_loss, loss_mask, ce, correct, mask = out
        assert action_loss.shape == (2, model.action_horizon) and loss_mask is None
        assert ce.shape == correct.shape == mask.shape == (2, f - 1)


def test_ki_flag_turns_on_knowledge_insulation_for_any_config():
    from pi0_eqm.training.config import cli

    small = cli(["pi0_eqm_metaworld", "--ki", "--model.ki.loss-weight", "0.25", "--model.ki.no-stop-gradient"])
    assert small.name == "pi0_eqm_metaworld_ki" and small.model.vocab_size == 512 + 512 + 16
    assert small.model.ki.loss_weight == 0.25 and not small.model.ki.stop_gradient
    assert small.model.text_vocab_size == 512  # prompts hash exactly as without KI
    full = cli(["pi0_libero", "--ki"])
    assert full.model.vocab_size == 257_152 and full.model.text_vocab_size == 256_000
    assert cli(["pi0_eqm_metaworld"]).model.ki is None
