"""Checkpoints: openpi layout, exact round trips, retention, failure handling (real orbax on tmp_path)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.models.configs import model_config
from pi0_eqm.training import checkpoints as ckpt
from pi0_eqm.training.train_step import TrainState
from pi0_eqm.training.train_step import init_train_state

ASSET_ID = "physical-intelligence/libero"


@pytest.fixture(scope="module")
def tiny_params():
    return jax.jit(model_config("pi0_tiny").init)(jax.random.key(0))


def _random_like(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), tree)


@functools.cache
def _update_fn(ema: bool, seed: int):
    tx = optax.adamw(1e-3, weight_decay=1e-4)

    @jax.jit
    def one_update(params, grads, step):
        state = init_train_state(params, tx, jax.random.key(seed), ema=ema)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        ema_params = jax.tree.map(lambda p: 0.5 * p, new_params) if ema else None
        return state.replace(step=step, params=new_params, opt_state=opt_state, ema_params=ema_params)

    return one_update


def _trained_state(params, *, ema: bool, step: int, seed: int = 0) -> TrainState:
    """A state with a non-trivial adamw opt_state (one real update), distinct EMA params and a real key."""
    return _update_fn(ema, seed)(params, _random_like(params, seed + 1), jnp.int32(step))


def _small_state(step: int, *, ema: bool = False) -> TrainState:
    params = {"w": jnp.arange(12.0).reshape(3, 4), "b": {"c": jnp.ones(5) * step}, "big": jnp.ones((64, 64)) * step}
    return _trained_state(params, ema=ema, step=step)


def _norm_stats() -> dict[str, dict[str, NormStats]]:
    s = NormStats(mean=np.arange(8.0), std=np.ones(8) * 2, q01=-np.ones(8), q99=np.ones(8) * 3)
    a = NormStats(mean=np.zeros(7), std=np.ones(7), q01=-np.ones(7) * 2, q99=np.ones(7) * 2)
    return {ASSET_ID: {"state": s, "actions": a}}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype, (jax.tree_util.keystr(path), x.dtype, y.dtype)
        assert x.shape == y.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _open(tmp_path, **kw):
    kw.setdefault("max_to_keep", None)
    manager, resuming = ckpt.initialize_checkpoint_dir(tmp_path / "run", **kw)
    return manager, resuming


# ----------------------------------------------------------------------------------------------------------------
# Round trips and layout
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ema", [True, False])
def test_save_restore_round_trip_is_exact(tmp_path, tiny_params, ema):
    state = _trained_state(tiny_params, ema=ema, step=7)
    data_state = {"epoch": 2, "position": 1234, "order_seed": 99, "shards": ["a", "b"], "nested": {"x": 0.5}}
    manager, resuming = _open(tmp_path)
    assert not resuming
    assert ckpt.save_state(manager, state, ema=ema, norm_stats=_norm_stats(), data_state=data_state) == 7
    ckpt.wait_until_saved(manager)

    # A fresh manager (new process) restoring into an abstract state.
    manager2, resuming = ckpt.initialize_checkpoint_dir(tmp_path / "run", resume=True, max_to_keep=None)
    assert resuming
    abstract = jax.eval_shape(lambda: state)
    restored, restored_data, step = ckpt.restore_state(manager2, abstract)
    assert step == 7
    assert restored_data == data_state
    assert (restored.ema_params is None) == (not ema)
    _assert_trees_equal(restored, state)  # params, opt_state (namedtuples), ema, step, rng
    assert jax.random.wrap_key_data(restored.rng).dtype == jax.random.key(0).dtype
    manager.close()
    manager2.close()


def test_restore_into_concrete_state_without_data_state(tmp_path):
    state = _small_state(3)
    manager, _ = _open(tmp_path, async_save=False)
    ckpt.save_state(manager, state, ema=False)
    template = _small_state(0)  # concrete arrays as the target
    restored, data_state, step = ckpt.restore_state(manager, template)
    assert (step, data_state) == (3, None)
    _assert_trees_equal(restored, state)


def test_openpi_layout_on_disk(tmp_path, tiny_params):
    state = _trained_state(tiny_params, ema=True, step=5)
    manager, _ = _open(tmp_path)
    ckpt.save_state(manager, state, ema=True, norm_stats=_norm_stats(), data_state={"epoch": 1}, wait=True)
    step_dir = tmp_path / "run" / "5"
    assert {"params", "train_state", "assets", "data_state", "_CHECKPOINT_METADATA", "commit_success.txt"} <= set(
        os.listdir(step_dir)
    )
    assert (step_dir / "params" / "manifest.ocdbt").is_file()  # OCDBT

    # openpi's reader: a bare PyTreeCheckpointer gives {"params": <EMA params>} with openpi names.
    with ocp.PyTreeCheckpointer() as c:
        raw = c.restore(step_dir / "params")
    assert list(raw) == ["params"]
    assert set(raw["params"]) == {
        "PaliGemma",
        "state_proj",
        "action_in_proj",
        "action_time_mlp_in",
        "action_time_mlp_out",
        "action_out_proj",
    }
    assert set(raw["params"]["PaliGemma"]) == {"img", "llm"}
    assert raw["params"]["PaliGemma"]["llm"]["layers"]["attn"]["q_einsum_1"]["w"].ndim == 4
    _assert_trees_equal(raw["params"], state.ema_params)
    _assert_trees_equal(ckpt.restore_params(step_dir / "params"), state.ema_params)

    # train_state holds the raw params (EMA on), step, opt_state, rng.
    with ocp.PyTreeCheckpointer() as c:
        ts = c.restore(step_dir / "train_state")
    assert set(ts) == {"step", "opt_state", "rng", "params"}
    _assert_trees_equal(ts["params"], state.params)

    # norm stats at assets/<asset_id>/norm_stats.json in openpi's format.
    path = step_dir / "assets" / ASSET_ID / "norm_stats.json"
    payload = json.loads(path.read_text())
    assert set(payload) == {"norm_stats"}
    assert set(payload["norm_stats"]) == {"state", "actions"}
    assert set(payload["norm_stats"]["state"]) == {"mean", "std", "q01", "q99"}
    loaded = load_norm_stats(path.parent)
    np.testing.assert_array_equal(loaded["state"].mean, np.arange(8.0))
    assert set(ckpt.restore_norm_stats(step_dir)) == {ASSET_ID}
    assert json.loads((step_dir / "data_state" / "data_state.json").read_text()) == {"epoch": 1}


def test_bf16_state_round_trip(tmp_path):
    state = _small_state(1)
    state = state.replace(params=jax.tree.map(lambda x: x.astype(jnp.bfloat16) / 3, state.params))
    manager, _ = _open(tmp_path, async_save=False)
    ckpt.save_state(manager, state, ema=False)
    restored, _, _ = ckpt.restore_state(manager, jax.eval_shape(lambda: state))
    assert restored.params["w"].dtype == jnp.bfloat16
    _assert_trees_equal(restored, state)


def test_sharded_restore_uses_the_abstract_sharding(tmp_path):
    state = _small_state(2)
    manager, _ = _open(tmp_path, async_save=False)
    ckpt.save_state(manager, state, ema=False)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("fsdp",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
    restored, _, _ = ckpt.restore_state(manager, abstract)
    assert all(leaf.sharding == sharding for leaf in jax.tree.leaves(restored))
    _assert_trees_equal(restored, state)


def test_sharded_restore_on_two_devices(tmp_path):
    """restore_state/restore_params give per-device shards when the target is sharded (2 host CPU devices)."""
    script = textwrap.dedent(
        f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        os.environ["JAX_PLATFORMS"] = "cpu"
        import jax, jax.numpy as jnp, numpy as np, optax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from pi0_eqm.training import checkpoints as ckpt
        from pi0_eqm.training.train_step import init_train_state
        assert len(jax.devices()) == 2
        params = {{"w": jnp.arange(32.0).reshape(4, 8), "b": jnp.ones(8)}}
        state = init_train_state(params, optax.adamw(1e-3), jax.random.key(0), ema=False).replace(step=jnp.int32(4))
        manager, _ = ckpt.initialize_checkpoint_dir({str(tmp_path / "run")!r}, async_save=False)
        ckpt.save_state(manager, state, ema=False)
        mesh = Mesh(np.asarray(jax.devices()), ("fsdp",))
        def shard(x):
            spec = P(None, "fsdp") if x.ndim == 2 else P()
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
        restored, _, step = ckpt.restore_state(manager, jax.tree.map(shard, state))
        w = restored.params["w"]
        assert w.sharding.spec == P(None, "fsdp"), w.sharding
        assert [s.data.shape for s in w.addressable_shards] == [(4, 4), (4, 4)]
        np.testing.assert_array_equal(np.asarray(w), np.arange(32.0).reshape(4, 8))
        p = ckpt.restore_params({str(tmp_path / "run" / "4" / "params")!r},
                                sharding={{"w": NamedSharding(mesh, P("fsdp")), "b": NamedSharding(mesh, P())}})
        assert [s.data.shape for s in p["w"].addressable_shards] == [(2, 8), (2, 8)]
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")


# ----------------------------------------------------------------------------------------------------------------
# Retention and saving rules
# ----------------------------------------------------------------------------------------------------------------


def test_keep_period_and_max_to_keep(tmp_path):
    manager, _ = _open(tmp_path, keep_period=3, max_to_keep=2)
    for step in range(1, 8):
        ckpt.save_state(manager, _small_state(step), ema=False)
    ckpt.wait_until_saved(manager)
    assert sorted(manager.all_steps()) == [3, 6, 7]
    assert sorted(int(p) for p in os.listdir(tmp_path / "run")) == [3, 6, 7]


def test_max_to_keep_one_keeps_latest(tmp_path):
    manager, _ = _open(tmp_path, max_to_keep=1)
    for step in (10, 20, 30):
        ckpt.save_state(manager, _small_state(step), ema=False)
    ckpt.wait_until_saved(manager)
    assert os.listdir(tmp_path / "run") == ["30"]


def test_steps_must_increase(tmp_path):
    manager, _ = _open(tmp_path, async_save=False)
    ckpt.save_state(manager, _small_state(2), ema=False)
    for step in (2, 1):
        with pytest.raises(ValueError, match="steps must increase"):
            ckpt.save_state(manager, _small_state(step), ema=False)


def test_invalid_arguments(tmp_path):
    manager, _ = _open(tmp_path, async_save=False)
    with pytest.raises(ValueError, match="does not survive a JSON round trip"):
        ckpt.save_state(manager, _small_state(1), ema=False, data_state={"pos": (1, 2)})
    with pytest.raises(TypeError, match="not JSON-serializable"):
        ckpt.save_state(manager, _small_state(1), ema=False, data_state={"pos": object()})
    with pytest.raises(ValueError, match="ema_params is None"):
        ckpt.save_state(manager, _small_state(1), ema=True)
    with pytest.raises(ValueError, match="invalid asset id"):
        ckpt.save_state(manager, _small_state(1), ema=False, norm_stats={"../x": _norm_stats()[ASSET_ID]})
    assert manager.all_steps() == []


def test_failed_async_save_is_raised_and_keeps_last_good_step(tmp_path, monkeypatch):
    """A handler fails in orbax's background commit: the error reaches the caller; step 1 survives max_to_keep=1."""
    manager, _ = _open(tmp_path, max_to_keep=1)
    ckpt.save_state(manager, _small_state(1), ema=False, norm_stats=_norm_stats(), wait=True)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(ckpt, "_write_assets", disk_full)
    ckpt.save_state(manager, _small_state(2), ema=False, norm_stats=_norm_stats())  # returns before the failure
    with pytest.raises(ckpt.CheckpointSaveError, match=r"step 2 .*No space left.*earlier steps are intact: \[1\]"):
        ckpt.wait_until_saved(manager)
    run = tmp_path / "run"
    assert "1" in os.listdir(run) and "2" not in os.listdir(run)
    assert (run / "1" / "commit_success.txt").is_file()
    assert manager.all_steps() == [1]
    ckpt.wait_until_saved(manager)  # raised once, not again


