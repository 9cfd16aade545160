"""The KI ablation, reduced: real Meta-World demos → norm stats + FAST fit → KI / joint training → success vs steps."""

import json

import pytest

from pi0_eqm.models.fast import FastTokenizer
from tests.benchmarks.conftest import load_script

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_ki_ablation_end_to_end(tmp_path, monkeypatch, metaworld_home):
    monkeypatch.setenv("PI0_DATA_HOME", str(metaworld_home.data))  # the shared demos (2 tasks × 2, 64 px)
    mod = load_script("ki_ablation")
    common = dict(demos_per_task=2, train_steps=8, eval_every=4, batch_size=8, episodes_per_task=1, max_steps=16,
                  tasks=("handle-press-v3", "coffee-button-v3"), out=str(tmp_path / "out"),
                  checkpoint_base_dir=str(tmp_path / "ckpt"), assets_base_dir=str(tmp_path / "assets"),
                  progress=False)
    out = mod.main(mod.Args(arms=("eqm_ki", "flow_joint"), **common))
    for arm in ("eqm_ki", "flow_joint"):
        assert sorted(out["results"][arm], key=int) == ["4", "8"]
        for row in out["results"][arm].values():
            assert row["episodes"] == 2 and 0.0 <= row["mean_success"] <= 1.0
        assert out["train"][arm]["fast_ce"] > 0 and out["train"][arm]["samples_per_s"] > 0
    assert out["results"]["flow_joint"]["8"]["iters_mean"] == 10
    # Each arm fitted its own FAST tokenizer next to its norm stats; the joint arm is a separately named run.
    for name in ("pi0_eqm_ki_metaworld", "pi0_joint_metaworld"):
        tok = FastTokenizer.load(tmp_path / "assets" / name / "metaworld" / "fast_tokenizer")
        assert (tok.action_horizon, tok.action_dim) == (16, 4)
    assert (tmp_path / "ckpt" / "pi0_joint_metaworld" / "ki_ablation" / "4" / "params").is_dir()
    # A later invocation adds arms without dropping the earlier ones.
    again = mod.main(mod.Args(arms=("eqm_ki",), **common))
    assert set(again["results"]) == {"eqm_ki", "flow_joint"}
    saved = json.loads((tmp_path / "out" / "ki_ablation.json").read_text())
    assert set(saved["results"]) == {"eqm_ki", "flow_joint"}
    assert (tmp_path / "out" / "ki_ablation.png").stat().st_size > 1000
