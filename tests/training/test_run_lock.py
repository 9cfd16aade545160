"""The run-directory lock: a second trainer is refused while the first lives; stale locks are taken over."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

from pi0_eqm.training import checkpoints as ckpt
from pi0_eqm.training.run_lock import LOCK_FILE
from pi0_eqm.training.run_lock import RunLock
from pi0_eqm.training.run_lock import RunLockedError
from pi0_eqm.training.run_lock import process_start_time
from tests.training._checkpoint_common import _logs_warning
from tests.training._checkpoint_common import _small_state

REPO = Path(__file__).resolve().parents[2]

_HOLDER = """
import sys, time
from pi0_eqm.training.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _holder(run: Path) -> subprocess.Popen:
    """Another process that takes the lock of ``run`` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _saved_run(tmp_path) -> Path:
    run = tmp_path / "run"
    manager, _ = ckpt.initialize_checkpoint_dir(run, async_save=False, max_to_keep=None)
    ckpt.save_state(manager, _small_state(1), ema=False)
    ckpt.release_run_dir(manager)
    assert not (run / LOCK_FILE).exists()
    return run


def test_second_trainer_is_refused_and_touches_nothing(tmp_path, caplog):
    run = _saved_run(tmp_path)
    (run / "2.orbax-checkpoint-tmp").mkdir()  # could be the live trainer's in-flight save
    proc = _holder(run)
    try:
        for kw in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(RunLockedError, match=rf"in use by another trainer: process {proc.pid} on host"):
                ckpt.initialize_checkpoint_dir(run, **kw)
        assert (run / "2.orbax-checkpoint-tmp").is_dir() and (run / "1" / "commit_success.txt").is_file()
    finally:
        proc.kill()
        proc.wait()
    # The holder is dead: its lock is stale, taken over with a warning, and its tmp leftovers are removed.
    with _logs_warning(caplog, rf"taking over the stale lock .*process {proc.pid} is no longer running"):
        manager, resuming = ckpt.initialize_checkpoint_dir(run, resume=True)
    assert resuming and not (run / "2.orbax-checkpoint-tmp").exists()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    ckpt.release_run_dir(manager)


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    run = _saved_run(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a PID that no longer runs
    (run / LOCK_FILE).write_text(json.dumps({"pid": proc.pid, "host": RunLock(run).record["host"], "start": "1"}))
    with _logs_warning(caplog, rf"taking over the stale lock .*process {proc.pid} is no longer running"):
        manager, _ = ckpt.initialize_checkpoint_dir(run, resume=True)
    ckpt.release_run_dir(manager)


def test_reused_pid_is_stale_and_other_hosts_are_respected(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    parent = os.getppid()  # alive, but started at another time than the lock says
    host = RunLock(run).record["host"]
    (run / LOCK_FILE).write_text(json.dumps({"pid": parent, "host": host, "start": "0"}))
    assert process_start_time(parent) not in (None, "0")
    lock = RunLock(run)
    lock.acquire()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (run / LOCK_FILE).exists()

    (run / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "other-node-17", "start": None}))
    with pytest.raises(RunLockedError, match="other-node-17.*delete the lock file"):
        RunLock(run).acquire()
    assert json.loads((run / LOCK_FILE).read_text())["host"] == "other-node-17"
