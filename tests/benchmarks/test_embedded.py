"""The main job, reduced: real Meta-World demos → norm stats → training → closed-loop evaluation, via the script."""

import json

import pytest

from tests.benchmarks.conftest import load_script

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_embedded_benchmark_end_to_end(tmp_path, monkeypatch, metaworld_home):
    """On the shared demos, with its own runs (``main``, 12 steps): demos reused, both decoders trained, evaluated."""
    monkeypatch.setenv("PI0_DATA_HOME", str(metaworld_home.data))
    mod = load_script("embedded_benchmark")
    args = mod.Args(decoders=("eqm", "flow"), episodes_per_task=1, max_steps=24, out=str(tmp_path / "out"),
                    **{**metaworld_home.args(), "train_steps": 12, "checkpoint_base_dir": str(tmp_path / "ckpt"),
                       "assets_base_dir": str(tmp_path / "assets")})
    out = mod.main(args)
    summary = out["summary"]
    assert set(summary) == {"pi0_eqm_metaworld", "pi0_metaworld"}
    for row in summary.values():
        assert row["episodes"] == 2 and 0.0 <= row["mean_success"] <= 1.0
        assert set(row["per_task"]) == {"handle-press-v3", "coffee-button-v3"}
        for t, (lo, hi) in row["per_task_ci95"].items():  # per-task Wilson CIs (drawn in success.png)
            assert 0.0 <= lo <= row["per_task"][t] <= hi <= 1.0
        assert row["latency_ms_mean"] > 0
    assert 1 <= summary["pi0_eqm_metaworld"]["iters_mean"] <= 300
    assert summary["pi0_metaworld"]["iters_mean"] == 10  # flow: 10 Euler steps per chunk
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["pi0_eqm_metaworld"]["episodes"] == 2
    assert (tmp_path / "out" / "success.png").stat().st_size > 1000
    assert (tmp_path / "assets" / "pi0_eqm_metaworld" / "metaworld" / "norm_stats.json").is_file()
    # Re-running reuses the demos and the finished runs (idempotent main job).
    again = mod.main(args)
    assert again["timings"]["train_eqm_s"] < out["timings"]["train_eqm_s"]
