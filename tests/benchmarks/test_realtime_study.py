"""The real-time study, reduced: the shared trained checkpoints → every arm at d = 0 and d = 4 on the same held-out
episodes in the real simulator → pooled success, discontinuities, forwards and VJPs, paired tests; cached per cell."""

import json
from pathlib import Path

import pytest

from pi0_eqm.decoders import make_decoder
from pi0_eqm.envs.stats import paired_comparison
from pi0_eqm.training.checkpoint_dir import latest_step_dir
from pi0_eqm.training.config_record import read_config
from tests.benchmarks.conftest import load_script

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_realtime_study_end_to_end(tmp_path, monkeypatch, metaworld_home):
    monkeypatch.setenv("PI0_DATA_HOME", str(metaworld_home.data))
    mod = load_script("realtime_study")
    # eqm-trained-flag decodes like eqm-trained and eqm-prefix-pull like eqm-prefix (its pull: tests/decoders)
    arms = tuple(a for a in mod.DEFAULT_ARMS if a not in ("eqm-trained-flag", "eqm-prefix-pull"))
    args = mod.Args(arms=arms, seeds=(1,), delays=(0, 4), episodes_per_task=1,
                    max_steps=24, out=str(tmp_path / "out"), **metaworld_home.args())
    out = mod.main(args)
    s = out["summary"]
    assert set(s) == {(a, d) for a in args.arms for d in (0, 4)}
    for (arm, d), row in s.items():
        assert row["n"] == 2 and 0 <= row["success_rate"] <= 1 and row["forwards_mean"] == 10
        assert row["jump_mean"] is not None and row["jump_mean"] >= 0
        # flow with a prefix spends one VJP per Euler step on every chunk but an episode's first; nothing else any
        if arm == "flow-prefix" and d > 0:
            assert 0 < row["vjps_mean"] < 10, row["vjps_mean"]
        else:
            assert row["vjps_mean"] == 0, (arm, d, row["vjps_mean"])
    # the trained arms are checkpoints trained with committed prefixes of up to 8 rows
    for arm, method in (("flow-trained", "rtc_trained"), ("eqm-trained", "inpaint")):
        run = json.loads((tmp_path / "out" / "runs" / arm / "seed1_d4.json").read_text())
        assert read_config(latest_step_dir(Path(run["checkpoint"]))).model.decoder.max_delay == 8
        assert make_decoder(read_config(latest_step_dir(Path(run["checkpoint"]))).model).prefix_method == method
    assert ("flow-trained", "flow-prefix", 4) in out["paired"] and ("eqm-trained", "flow-trained", 4) in out["paired"]
    # At d = 0 every method is the synchronous loop: the same actions, the same outcomes.
    runs = tmp_path / "out" / "runs"
    ep = lambda arm, d: json.loads((runs / arm / f"seed1_d{d}.json").read_text())["episodes"]  # noqa: E731
    same = lambda arm: [(e["success"], e["steps"], e["jumps"], e["forwards"]) for e in ep(arm, 0)]  # noqa: E731
    for dec in ("flow", "eqm"):
        assert same(f"{dec}-sync") == same(f"{dec}-naive") == same(f"{dec}-prefix")
    # sync holds still during inference: at d = 4 its episodes execute fewer policy actions in the same step limit
    assert all(e["steps"] <= 24 for e in ep("eqm-sync", 4))
    pair = out["paired"][("eqm-prefix", "eqm-naive", 4)]
    assert pair == paired_comparison([e["success"] for e in ep("eqm-prefix", 4)],
                                     [e["success"] for e in ep("eqm-naive", 4)])
    assert ("eqm-prefix", "flow-prefix", 4) in out["paired"]
    assert (tmp_path / "out" / "realtime_study.png").stat().st_size > 1000
    assert "`eqm-prefix` − `eqm-naive`" in (tmp_path / "out" / "realtime_study.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")}
    mod.main(args)  # a rerun reuses every cell
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")} == stamps
