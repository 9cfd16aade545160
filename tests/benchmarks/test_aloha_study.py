"""The ALOHA study's bookkeeping on hand-made eval results: which (task, arm) pairs run, per-task summaries with the
episodes' best reward, paired comparisons per task and over both tasks on the same episodes, the default arm first.
(Its pipeline — demos, training, closed-loop evaluation — is ``tests/envs/test_aloha_sim.py``'s.)"""

import pytest

from pi0_eqm.envs.stats import paired_comparison
from tests.benchmarks.conftest import load_script


def _result(successes, rewards, forwards=10):
    return {"episodes": [{"episode": i, "success": s, "max_reward": r, "latency_s": [0.004, 0.006],
                          "stats": {"solver/iterations": [forwards, forwards]}}
                         for i, (s, r) in enumerate(zip(successes, rewards, strict=True))]}


def test_the_aloha_study_summarizes_and_pairs_per_task_and_over_both():
    mod = load_script("aloha_study")
    args = mod.Args()
    assert mod._runs(args)[:3] == [("transfer_cube", "eqm-10"), ("transfer_cube", "flow-10"),
                                   ("transfer_cube", "eqm-paper")]
    assert ("insertion", "pi05-eqm-10") not in mod._runs(args)  # π₀.5 arms: transfer cube only
    assert {arm for task, arm in mod._runs(args) if task == "insertion"} == {"eqm-10", "flow-10", "eqm-paper"}

    results = {"transfer_cube": {"eqm-10": {42: _result([1, 1, 0], [4, 4, 2]), 43: _result([0, 1, 0], [1, 4, 0])},
                                 "flow-10": {42: _result([0, 1, 0], [3, 4, 2]), 43: _result([0, 0, 0], [1, 2, 0])}},
               "insertion": {"eqm-10": {42: _result([0, 0, 1], [2, 1, 4]), 43: _result([0, 0, 0], [0, 0, 0])},
                             "flow-10": {42: _result([0, 0, 0], [2, 2, 1]), 43: _result([0, 0, 0], [1, 0, 0])}}}
    s = mod.summarize(results["transfer_cube"])
    assert s["eqm-10"]["n"] == 6 and s["eqm-10"]["success_rate"] == pytest.approx(0.5)
    assert s["eqm-10"]["per_seed"] == pytest.approx([2 / 3, 1 / 3]) and s["eqm-10"]["forwards_mean"] == 10
    assert s["eqm-10"]["max_reward_mean"] == pytest.approx(15 / 6) and s["flow-10"]["max_reward_mean"] == 2
    del results["insertion"]["flow-10"][43]["episodes"][0]["max_reward"]  # an older result without rewards
    assert mod.summarize(results["insertion"])["flow-10"]["max_reward_mean"] is None

    one = mod.paired({"insertion": results["insertion"]}, "eqm-10", "flow-10")
    assert one == paired_comparison([0, 0, 1, 0, 0, 0], [0] * 6)
    both = mod.paired(results, "eqm-10", "flow-10")
    assert both["n"] == 12 and (both["a_only"], both["b_only"]) == (3, 0)
    table = mod.markdown({t: mod.summarize(r) for t, r in results.items()}, {("all", "eqm-10", "flow-10"): both})
    assert "| transfer_cube | `eqm-10` (default) |" in table and "| insertion | `flow-10` |" in table
    assert "| `eqm-10` − `flow-10` (n = 12) | all |" in table
    assert table.index("| transfer_cube | `eqm-10`") < table.index("| transfer_cube | `flow-10`")


def test_the_aloha_study_refuses_unknown_arms_and_tasks():
    mod = load_script("aloha_study")
    with pytest.raises(SystemExit, match="unknown arm"):
        mod.main(mod.Args(arms=("eqm-11",)))
    with pytest.raises(SystemExit, match="fold"):
        mod.main(mod.Args(tasks=("fold",)))
    with pytest.raises(SystemExit, match="no arm has a config"):
        mod.main(mod.Args(arms=("pi05-eqm-10",), tasks=("insertion",)))
