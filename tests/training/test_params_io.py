"""Params-only checkpoints (openpi ``<dir>/params``): round trips, value suffixes, atomic saves, errors."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pi0_eqm.training import params_io
from tests.training._checkpoint_common import _assert_trees_equal
from tests.training._checkpoint_common import _random_like
from tests.training._checkpoint_common import tiny_model_params


@pytest.fixture(scope="module")
def tiny_params():
    return tiny_model_params()


def _with_value(tree):
    return jax.tree.map(lambda x: {"value": x}, tree)


@pytest.mark.parametrize("value_suffix", [False, True])
def test_restore_params_with_and_without_value_suffix(tmp_path, tiny_params, value_suffix):
    params = _random_like(tiny_params, 3)
    params_io.save_params(tmp_path / "export" / "params", _with_value(params) if value_suffix else params)
    restored = params_io.restore_params(tmp_path / "export" / "params")
    _assert_trees_equal(restored, params)
    assert isinstance(jax.tree.leaves(restored)[0], jax.Array)

    as_np = params_io.restore_params(tmp_path / "export", restore_type=np.ndarray, dtype=jnp.bfloat16)  # parent dir ok
    assert all(isinstance(x, np.ndarray) and x.dtype == jnp.bfloat16 for x in jax.tree.leaves(as_np))
    _assert_trees_equal(as_np, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_bf16_params_save_restore(tmp_path, tiny_params):
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _random_like(tiny_params, 4))
    path = params_io.save_params(tmp_path / "params", params)
    with ocp.PyTreeCheckpointer() as c:
        raw = c.restore(path)
    assert list(raw) == ["params"]
    _assert_trees_equal(raw["params"], params)
    restored = params_io.restore_params(path)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(restored))
    _assert_trees_equal(restored, params)


def test_save_params_is_atomic(tmp_path, monkeypatch):
    old = {"w": np.ones((2, 2), np.float32)}
    path = params_io.save_params(tmp_path / "params", old)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        params_io.save_params(path, old)

    real_save = ocp.PyTreeCheckpointer.save

    def crash_after_writing(self, directory, *args, **kwargs):
        real_save(self, directory, *args, **kwargs)
        raise KeyboardInterrupt  # killed after the data hit the disk, before publication

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        params_io.save_params(path, {"w": np.zeros((2, 2), np.float32)}, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        params_io.save_params(tmp_path / "new_params", old)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["params"]  # no half-written or temporary directories
    np.testing.assert_array_equal(params_io.restore_params(path)["w"], old["w"])

    params_io.save_params(path, {"w": np.zeros((2, 2), np.float32)}, overwrite=True)
    np.testing.assert_array_equal(params_io.restore_params(path)["w"], 0)
    assert sorted(os.listdir(tmp_path)) == ["params"]


def test_restore_params_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        params_io.restore_params(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an orbax params checkpoint"):
        params_io.restore_params(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="gsutil"):
        params_io.restore_params("gs://openpi-assets/checkpoints/pi0_base/params")
    with ocp.PyTreeCheckpointer() as c:
        c.save(tmp_path / "other", args=ocp.args.PyTreeSave({"weights": {"w": np.ones(2)}}))
    with pytest.raises(ValueError, match="expected top-level key 'params'"):
        params_io.restore_params(tmp_path / "other")
