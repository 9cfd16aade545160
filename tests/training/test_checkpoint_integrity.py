"""Checkpoints: damaged steps are detected, skipped and set aside; tree mismatches are errors (real orbax)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from pi0_eqm.training import checkpoints as ckpt
from tests.training._checkpoint_common import _assert_trees_equal
from tests.training._checkpoint_common import _entries
from tests.training._checkpoint_common import _logs_warning
from tests.training._checkpoint_common import _open
from tests.training._checkpoint_common import _small_state
from tests.training._checkpoint_common import _trained_state


def _halve(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _data_files(step_dir: Path) -> list[Path]:
    return [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]


DAMAGE = {
    "no_commit_marker": lambda d: (d / "commit_success.txt").unlink(),
    "missing_train_state": lambda d: __import__("shutil").rmtree(d / "train_state"),
    "missing_params": lambda d: __import__("shutil").rmtree(d / "params"),
    "truncated_step_metadata": lambda d: _halve(d / "_CHECKPOINT_METADATA"),
    "truncated_item_metadata": lambda d: _halve(d / "params" / "_METADATA"),
    "truncated_manifest": lambda d: _halve(d / "params" / "manifest.ocdbt"),
    "empty_data_files": lambda d: [p.write_bytes(b"") for p in _data_files(d)],
    "truncated_data_files": lambda d: [_halve(p) for p in _data_files(d)],
    "deleted_data_files": lambda d: [p.unlink() for p in _data_files(d)],
    "garbled_data_files": lambda d: [p.write_bytes(b"\0" * 64 + p.read_bytes()[64:]) for p in _data_files(d)],
    "truncated_data_state": lambda d: _halve(d / "data_state" / "data_state.json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_step_falls_back_to_previous(tmp_path, damage, caplog):
    manager, _ = _open(tmp_path, async_save=False)
    states = {s: _small_state(s) for s in (1, 2, 3)}
    for s, state in states.items():
        ckpt.save_state(manager, state, ema=False, data_state={"pos": s * 10})
    run = tmp_path / "run"
    DAMAGE[damage](run / "3")

    with _logs_warning(caplog, "step 3 .* incomplete or unreadable"):
        restored, data_state, step = ckpt.restore_state(manager, jax.eval_shape(lambda: states[1]))
    assert (step, data_state) == (2, {"pos": 20})
    _assert_trees_equal(restored, states[2])

    # The bad step is kept for inspection under another name, and training can save step 3 again.
    names = _entries(run)
    assert "3" not in names and any(n.startswith("3.corrupt-") for n in names)
    assert sorted(manager.all_steps()) == [1, 2]
    ckpt.save_state(manager, states[3], ema=False)
    assert ckpt.restore_state(manager, states[1])[2] == 3


def test_explicit_step_does_not_fall_back(tmp_path):
    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        ckpt.save_state(manager, _small_state(s), ema=False)
    (tmp_path / "run" / "2" / "commit_success.txt").unlink()
    with pytest.raises(ckpt.CheckpointRestoreError, match="(?s)step 2 .*commit marker"):
        ckpt.restore_state(manager, _small_state(0), step=2)
    assert ckpt.restore_state(manager, _small_state(0), step=1)[2] == 1
    with pytest.raises(FileNotFoundError, match="available steps"):
        ckpt.restore_state(manager, _small_state(0), step=7)
    assert "2" in _entries(tmp_path / "run")  # nothing renamed


def test_no_restorable_step(tmp_path, caplog):
    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        ckpt.save_state(manager, _small_state(s), ema=False)
        (tmp_path / "run" / str(s) / "commit_success.txt").unlink()
    with _logs_warning(caplog, ""), pytest.raises(ckpt.CheckpointRestoreError, match="no checkpoint step"):
        ckpt.restore_state(manager, _small_state(0))


def test_tree_mismatch_is_an_error_not_a_fallback(tmp_path):
    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        ckpt.save_state(manager, _small_state(s), ema=False)
    other = _trained_state({"w": jnp.zeros((3, 5)), "b": {"c": jnp.ones(5)}}, ema=False, step=0)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"params/w: shape \(3, 4\) in the checkpoint, \(3, 5\)"):
        ckpt.restore_state(manager, other)
    with pytest.raises(ckpt.CheckpointMismatchError, match="different EMA setting"):
        ckpt.restore_state(manager, _small_state(0, ema=True))
    assert sorted(_entries(tmp_path / "run")) == ["1", "2"]
