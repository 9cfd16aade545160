"""``scripts/compute_norm_stats.py`` takes the same config flags as ``scripts/train.py`` (``--data.path`` etc.)."""

import os
from pathlib import Path
import subprocess
import sys

from pi0_eqm.data.normalize import load_norm_stats
from tests.policies.conftest import make_libero_dataset

REPO = Path(__file__).resolve().parents[2]


def _run(*args, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PI0_FRAME_CACHE=str(tmp_path / "frames"))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compute_norm_stats.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_data_path_points_the_script_at_a_dataset(tmp_path):
    data = make_libero_dataset(tmp_path / "somewhere" / "my_libero")
    proc = _run("debug_libero", "--data.path", str(data), "--assets-base-dir", str(tmp_path / "assets"),
                "--max-frames", "20", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = load_norm_stats(tmp_path / "assets" / "debug_libero" / "physical-intelligence" / "libero")
    assert stats["state"].mean.shape == (8,) and stats["actions"].mean.shape == (7,)


def test_a_missing_dataset_is_a_one_line_error(tmp_path):
    proc = _run("debug_libero", "--data.path", str(tmp_path / "nope"), "--assets-base-dir", str(tmp_path / "a"),
                tmp_path=tmp_path)
    assert proc.returncode == 2
    assert f"dataset not found at {tmp_path / 'nope'}" in proc.stderr and "Traceback" not in proc.stderr
