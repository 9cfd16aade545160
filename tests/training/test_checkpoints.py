"""Checkpoints: openpi layout, exact round trips, retention, save failures (real orbax on tmp_path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.training import checkpoint_assets
from pi0_eqm.training import checkpoints as ckpt
from tests.training._checkpoint_common import ASSET_ID
from tests.training._checkpoint_common import _assert_trees_equal
from tests.training._checkpoint_common import _entries
from tests.training._checkpoint_common import _logs_warning
from tests.training._checkpoint_common import _norm_stats
from tests.training._checkpoint_common import _open
from tests.training._checkpoint_common import _small_state
from tests.training._checkpoint_common import _trained_state
from tests.training._checkpoint_common import tiny_model_params


@pytest.fixture(scope="module")
def tiny_params():
    return tiny_model_params()


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
    assert sorted(int(p) for p in _entries(tmp_path / "run")) == [3, 6, 7]


def test_max_to_keep_one_keeps_latest(tmp_path):
    manager, _ = _open(tmp_path, max_to_keep=1)
    for step in (10, 20, 30):
        ckpt.save_state(manager, _small_state(step), ema=False)
    ckpt.wait_until_saved(manager)
    assert _entries(tmp_path / "run") == ["30"]


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

    monkeypatch.setattr(checkpoint_assets, "_write_assets", disk_full)
    ckpt.save_state(manager, _small_state(2), ema=False, norm_stats=_norm_stats())  # returns before the failure
    with pytest.raises(ckpt.CheckpointSaveError, match=r"step 2 .*No space left.*earlier steps are intact: \[1\]"):
        ckpt.wait_until_saved(manager)
    run = tmp_path / "run"
    assert "1" in _entries(run) and "2" not in _entries(run)
    assert (run / "1" / "commit_success.txt").is_file()
    assert manager.all_steps() == [1]
    ckpt.wait_until_saved(manager)  # raised once, not again


def test_failed_commit_keeps_last_good_step_and_resumes(tmp_path, monkeypatch, caplog):
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
    assert sorted(_entries(run)) == ["1", "2.orbax-checkpoint-tmp"]
    manager.close()

    with _logs_warning(caplog, "stale temporary checkpoint directory"):
        manager2, resuming = ckpt.initialize_checkpoint_dir(run, resume=True, max_to_keep=1)
    assert resuming and sorted(_entries(run)) == ["1"]
    _, _, step = ckpt.restore_state(manager2, _small_state(0))
    assert step == 1
    ckpt.save_state(manager2, _small_state(2), ema=False, wait=True)
    assert _entries(run) == ["2"]