def test_failed_commit_keeps_last_good_step_and_resumes(tmp_path, monkeypatch):
    """The final commit (rename) of step 2 fails: save_state(wait=True) raises, step 1 is kept, the leftover
    tmp dir is cleaned at the next start and training continues from step 1."""
    manager, _ = _open(tmp_path, max_to_keep=1)
    ckpt.save_state(manager, _small_state(1), ema=False, wait=True)

    cls = ocp.path.atomicity.AtomicRenameTemporaryPath
    real_finalize = cls.finalize

    async def failing_finalize(self, *args, **kwargs):
        if self.get_final().name == "2":  # the step directory, after all items are written
            raise OSError(5, "Input/output error (simulated)")
        return await real_finalize(self, *args, **kwargs)

    monkeypatch.setattr(cls, "finalize", failing_finalize)
    with pytest.raises(ckpt.CheckpointSaveError, match=r"step 2 .*Input/output error"):
        ckpt.save_state(manager, _small_state(2), ema=False, wait=True)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert sorted(os.listdir(run)) == ["1", "2.orbax-checkpoint-tmp"]
    manager.close()

    with pytest.warns(UserWarning, match="stale temporary checkpoint directory"):
        manager2, resuming = ckpt.initialize_checkpoint_dir(run, resume=True, max_to_keep=1)
    assert resuming and sorted(os.listdir(run)) == ["1"]
    _, _, step = ckpt.restore_state(manager2, _small_state(0))
    assert step == 1
    ckpt.save_state(manager2, _small_state(2), ema=False, wait=True)
    assert os.listdir(run) == ["2"]


