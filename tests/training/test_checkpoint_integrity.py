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
from tests.training._checkpoint_common import _norm_stats
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


def _flip_bytes(step_dir: Path, item: str = "params") -> None:
    """Overwrite 8 bytes in the middle of the item's largest data file (its length and framing unchanged)."""
    files = [p for p in (step_dir / item).rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0x5A for b in data[mid:mid + 8])
    largest.write_bytes(bytes(data))


def _nan_state(step: int):
    state = _small_state(step)
    return state.replace(params={**state.params, "big": state.params["big"].at[3, 4].set(jnp.inf)})


@pytest.mark.parametrize("damage", ["flipped_params_bytes", "flipped_train_state_bytes", "non_finite_params"])
def test_silent_corruption_is_detected_and_falls_back(tmp_path, damage, caplog):
    """Bytes changed inside a data file (the files still parse) and saved inf params are caught at restore."""
    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        ckpt.save_state(manager, _small_state(s), ema=False)
    if damage == "non_finite_params":
        ckpt.save_state(manager, _nan_state(3), ema=False)
    else:
        ckpt.save_state(manager, _small_state(3), ema=False)
        _flip_bytes(tmp_path / "run" / "3", "params" if damage == "flipped_params_bytes" else "train_state")
    assert ckpt.check_checkpoint_step(tmp_path / "run" / "3") == []  # structurally the step looks fine
    expected = "NaN or infinite" if damage == "non_finite_params" else "checksum mismatch|restore failed"
    with _logs_warning(caplog, f"step 3 .*({expected})") as warned:
        restored, _, step = ckpt.restore_state(manager, jax.eval_shape(lambda: _small_state(1)))
    assert step == 2
    assert not any("bound method" in m or "TensorStore({" in m for m in warned), warned  # no spec dump
    _assert_trees_equal(restored, _small_state(2))
    assert any(n.startswith("3.corrupt-") for n in _entries(tmp_path / "run"))


def test_checksums_are_independent_of_sharding_and_catch_single_bit_flips():
    from pi0_eqm.training.checkpoint_checksums import array_record
    from pi0_eqm.training.checkpoint_checksums import verify

    x = jnp.arange(4096, dtype=jnp.float32).reshape(64, 64) / 7
    record = array_record({"params": {"x": x}})
    assert verify({"params": {"x": x}}, record) == []
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    for bit in (0, 13, 31):
        bad = jax.lax.bitcast_convert_type(bits.at[17, 5].set(bits[17, 5] ^ jnp.uint32(1 << bit)), jnp.float32)
        assert verify({"params": {"x": bad}}, record) == ["params/x: checksum mismatch (the data read back differs "
                                                          "from the data saved)"]
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    assert verify({"params": {"x": swapped}}, record)
    if len(jax.devices()) >= 2:
        mesh = jax.sharding.Mesh(jax.devices()[:2], ("d",))
        sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
        assert array_record({"params": {"x": sharded}}) == record


@pytest.mark.parametrize("edit", ["next_index", "batches_type", "fingerprint", "not_a_state"])
def test_unusable_data_state_falls_back(tmp_path, edit, caplog):
    """A data state that parses but is inconsistent (or made for other data) makes the step unusable."""
    import json

    from pi0_eqm.data.loader import DataLoader

    loader = DataLoader([{"x": float(i)} for i in range(40)], batch_size=4, seed=3, num_threads=0)
    it = iter(loader)
    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        next(it)
        ckpt.save_state(manager, _small_state(s), ema=False, data_state=it.get_state())
    path = tmp_path / "run" / "2" / "data_state" / "data_state.json"
    state = json.loads(path.read_text())
    if edit == "next_index":
        state["grain"]["next_index"] = 0  # would silently restart the data order
    elif edit == "batches_type":
        state["batches"] = "two"
    elif edit == "fingerprint":
        state["fingerprint"]["num_samples"] = 41
    else:
        state = {"pos": 20}
    path.write_text(json.dumps(state))
    with _logs_warning(caplog, "step 2 .*data_state: "):
        _, data_state, step = ckpt.restore_state(manager, _small_state(0), data_state_check=loader.state_problems)
    assert step == 1 and loader.state_problems(data_state) == []


def test_steps_saved_without_checksums_still_restore(tmp_path):
    """Checkpoints from before the integrity item restore (finiteness is still checked)."""
    import shutil

    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        ckpt.save_state(manager, _small_state(s), ema=False)
    shutil.rmtree(tmp_path / "run" / "2" / "integrity")
    restored, _, step = ckpt.restore_state(manager, _small_state(0))
    assert step == 2
    _assert_trees_equal(restored, _small_state(2))


NOT_READ_ON_RESUME = {
    "missing_step_metadata": lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
    "truncated_step_metadata": lambda d: _halve(d / "_CHECKPOINT_METADATA"),
    "damaged_norm_stats_copy": lambda d: [_halve(p) for p in (d / "assets").rglob("norm_stats.json")],
}


@pytest.mark.parametrize("damage", sorted(NOT_READ_ON_RESUME))
def test_problems_resume_does_not_read_do_not_set_an_intact_step_aside(tmp_path, damage, caplog):
    """Orbax's step metadata and the norm-stats copies are not what resuming reads: the step's arrays verify, so it is
    used (with a warning naming the problem) and nothing is renamed."""
    manager, _ = _open(tmp_path, async_save=False)
    states = {s: _small_state(s) for s in (1, 2)}
    for s, state in states.items():
        ckpt.save_state(manager, state, ema=False, norm_stats=_norm_stats(), data_state={"pos": s})
    NOT_READ_ON_RESUME[damage](tmp_path / "run" / "2")
    with _logs_warning(caplog, "step 2 .*resuming does not read these and its arrays verified"):
        restored, data_state, step = ckpt.restore_state(manager, jax.eval_shape(lambda: states[1]))
    assert (step, data_state) == (2, {"pos": 2})
    _assert_trees_equal(restored, states[2])
    assert sorted(_entries(tmp_path / "run")) == ["1", "2"]
    # serving reads the norm stats copy: there it is still a problem of the step
    if damage == "damaged_norm_stats_copy":
        assert any("norm_stats.json" in p for p in ckpt.check_checkpoint_step(tmp_path / "run" / "2"))


