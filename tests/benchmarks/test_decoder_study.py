"""The decoder study, reduced: real demos → train each (decoder, seed) → the same held-out episodes for every arm →
pooled and per-seed success, forwards per chunk, paired tests; cached per (arm, seed)."""

import json

import pytest

from pi0_eqm.envs.stats import paired_comparison
from tests.benchmarks.conftest import load_script

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_decoder_study_end_to_end(tmp_path, monkeypatch, metaworld_home):
    monkeypatch.setenv("PI0_DATA_HOME", str(metaworld_home.data))
    mod = load_script("decoder_study")
    args = mod.Args(arms=("flow-5", "eqm-5", "eqm-paper-300", mod.DEFAULT_ARM), seeds=(1, 2), episodes_per_task=1,
                    max_steps=16, out=str(tmp_path / "out"), **metaworld_home.args())
    out = mod.main(args)
    s = out["summary"]
    assert set(s) == {"flow-5", "eqm-5", "eqm-paper-300", mod.DEFAULT_ARM}
    for arm in s.values():
        assert arm["n"] == 4 and set(arm["per_seed"]) == {1, 2} and 0 <= arm["success_rate"] <= 1
    assert s["flow-5"]["forwards_mean"] == 5
    assert 1 <= s["eqm-5"]["forwards_mean"] <= 5 and s["eqm-paper-300"]["forwards_mean"] > 5
    # Both EqM arms of a seed decode the same checkpoint; one run directory per (decoder, seed).
    runs = tmp_path / "out" / "runs"
    ckpts = {json.loads((runs / a / "seed1_t8.json").read_text())["checkpoint"]
             for a in ("eqm-5", "eqm-paper-300", mod.DEFAULT_ARM)}
    assert len(ckpts) == 1
    assert {"seed1_t8", "seed2_t8"} <= {p.name for p in (metaworld_home.ckpt / "pi0_eqm_metaworld").iterdir()}
    assert {json.loads((runs / a / "seed2_t8.json").read_text())["checkpoint"] for a in ("eqm-5", "flow-5")} == {
        str(metaworld_home.ckpt / "pi0_eqm_metaworld" / "seed2_t8"), str(metaworld_home.ckpt / "pi0_metaworld" / "seed2_t8")}
    # The default arm is paired with every other arm.
    assert {f"{mod.DEFAULT_ARM} vs {a}" for a in ("flow-5", "eqm-5", "eqm-paper-300")} <= set(out["paired"])
    # The paired test is over the same (seed, task, episode) outcomes.
    pair = out["paired"]["eqm-5 vs flow-5"]
    a = [e["success"] for sd in (1, 2) for e in json.loads((runs / "eqm-5" / f"seed{sd}_t8.json").read_text())["episodes"]]
    b = [e["success"] for sd in (1, 2) for e in json.loads((runs / "flow-5" / f"seed{sd}_t8.json").read_text())["episodes"]]
    assert pair == paired_comparison(a, b)
    saved = json.loads((tmp_path / "out" / "decoder_study.json").read_text())
    assert set(saved["summary"]) == set(s) and (tmp_path / "out" / "decoder_study.png").stat().st_size > 1000
    assert "`eqm-5` − `flow-5`" in (tmp_path / "out" / "decoder_study.md").read_text()
    # A second run reuses every cached (arm, seed) result.
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("seed*.json")}
    mod.main(args)
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("seed*.json")} == stamps