# ----------------------------------------------------------------------------------------------------------------
# Partial / corrupt steps
# ----------------------------------------------------------------------------------------------------------------


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
def test_damaged_latest_step_falls_back_to_previous(tmp_path, damage):
    manager, _ = _open(tmp_path, async_save=False)
    states = {s: _small_state(s) for s in (1, 2, 3)}
    for s, state in states.items():
        ckpt.save_state(manager, state, ema=False, data_state={"pos": s * 10})
    run = tmp_path / "run"
    DAMAGE[damage](run / "3")

    with pytest.warns(UserWarning, match="step 3 .* incomplete or unreadable"):
        restored, data_state, step = ckpt.restore_state(manager, jax.eval_shape(lambda: states[1]))
    assert (step, data_state) == (2, {"pos": 20})
    _assert_trees_equal(restored, states[2])

    # The bad step is kept for inspection under another name, and training can save step 3 again.
    names = os.listdir(run)
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
    assert "2" in os.listdir(tmp_path / "run")  # nothing renamed


def test_no_restorable_step(tmp_path):
    manager, _ = _open(tmp_path, async_save=False)
    for s in (1, 2):
        ckpt.save_state(manager, _small_state(s), ema=False)
        (tmp_path / "run" / str(s) / "commit_success.txt").unlink()
    with pytest.warns(UserWarning), pytest.raises(ckpt.CheckpointRestoreError, match="no checkpoint step"):
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
    assert sorted(os.listdir(tmp_path / "run")) == ["1", "2"]