def test_a_permission_error_is_a_clear_error_not_damage(tmp_path, monkeypatch):
    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        ckpt.save_state(manager, _small_state(s), ema=False, data_state={"pos": s})
    denied = tmp_path / "run" / "2" / "data_state" / "data_state.json"
    read_bytes = Path.read_bytes

    def deny(self, *a, **kw):  # this process runs as root here, where chmod does not deny
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self, *a, **kw)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(PermissionError, match=r"(?s)cannot read .*data_state.json: permission denied.*not damaged"):
        ckpt.restore_state(manager, _small_state(0))
    assert sorted(_entries(tmp_path / "run")) == ["1", "2"]  # nothing set aside


@pytest.mark.parametrize("record", ["with_step", "old_record_without_step"])
def test_a_step_holding_another_steps_files_is_set_aside_on_resume(tmp_path, record, caplog):
    """Step 3's directory replaced by a copy of step 1 (checksums all agree with themselves): resuming falls back to
    step 2 and sets the copy aside, so training saves step 3 again; it used to resume step 1's state as step 3 and
    fail at its next save ("step 3 is already saved")."""
    import json
    import shutil

    manager, _ = _open(tmp_path, async_save=False)
    states = {s: _small_state(s) for s in (1, 2, 3)}
    for s, state in states.items():
        ckpt.save_state(manager, state, ema=False, data_state={"pos": s})
    run = tmp_path / "run"
    shutil.rmtree(run / "3")
    shutil.copytree(run / "1", run / "3")
    integrity = run / "3" / "integrity" / "checksums.json"
    if record == "old_record_without_step":  # saved before records named their step: the train state's step tells
        saved = json.loads(integrity.read_text())
        assert saved.pop("step") == 1
        integrity.write_text(json.dumps(saved))
    else:
        assert any("saved as step 1, but its directory is step 3" in p for p in ckpt.check_checkpoint_step(run / "3"))
    manager.reload()
    with _logs_warning(caplog, "step 3 .* incomplete or unreadable .*step 1"):
        restored, data_state, step = ckpt.restore_state(manager, jax.eval_shape(lambda: states[1]))
    assert (step, data_state) == (2, {"pos": 2})
    _assert_trees_equal(restored, states[2])
    assert any(n.startswith("3.corrupt-") for n in _entries(run))
    ckpt.save_state(manager, states[3], ema=False)
    assert ckpt.restore_state(manager, states[1])[2] == 3


ASSET_EDITS = {
    "edited_value": lambda f: f.write_text(f.read_text().replace("2.0", "2.5", 1)),
    "replaced_by_another_runs": lambda f: f.write_bytes(f.read_bytes().replace(b"3.0", b"4.0")),
    "deleted": lambda f: f.unlink(),
}


@pytest.mark.parametrize("edit", sorted(ASSET_EDITS))
def test_the_integrity_record_covers_the_norm_stats_the_step_ships(tmp_path, edit, caplog):
    """A norm-stats copy under a step that still parses but is not the one saved with it is named (serving and export
    refuse the step); resuming does not read it, so the step is used with a warning naming the file."""
    manager, _ = _open(tmp_path, async_save=False)
    states = {s: _small_state(s) for s in (1, 2)}
    for state in states.values():
        ckpt.save_state(manager, state, ema=False, norm_stats=_norm_stats())
    step_dir = tmp_path / "run" / "2"
    (f,) = (step_dir / "assets").rglob("norm_stats.json")
    assert ckpt.check_checkpoint_step(step_dir) == []
    ASSET_EDITS[edit](f)
    problems = ckpt.check_checkpoint_step(step_dir)
    rel = f.relative_to(step_dir).as_posix()
    expected = "missing (it was saved with this step)" if edit == "deleted" else "differs from the file saved with"
    assert [p for p in problems if p.startswith(rel)] and expected in " ".join(problems), problems
    with _logs_warning(caplog, f"step 2 .*{rel}"):
        assert ckpt.restore_state(manager, jax.eval_shape(lambda: states[1]))[2] == 2


def test_a_norm_stats_file_added_under_a_step_and_a_changed_tokenizer_file_are_named(tmp_path):
    from pi0_eqm.data.normalize import save_norm_stats

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"vocab": 1}')
    manager, _ = _open(tmp_path, async_save=False)
    ckpt.save_state(manager, _small_state(1), ema=False, norm_stats=_norm_stats(),
                    asset_dirs={"physical-intelligence/libero/fast_tokenizer": tok})
    step_dir = tmp_path / "run" / "1"
    assert ckpt.check_checkpoint_step(step_dir) == []
    save_norm_stats(step_dir / "assets" / "other_robot", _norm_stats()["physical-intelligence/libero"])
    (step_dir / "assets" / "physical-intelligence" / "libero" / "fast_tokenizer" / "tokenizer.json").write_text(
        '{"vocab": 2}')
    assert ckpt.check_checkpoint_step(step_dir) == [
        "assets/physical-intelligence/libero/fast_tokenizer/tokenizer.json: differs from the file saved with this step "
        "(checksum mismatch)",
        "assets/other_robot/norm_stats.json: not saved with this step (not in its integrity record)",
    ]
