"""Export: a training step → openpi serving layout (params + assets), round trip, bf16, flow tree == π₀'s."""

import dataclasses
import os
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


def test_overwrite_replaces_only_an_export(trained_libero, tmp_path, monkeypatch):
    """``--overwrite`` replaces a directory an export made; any other directory (the cwd, a run, a folder of the
    user's) is refused with what it would have deleted, and left as it was."""
    _, step_dir = trained_libero
    out = export_checkpoint(step_dir, tmp_path / "exported")
    (out / "extra.txt").write_text("x")
    export_checkpoint(step_dir, out, overwrite=True)  # an export: replaced
    assert (out / "params").is_dir() and not (out / "extra.txt").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("keep me")
    with pytest.raises(ValueError, match=r"refusing to --overwrite .*no \.pi0_eqm_export\.json marker.*notes\.md"):
        export_checkpoint(step_dir, mine, overwrite=True)
    assert (mine / "notes.md").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.md"]

    monkeypatch.chdir(mine)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_checkpoint.py"), "--checkpoint",
                           str(step_dir), "--out", ".", "--overwrite"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "refusing to --overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (mine / "notes.md").read_text() == "keep me"

    afile = tmp_path / "a_file"
    afile.write_text("data")
    with pytest.raises(ValueError, match="not a directory"):
        export_checkpoint(step_dir, afile, overwrite=True)
    assert afile.read_text() == "data"


def test_export_files_follow_the_umask(trained_libero, tmp_path):
    """An export made by one user is readable by another: files and directories get the modes ``open``/``mkdir``
    give under the umask, not ``tempfile``'s private 0600/0700."""
    _, step_dir = trained_libero
    old = os.umask(0o022)
    try:
        out = export_checkpoint(step_dir, tmp_path / "exported")
    finally:
        os.umask(old)
    for p in [out, *out.rglob("*")]:
        mode = p.stat().st_mode & 0o777
        assert mode & 0o044 == 0o044, f"{p.relative_to(tmp_path)} is {oct(mode)}"
        if p.is_dir():
            assert mode & 0o011 == 0o011, f"{p.relative_to(tmp_path)} is {oct(mode)}"