# ----------------------------------------------------------------------------------------------------------------
# Directory initialization
# ----------------------------------------------------------------------------------------------------------------


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
    assert not resuming and os.listdir(tmp_path / "run") == []
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


def test_stale_tmp_dirs_are_removed_with_a_warning(tmp_path):
    manager, _ = _open(tmp_path, async_save=False)
    ckpt.save_state(manager, _small_state(1), ema=False)
    run = tmp_path / "run"
    for name in ("2.orbax-checkpoint-tmp", "3.orbax-checkpoint-tmp-1712345678"):
        (run / name / "params").mkdir(parents=True)
        (run / name / "params" / "junk").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="stale temporary checkpoint") as record:
        manager, resuming = ckpt.initialize_checkpoint_dir(run, resume=True, max_to_keep=None)
    assert len([w for w in record if "stale" in str(w.message)]) == 2
    assert resuming and os.listdir(run) == ["1"]
    ckpt.save_state(manager, _small_state(2), ema=False, wait=True)
    assert sorted(manager.all_steps()) == [1, 2]


def test_overwrite_refuses_dangerous_dirs(tmp_path, monkeypatch):
    (tmp_path / "x").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="refusing to --overwrite"):
        ckpt.initialize_checkpoint_dir(tmp_path, overwrite=True)
    assert (tmp_path / "x").read_text() == "keep me"


