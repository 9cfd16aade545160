"""Fault injection on the training loop: NaN/inf stops, torn metrics, Ctrl-C during a save, user errors, disk full.

Every test here also checks that nothing outside its run directory was deleted or changed (``guard`` fixture).
The kill tests that drive ``scripts/train.py`` in subprocesses are in ``test_faults_kill.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pi0_eqm.training import loop
from pi0_eqm.training.checkpoint_dir import RUN_MARKER
from pi0_eqm.training.checkpoint_layout import COMMIT_MARKER
from pi0_eqm.training.checkpoints import restore_params
from pi0_eqm.training.config import get_config
from pi0_eqm.training.optimizer import ConstantSchedule

REPO = Path(__file__).resolve().parents[2]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def guard(tmp_path):
    """``tmp_path/base`` is the checkpoint base dir. Every file present before the test must be there unchanged
    after it, and every new file must lie in a run directory (one holding the run marker)."""
    base = tmp_path / "base"
    for name in ("notes.txt", "data/episode_0.npz", "base_sibling/keep.bin", "base/not_a_run/keep.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode() * 10)
    before = _snapshot(tmp_path)
    yield base
    after = _snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before, "a file outside the run directories was changed or deleted"
    for name in set(after) - set(before):
        assert any((d / RUN_MARKER).is_file() for d in (tmp_path / name).parents), f"{name} is outside a run dir"


def _cfg(base: Path, **kw):
    config = get_config("debug_eqm")
    model = dataclasses.replace(config.model, image_resolution=(16, 16), action_horizon=4)
    fields = dict(model=model, checkpoint_base_dir=str(base), exp_name="run", num_train_steps=8, save_interval=4,
                  async_checkpoint=False)
    return dataclasses.replace(config, **{**fields, **kw})


def _committed(run: Path) -> list[int]:
    return sorted(int(p.name) for p in run.iterdir() if p.name.isdigit() and (p / COMMIT_MARKER).is_file())


def test_nan_stop_names_only_a_committed_step(guard):
    cfg = _cfg(guard, lr_schedule=ConstantSchedule(1e9), num_train_steps=40, save_interval=1, async_checkpoint=True)
    cfg = dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, clip_gradient_norm=1e30))
    with pytest.raises(loop.NonFiniteLossError) as info:
        loop.train(cfg, progress=False)
    message = str(info.value)
    run = guard / "debug_eqm" / "run"
    bad = int(re.search(r"at step (\d+) \(as numbered in metrics\.jsonl\)", message).group(1))
    good = int(re.search(r"last good checkpoint in .* is step (\d+)", message).group(1))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, bad))  # the NaN step is the one after the last record
    assert good == bad - 1 == _committed(run)[-1]  # the pending async save was awaited and committed
    params = restore_params(run / str(good) / "params")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_non_finite_params_stop_even_with_a_finite_loss(guard):
    cfg = _cfg(guard, lr_schedule=ConstantSchedule(1e39))  # float32 inf: the first update makes the params inf/NaN
    with pytest.raises(loop.NonFiniteLossError, match=r"params hold NaN or infinite values at step 1 .*No checkpoint"):
        loop.train(cfg, progress=False)
    assert _committed(guard / "debug_eqm" / "run") == []


def test_metrics_read_like_an_uninterrupted_run_after_resume(guard):
    run = guard / "debug_eqm" / "run"
    full = loop.train(_cfg(guard / "full"), progress=False)
    loop.train(_cfg(guard, max_to_keep=3), progress=False, stop_after=6)  # saves steps 4 and 6
    # A kill before step 6 committed: only step 4 is on disk, metrics.jsonl has records up to 6 and a torn line.
    import shutil

    shutil.rmtree(run / "6")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"loss": 1.0, "st')
    resumed = loop.train(_cfg(guard, resume=True), progress=False)
    assert resumed["start_step"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    np.testing.assert_allclose([r["loss"] for r in records], [h["loss"] for h in full["history"]], rtol=1e-6)


def test_second_ctrl_c_during_a_save_waits_and_a_third_aborts():
    saving = [False]
    with loop._StopFlag(saving=lambda: saving[0]) as stop:
        stop.arm()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.signal == signal.SIGINT  # first: stop after this step and save
        saving[0] = True
        os.kill(os.getpid(), signal.SIGINT)  # second, during the save: waits
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # third: aborts
            time.sleep(0.05)
    with loop._StopFlag(saving=lambda: False) as stop:
        stop.arm()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):  # second, no save in progress: aborts at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)


def _train_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


_TINY = ["--model.image-resolution", "16", "16", "--model.action-horizon=4"]


@pytest.mark.slow
@pytest.mark.parametrize("args, env, match", [
    (["--exp-name="], {}, "not a valid run name"),
    (["--exp-name=/tmp"], {}, "not a valid run name"),
    (["--max-to-keep=0"], {}, "--max-to-keep must be >= 1"),
    (["--fsdp-devices=3"], {}, "num_fsdp_devices=3 does not divide the device count 1"),
    ([], {"PI0_NUM_PROCESSES": "2", "PI0_PROCESS_ID": "0"}, "PI0_NUM_PROCESSES=2 > 1 needs PI0_COORDINATOR"),
])
def test_user_errors_are_one_paragraph_and_exit_2(guard, args, env, match):
    out = _train_cli("debug_eqm", f"--checkpoint-base-dir={guard}", *_TINY, "--num-train-steps=1", *args, env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and match in " ".join(out.stderr.split()), out.stderr[-3000:]


@pytest.mark.slow
def test_truncated_norm_stats_is_one_paragraph_and_exit_2(guard, tmp_path_factory):
    assets = tmp_path_factory.mktemp("assets")
    stats = assets / "debug_libero" / "physical-intelligence" / "libero" / "norm_stats.json"
    stats.parent.mkdir(parents=True)
    stats.write_text('{"norm_stats": {"state": {"mean": [0.1, ')
    out = _train_cli("debug_libero", f"--checkpoint-base-dir={guard}", f"--assets-base-dir={assets}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "norm_stats.json is not valid JSON" in out.stderr and "truncated" in out.stderr, out.stderr[-3000:]


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_disk_full_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    base = tmp_path / "small"
    if not _tmpfs(base, "30m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = _train_cli("debug_eqm", "--exp-name=full", f"--checkpoint-base-dir={base}", *_TINY,
                         "--num-train-steps=1000", "--save-interval=1", "--max-to-keep=1000", "--log-interval=1")
        run = base / "debug_eqm" / "full"
        assert out.returncode == 2, out.stderr[-3000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
        assert "Traceback" not in out.stderr and "No space left on device" in out.stderr, out.stderr[-3000:]
        assert len(errors) == 1 and errors[0].startswith("error: saving checkpoint"), out.stderr[-3000:]
        committed = _committed(run)
        assert committed, "the steps saved before the disk filled up must be intact"
        params = restore_params(run / str(committed[-1]) / "params")
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    finally:
        subprocess.run(["umount", "-l", str(base)], check=False)


@pytest.mark.slow
def test_sigterm_during_start_up_ends_at_once_and_the_same_command_runs_again(guard):
    """Before the first step of a run completes no step is owed: SIGTERM during start-up or the first compile ends
    the process at once (not after the step), and the run directory it leaves does not block the same command."""
    args = ["debug_eqm", f"--checkpoint-base-dir={guard}", "--exp-name=early", *_TINY, "--num-train-steps=1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = guard / "debug_eqm" / "early"
    deadline = time.monotonic() + 120
    while not (run / RUN_MARKER).is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.005)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == -signal.SIGTERM and took < 5, (proc.returncode, took)
    assert not [p for p in run.iterdir() if p.name.isdigit()]
    out = _train_cli(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "1" / "params").is_dir()
