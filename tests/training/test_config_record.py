"""Every checkpoint records its train config; serving resolves run dirs and refuses a mismatched --config."""

import dataclasses
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.policies.policy_config import resolve_checkpoint
from pi0_eqm.training import loop
from pi0_eqm.training.checkpoint_dir import latest_step_dir
from pi0_eqm.training.config import cli
from pi0_eqm.training.config import configs
from pi0_eqm.training.config import get_config
from pi0_eqm.training.config_record import config_differences
from pi0_eqm.training.config_record import config_from_record
from pi0_eqm.training.config_record import config_to_record
from pi0_eqm.training.config_record import read_config
from pi0_eqm.training.config_record import record_path
from pi0_eqm.training.export import export_checkpoint
from pi0_eqm.training.weights import NoOpWeightLoader

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(configs()))
def test_every_registered_config_survives_the_json_record(name):
    cfg = get_config(name)
    back = config_from_record(json.loads(json.dumps(config_to_record(cfg))))
    assert back == dataclasses.replace(cfg, weight_loader=NoOpWeightLoader())
    assert config_differences(cfg, back) == []


def test_differences_name_the_decoder_kind_and_shapes():
    diffs = config_differences(get_config("pi0_metaworld"), get_config("pi0_eqm_metaworld"))
    assert diffs == ["model.decoder.kind: 'flow' in --config, 'eqm' in the checkpoint"]
    diffs = " ".join(config_differences(get_config("debug_libero"), get_config("pi0_eqm_libero_cpu")))
    assert "model.action_horizon: 8 in --config, 16 in the checkpoint" in diffs
    # evaluation-time solver settings and the data path do not make a config a different one
    cfg = get_config("pi0_eqm_metaworld")
    solver = dataclasses.replace(cfg.model.decoder.solver, max_iters=50)
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, decoder=dataclasses.replace(
        cfg.model.decoder, solver=solver)), data=dataclasses.replace(cfg.data, path="/elsewhere"))
    assert config_differences(cfg, other) == []


def test_a_record_naming_a_class_outside_the_package_is_refused():
    record = config_to_record(get_config("debug"))
    record["config"]["model"]["__class__"] = "os.system"
    with pytest.raises(ValueError, match="outside pi0_eqm"):
        config_from_record(record)


def test_decoder_kind_is_selectable_from_the_cli_for_every_config():
    for name in ("debug_libero", "pi0_eqm_metaworld", "pi0_libero"):
        flow = cli([name, "--model.decoder.kind", "flow", "--model.decoder.num-steps", "4"])
        assert flow.model.decoder.kind == "flow" and flow.model.decoder.num_steps == 4
        eqm = cli([name, "--model.decoder.kind=eqm", "--model.decoder.solver.max-iters", "7"])
        assert eqm.model.decoder.kind == "eqm" and eqm.model.decoder.solver.max_iters == 7
    with pytest.raises(ValueError, match="unknown decoder kind"):
        cli(["debug", "--model.decoder.kind", "diffusion"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Two committed steps of the tiny flow config on generated data, at the size tests/training/test_train_loop.py
    trains it (16 px, horizon 4), so the persistent compilation cache serves one of the two."""
    tmp = tmp_path_factory.mktemp("record")
    base = get_config("debug")
    model = dataclasses.replace(base.model, image_resolution=(16, 16), action_horizon=4)
    cfg = dataclasses.replace(base, model=model, num_train_steps=2, save_interval=1, max_to_keep=2,
                              checkpoint_base_dir=str(tmp / "ckpt"), assets_base_dir=str(tmp / "assets"),
                              async_checkpoint=False, exp_name="run")
    loop.train(cfg, progress=False)
    return cfg, cfg.checkpoint_dir


@pytest.mark.slow
def test_every_step_records_the_config(trained_run):
    cfg, run = trained_run
    for step in ("1", "2"):
        recorded = read_config(run / step)
        assert recorded is not None and recorded.name == "debug" and recorded.model == cfg.model


def test_run_dir_resolves_to_the_latest_committed_step(trained_run, tmp_path):
    cfg, run = trained_run
    assert latest_step_dir(run) == run / "2"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "2" / "commit_success.txt").unlink()  # a step still being written
    assert latest_step_dir(copy) == copy / "1"
    config, step_dir = resolve_checkpoint(copy)
    assert step_dir == copy / "1" and config.model == cfg.model
    with pytest.raises(FileNotFoundError, match="no committed checkpoint step"):
        latest_step_dir(tmp_path / "run" / "1" / "train_state")


def test_config_is_optional_and_a_mismatch_is_refused(trained_run):
    cfg, run = trained_run
    policy = create_trained_policy(None, run)  # flow decoder from the record
    assert policy.decoder.kind == "flow"
    with pytest.raises(ValueError, match="model.decoder.kind: 'eqm' in --config, 'flow' in the checkpoint"):
        create_trained_policy("debug_eqm", run)
    assert create_trained_policy(cfg, run).decoder.kind == "flow"


def test_old_checkpoints_without_a_record_load_with_a_config(trained_run, tmp_path):
    cfg, run = trained_run
    old = tmp_path / "old"
    shutil.copytree(run / "2", old)
    shutil.rmtree(old / "train_config")
    with pytest.raises(ValueError, match="records no train config"):
        resolve_checkpoint(old)
    assert create_trained_policy(cfg, old).decoder.kind == "flow"
    # the decoder kind cannot be checked without a record, but the shapes are
    short = dataclasses.replace(get_config("debug"), name="short")
    short = dataclasses.replace(short, model=dataclasses.replace(short.model, action_dim=16))
    with pytest.raises(ValueError, match="shape .* in the checkpoint"):
        create_trained_policy(short, old)


def test_export_carries_the_record(trained_run, tmp_path):
    cfg, run = trained_run
    out = export_checkpoint(run, tmp_path / "export")  # a run dir: its latest step
    assert record_path(out).is_file()
    assert read_config(out).model == cfg.model
    assert create_trained_policy(None, out).decoder.kind == "flow"


def test_serve_policy_refuses_a_mismatched_config_with_exit_code_2(trained_run):
    _, run = trained_run
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "serve_policy.py"), "--checkpoint", str(run),
                           "--config", "debug_eqm", "--port", "0"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "model.decoder.kind: 'eqm' in --config, 'flow' in the checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