# ----------------------------------------------------------------------------------------------------------------
# Params-only checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _with_value(tree):
    return jax.tree.map(lambda x: {"value": x}, tree)


@pytest.mark.parametrize("value_suffix", [False, True])
def test_restore_params_with_and_without_value_suffix(tmp_path, tiny_params, value_suffix):
    params = _random_like(tiny_params, 3)
    ckpt.save_params(tmp_path / "export" / "params", _with_value(params) if value_suffix else params)
    restored = ckpt.restore_params(tmp_path / "export" / "params")
    _assert_trees_equal(restored, params)
    assert isinstance(jax.tree.leaves(restored)[0], jax.Array)

    as_np = ckpt.restore_params(tmp_path / "export", restore_type=np.ndarray, dtype=jnp.bfloat16)  # parent dir ok
    assert all(isinstance(x, np.ndarray) and x.dtype == jnp.bfloat16 for x in jax.tree.leaves(as_np))
    _assert_trees_equal(as_np, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_bf16_params_save_restore(tmp_path, tiny_params):
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _random_like(tiny_params, 4))
    path = ckpt.save_params(tmp_path / "params", params)
    with ocp.PyTreeCheckpointer() as c:
        raw = c.restore(path)
    assert list(raw) == ["params"]
    _assert_trees_equal(raw["params"], params)
    restored = ckpt.restore_params(path)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(restored))
    _assert_trees_equal(restored, params)


def test_save_params_is_atomic(tmp_path, monkeypatch):
    old = {"w": np.ones((2, 2), np.float32)}
    path = ckpt.save_params(tmp_path / "params", old)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ckpt.save_params(path, old)

    real_save = ocp.PyTreeCheckpointer.save

    def crash_after_writing(self, directory, *args, **kwargs):
        real_save(self, directory, *args, **kwargs)
        raise KeyboardInterrupt  # killed after the data hit the disk, before publication

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_params(path, {"w": np.zeros((2, 2), np.float32)}, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_params(tmp_path / "new_params", old)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["params"]  # no half-written or temporary directories
    np.testing.assert_array_equal(ckpt.restore_params(path)["w"], old["w"])

    ckpt.save_params(path, {"w": np.zeros((2, 2), np.float32)}, overwrite=True)
    np.testing.assert_array_equal(ckpt.restore_params(path)["w"], 0)
    assert sorted(os.listdir(tmp_path)) == ["params"]


def test_restore_params_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ckpt.restore_params(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an orbax params checkpoint"):
        ckpt.restore_params(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="gsutil"):
        ckpt.restore_params("gs://openpi-assets/checkpoints/pi0_base/params")
    with ocp.PyTreeCheckpointer() as c:
        c.save(tmp_path / "other", args=ocp.args.PyTreeSave({"weights": {"w": np.ones(2)}}))
    with pytest.raises(ValueError, match="expected top-level key 'params'"):
        ckpt.restore_params(tmp_path / "other")
