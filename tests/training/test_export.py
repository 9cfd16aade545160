"""Export: a training step → openpi serving layout (params + assets), round trip, bf16, flow tree == π₀'s."""

import dataclasses
from pathlib import Path
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pi0_eqm.training.checkpoints import restore_params
from pi0_eqm.training.export import export_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_export_round_trip_and_layout(trained_libero, tmp_path):
    cfg, step_dir = trained_libero
    out = export_checkpoint(step_dir, tmp_path / "exported")
    assert (out / "params").is_dir()
    assert (out / "assets" / "physical-intelligence/libero" / "norm_stats.json").is_file()
    # openpi's restore path: a bare PyTreeCheckpointer gives {"params": <pure dict with openpi names>}.
    raw = ocp.PyTreeCheckpointer().restore(out / "params")
    assert list(raw) == ["params"]
    model_tree = jax.eval_shape(lambda: cfg.model.init(jax.random.key(0)))
    got = jax.tree_util.tree_structure(raw["params"])
    assert got == jax.tree_util.tree_structure(model_tree)
    a = restore_params(step_dir / "params", restore_type=np.ndarray)
    b = restore_params(out / "params", restore_type=np.ndarray)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # Never overwritten by accident.
    with pytest.raises(FileExistsError):
        export_checkpoint(step_dir, out)


def test_export_bf16_via_cli(trained_libero, tmp_path):
    _, step_dir = trained_libero
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_checkpoint.py"), "--checkpoint",
                           str(step_dir), "--out", str(tmp_path / "bf16"), "--bf16"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = restore_params(tmp_path / "bf16" / "params")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_checkpoint.py"), "--checkpoint",
                           str(tmp_path / "nope"), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no params/" in proc.stderr


def test_flow_and_eqm_param_trees_are_identical():
    """EqM feeds t ≡ 0 through π₀'s time path, so its checkpoints have exactly π₀'s tree (openpi can load both)."""
    from pi0_eqm.models.configs import model_config
    from pi0_eqm.models.decoder_config import EqmConfig
    from pi0_eqm.models.decoder_config import FlowConfig

    f = jax.eval_shape(lambda: model_config("pi0_tiny", FlowConfig()).init(jax.random.key(0)))
    e = jax.eval_shape(lambda: dataclasses.replace(model_config("pi0_tiny"), decoder=EqmConfig()).init(
        jax.random.key(0)))
    assert jax.tree.map(lambda x: x.shape, f) == jax.tree.map(lambda x: x.shape, e)
