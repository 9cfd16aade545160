"""The training loop end to end on CPU: train → kill → resume equals an uninterrupted run; SIGTERM saves; NaN stops."""

import dataclasses
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pi0_eqm.training import loop
from pi0_eqm.training import sharding
from pi0_eqm.training.config import get_config
from pi0_eqm.training.config import with_decoder_kind
from pi0_eqm.training.optimizer import ConstantSchedule

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, name="debug_eqm", **kw):
    base = get_config(name)
    model = dataclasses.replace(base.model, image_resolution=(16, 16), action_horizon=4)
    fields = dict(model=model, checkpoint_base_dir=str(tmp_path), exp_name="run", num_train_steps=8, save_interval=4,
                  async_checkpoint=False)
    return dataclasses.replace(base, **{**fields, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["debug_eqm", "debug"])
def test_resume_reproduces_uninterrupted_run(tmp_path, name):
    full = loop.train(_cfg(tmp_path / "a", name), progress=False)
    losses_full = [h["loss"] for h in full["history"]]
    assert len(losses_full) == 8

    part = loop.train(_cfg(tmp_path / "b", name), progress=False, stop_after=3)  # "killed" after step 3
    assert part["last_step"] == 3
    resumed = loop.train(_cfg(tmp_path / "b", name, resume=True), progress=False)
    assert resumed["start_step"] == 3
    losses_resumed = [h["loss"] for h in part["history"]] + [h["loss"] for h in resumed["history"]]
    np.testing.assert_allclose(losses_resumed, losses_full, rtol=1e-6)
    # Final params equal too (params, optimizer, EMA, RNG and data order were all restored).
    for a, b in zip(jax.tree.leaves(full["state"].params), jax.tree.leaves(resumed["state"].params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    steps = sorted(int(p.name) for p in (tmp_path / "b" / name / "run").iterdir() if p.name.isdigit())
    assert steps[-1] == 8
    lines = (tmp_path / "b" / name / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 9))
    # The three runs share one step structure, so they shared one compiled train step.
    cfg = _cfg(tmp_path / "a", name)
    step_fn = loop._STEP_FNS[loop.step_key(cfg, sharding.make_mesh(cfg.fsdp_devices))]
    assert step_fn._cache_size() == 1

    # A resume may lengthen the run; a config that trains differently is refused before anything runs, by field.
    other = "flow" if name == "debug_eqm" else "eqm"
    changed = dataclasses.replace(with_decoder_kind(_cfg(tmp_path / "b", name, resume=True, batch_size=4, seed=7),
                                                    other), num_train_steps=10)
    changed = dataclasses.replace(changed, model=dataclasses.replace(changed.model, action_horizon=5))
    with pytest.raises(ValueError, match="differs from the one step 8") as err:
        loop.train(changed, progress=False)
    fields = [line.split(":")[0].strip() for line in str(err.value).splitlines()[1:-1]]
    assert {"batch_size", "seed", "model.action_horizon", "model.decoder.kind"} <= set(fields), fields
    assert not any(f.startswith(("num_train_steps", "resume")) for f in fields), fields
    longer = loop.train(_cfg(tmp_path / "b", name, resume=True, num_train_steps=10, save_interval=2), progress=False)
    assert longer["start_step"] == 8 and longer["last_step"] == 10


def test_step_key_separates_what_changes_the_step():
    base = get_config("debug_eqm")
    mesh = sharding.make_mesh(1)
    same = dataclasses.replace(base, seed=7, exp_name="other", num_train_steps=3, checkpoint_base_dir="/x")
    assert loop.step_key(same, mesh) == loop.step_key(base, mesh)
    for changed in (dataclasses.replace(base, ema_decay=None), dataclasses.replace(base, augment_images=True),
                    dataclasses.replace(base, optimizer=dataclasses.replace(base.optimizer, weight_decay=0.5)),
                    dataclasses.replace(base, model=dataclasses.replace(base.model, action_horizon=3))):
        assert loop.step_key(changed, mesh) != loop.step_key(base, mesh)


def test_existing_dir_needs_resume_or_overwrite(tmp_path):
    loop.train(_cfg(tmp_path), progress=False, stop_after=4)
    with pytest.raises(FileExistsError, match="--resume"):
        loop.train(_cfg(tmp_path), progress=False)
    out = loop.train(_cfg(tmp_path, overwrite=True), progress=False, stop_after=1)
    assert out["start_step"] == 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, lr_schedule=ConstantSchedule(1e9), num_train_steps=40, save_interval=1)
    cfg = dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, clip_gradient_norm=1e30))
    with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint"):
        loop.train(cfg, progress=False)
    run = tmp_path / "debug_eqm" / "run"
    steps = sorted(int(p.name) for p in run.iterdir() if p.name.isdigit())
    assert steps, "a good checkpoint should exist"
    from pi0_eqm.training.checkpoints import restore_params

    params = restore_params(run / str(steps[-1]) / "params")
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_sigterm_saves_a_checkpoint(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    args = [sys.executable, str(REPO / "scripts" / "train.py"), "debug", "--exp-name=sig",
            f"--checkpoint-base-dir={tmp_path}", "--num-train-steps=100000", "--save-interval=100000",
            "--model.image-resolution", "16", "16", "--model.action-horizon=4"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "debug" / "sig" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    steps = sorted(int(p.name) for p in (tmp_path / "debug" / "sig").iterdir() if p.name.isdigit())
    assert len(steps) == 1 and steps[0] >= 3, (steps, out)
    assert "resume with --resume" in out
