"""``scripts/compute_norm_stats.py`` takes the same config flags as ``scripts/train.py`` (``--data.path`` etc.)."""

import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.data.normalize import save_norm_stats
from pi0_eqm.data.pipeline import NormStatsMismatchError
from pi0_eqm.training.config import cli
from tests.policies.conftest import make_libero_dataset

REPO = Path(__file__).resolve().parents[2]


def _run(*args, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PI0_FRAME_CACHE=str(tmp_path / "frames"))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compute_norm_stats.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_data_path_points_the_script_at_a_dataset(tmp_path):
    """The script recomputes over stale stats of another width, which training refuses (never slices or pads them)."""
    data = make_libero_dataset(tmp_path / "somewhere" / "my_libero")
    stale = tmp_path / "assets" / "debug_libero" / "physical-intelligence" / "libero"
    save_norm_stats(stale, {k: NormStats(mean=np.zeros(32), std=np.ones(32)) for k in ("state", "actions")})
    cfg = cli(["debug_libero", "--data.path", str(data), "--assets-base-dir", str(tmp_path / "assets")])
    with pytest.raises(NormStatsMismatchError, match=r"norm_stats\.json: .*'state' has 32 dims, the robot's state has "
                                                     r"8; 'actions' has 32 dims, the robot's actions has 7"):
        cfg.data.create(cfg.model, cfg.assets_dir)
    proc = _run("debug_libero", "--data.path", str(data), "--assets-base-dir", str(tmp_path / "assets"),
                "--max-frames", "20", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = load_norm_stats(tmp_path / "assets" / "debug_libero" / "physical-intelligence" / "libero")
    assert stats["state"].mean.shape == (8,) and stats["actions"].mean.shape == (7,)
    assert cfg.data.create(cfg.model, cfg.assets_dir).pipeline.norm_stats["state"].mean.shape == (8,)


def test_a_missing_dataset_is_a_one_line_error(tmp_path):
    proc = _run("debug_libero", "--data.path", str(tmp_path / "nope"), "--assets-base-dir", str(tmp_path / "a"),
                tmp_path=tmp_path)
    assert proc.returncode == 2
    assert f"dataset not found at {tmp_path / 'nope'}" in proc.stderr and "Traceback" not in proc.stderr
