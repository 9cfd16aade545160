"""Checkpoint run directories: --resume/--overwrite rules, stale tmp dirs, warnings logged once (real orbax)."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from pi0_eqm.training import checkpoints as ckpt
from pi0_eqm.training.checkpoint_dir import RUN_MARKER
from pi0_eqm.training.config import cli
from pi0_eqm.training.config import get_config
from pi0_eqm.training.run_lock import LOCK_FILE
from tests.training._checkpoint_common import _logs_warning
from tests.training._checkpoint_common import _open
from tests.training._checkpoint_common import _small_state


def test_existing_dir_needs_resume_or_overwrite(tmp_path):
    manager, _ = _open(tmp_path, async_save=False)
    ckpt.save_state(manager, _small_state(1), ema=False)
    with pytest.raises(FileExistsError, match=r"steps \[1\].*--resume.*--overwrite"):
        ckpt.initialize_checkpoint_dir(tmp_path / "run")
    with pytest.raises(ValueError, match="mutually exclusive"):
        ckpt.initialize_checkpoint_dir(tmp_path / "run", resume=True, overwrite=True)

    _, resuming = ckpt.initialize_checkpoint_dir(tmp_path / "run", resume=True)
    assert resuming

    (tmp_path / "run" / "notes.txt").write_text("x")
    manager, resuming = ckpt.initialize_checkpoint_dir(tmp_path / "run", overwrite=True)
    assert not resuming and set(os.listdir(tmp_path / "run")) == {RUN_MARKER, LOCK_FILE}
    assert manager.all_steps() == []
    assert not [p for p in os.listdir(tmp_path) if p != "run"]  # no trash left behind


def test_resume_requires_a_complete_step(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*nothing to resume"):
        ckpt.initialize_checkpoint_dir(tmp_path / "missing", resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        ckpt.initialize_checkpoint_dir(tmp_path / "empty", resume=True)
    manager, resuming = ckpt.initialize_checkpoint_dir(tmp_path / "empty")  # an empty dir is a fresh start
    assert not resuming

    ckpt.save_state(manager, _small_state(1), ema=False, wait=True)
    (tmp_path / "empty" / "1" / "commit_success.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint.*step 1: no commit marker.*--overwrite"):
        ckpt.initialize_checkpoint_dir(tmp_path / "empty", resume=True)


def test_stale_tmp_dirs_are_removed_with_a_warning(tmp_path, caplog):
    manager, _ = _open(tmp_path, async_save=False)
    ckpt.save_state(manager, _small_state(1), ema=False)
    run = tmp_path / "run"
    for name in ("2.orbax-checkpoint-tmp", "3.orbax-checkpoint-tmp-1712345678"):
        (run / name / "params").mkdir(parents=True)
        (run / name / "params" / "junk").write_bytes(b"partial")
    with _logs_warning(caplog, "stale temporary checkpoint") as record:
        manager, resuming = ckpt.initialize_checkpoint_dir(run, resume=True, max_to_keep=None)
    assert len([m for m in record if "stale" in m]) == 2
    assert resuming and sorted(os.listdir(run)) == sorted(["1", RUN_MARKER, LOCK_FILE])
    ckpt.save_state(manager, _small_state(2), ema=False, wait=True)
    assert sorted(manager.all_steps()) == [1, 2]


def test_each_checkpoint_warning_is_emitted_once(tmp_path, caplog):
    """Stale tmp removal, fallback and quarantine each warn exactly once, counting the log and the warnings module."""
    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        ckpt.save_state(manager, _small_state(s), ema=False)
    run = tmp_path / "run"
    (run / "2" / "commit_success.txt").unlink()
    (run / "3.orbax-checkpoint-tmp").mkdir()
    manager.close()
    with warnings.catch_warnings(record=True) as issued, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        manager, _ = ckpt.initialize_checkpoint_dir(run, resume=True, max_to_keep=None)
        assert ckpt.restore_state(manager, _small_state(0))[2] == 1
    messages = [r.getMessage() for r in caplog.records] + [str(w.message) for w in issued]
    for text in (
        "removing stale temporary checkpoint directory",
        "checkpoint step 2 in",
        "moved unreadable checkpoint step 2",
    ):
        assert sum(text in m for m in messages) == 1, (text, messages)


def test_overwrite_refuses_dangerous_dirs(tmp_path, monkeypatch):
    (tmp_path / "x").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="refusing to --overwrite"):
        ckpt.initialize_checkpoint_dir(tmp_path, overwrite=True)
    assert (tmp_path / "x").read_text() == "keep me"


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_overwrite_deletes_only_a_marked_run_directory(tmp_path):
    """A directory the trainer did not create (no run marker) is never deleted; the refusal lists its contents."""
    base = tmp_path / "ckpt"
    victim = base / "cfg" / "precious"
    (victim / "sub").mkdir(parents=True)
    (victim / "thesis.tex").write_text("years of work")
    (victim / "sub" / "data.bin").write_bytes(b"x" * 100)
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"refusing to --overwrite.*no \.pi0_eqm_run\.json marker.*2 files.*"
                                         r"sub/, thesis\.tex"):
        ckpt.initialize_checkpoint_dir(victim, overwrite=True, base_dir=base)
    assert _tree(tmp_path) == before

    manager, _ = ckpt.initialize_checkpoint_dir(base / "cfg" / "run", base_dir=base, async_save=False)
    ckpt.save_state(manager, _small_state(1), ema=False)
    ckpt.release_run_dir(manager)
    manager, resuming = ckpt.initialize_checkpoint_dir(base / "cfg" / "run", overwrite=True, base_dir=base)
    assert not resuming and manager.all_steps() == []
    assert _tree(tmp_path) == sorted(before + ["ckpt/cfg/run", f"ckpt/cfg/run/{RUN_MARKER}",
                                               f"ckpt/cfg/run/{LOCK_FILE}"])


def test_overwrite_refuses_outside_the_base_dir_and_symlinks(tmp_path):
    base = tmp_path / "ckpt"
    outside = tmp_path / "elsewhere"
    manager, _ = ckpt.initialize_checkpoint_dir(outside, async_save=False)  # a marked run dir, but not under base
    ckpt.save_state(manager, _small_state(1), ema=False)
    ckpt.release_run_dir(manager)
    with pytest.raises(ValueError, match=r"not inside the checkpoint base dir .*It would have deleted"):
        ckpt.initialize_checkpoint_dir(outside, overwrite=True, base_dir=base)
    with pytest.raises(ValueError, match="not inside the checkpoint base dir"):
        ckpt.initialize_checkpoint_dir(base / ".." / "elsewhere", overwrite=True, base_dir=base)
    (base / "cfg").mkdir(parents=True)
    (base / "cfg" / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="symbolic link"):
        ckpt.initialize_checkpoint_dir(base / "cfg" / "link", overwrite=True, base_dir=base)
    assert (outside / "1" / "commit_success.txt").is_file()


@pytest.mark.parametrize("exp_name", ["", "/abs/dir", "a/b", "..", ".", "x/../y", " run", "a\\b"])
def test_exp_name_must_be_one_path_component(exp_name, capsys):
    with pytest.raises(ValueError, match="not a valid run name"):
        get_config("debug").__class__(name="debug", exp_name=exp_name)
    with pytest.raises(SystemExit) as exit_info:  # tyro reports the constructor's ValueError and exits 2
        cli(["debug", f"--exp-name={exp_name}"])
    assert exit_info.value.code == 2
    assert "not a valid run name" in " ".join(capsys.readouterr().err.split())


def test_max_to_keep_zero_is_a_config_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["debug", "--max-to-keep=0"])
    assert exit_info.value.code == 2 and "--max-to-keep must be >= 1" in capsys.readouterr().err


def test_a_start_that_never_committed_a_step_does_not_block_the_retry(tmp_path):
    """A run directory left by a start that failed or was stopped before its first step (marker, lock file, a log,
    a killed save's tmp dir) is reused by the identical command, with or without --resume; one with a step is not."""
    run = tmp_path / "run"
    manager, _ = ckpt.initialize_checkpoint_dir(run)
    ckpt.release_run_dir(manager)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (run / "1.orbax-checkpoint-tmp-123").mkdir()
    for resume in (False, True):
        manager, resuming = ckpt.initialize_checkpoint_dir(run, resume=resume)
        assert not resuming and manager.all_steps() == []
        assert not (run / "1.orbax-checkpoint-tmp-123").exists()
        ckpt.release_run_dir(manager)
    mine = tmp_path / "mine"  # not a run directory: still refused
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        ckpt.initialize_checkpoint_dir(mine)
