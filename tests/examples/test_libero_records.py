"""The LIBERO runner's records without a simulator: the per-episode log (``EpisodeLog``: a torn last line, appends
after it), per-chunk fields, the Wilson summary per task and suite."""

import importlib.util
import json
from pathlib import Path
import sys

import pytest

from pi0_eqm.envs.episode_log import EpisodeLog
from pi0_eqm.envs.stats import wilson_interval

REPO = Path(__file__).resolve().parents[2]


def runner():
    spec = importlib.util.spec_from_file_location("libero_main", REPO / "examples" / "libero" / "main.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _record(task_id, init_state, success, iterations=(10, 10)):
    return {"suite": "libero_object", "task_id": task_id, "prompt": f"task {task_id}", "episode": init_state,
            "init_state": init_state, "success": success, "steps": 5,
            "chunks": [{"iterations": i, "residual": 0.5, "server_ms": 3.0, "policy_ms": 2.0, "round_trip_ms": 4.0}
                       for i in iterations]}


def test_a_torn_last_line_is_left_out_so_that_episode_runs_again(tmp_path):
    log = EpisodeLog(tmp_path / "episodes.jsonl")
    log.append(_record(0, 48, True))
    log.append(_record(0, 49, False))
    with open(log.path, "a") as f:
        f.write('{"suite": "libero_object", "task_id": 1')  # killed mid-write
    assert [(r["task_id"], r["init_state"]) for r in log.read()] == [(0, 48), (0, 49)]
    log.append(_record(1, 48, True))  # the rerun's record starts on a line of its own
    assert log.done(lambda r: (r["task_id"], r["init_state"])) == {(0, 48), (0, 49), (1, 48)}
    log.path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="is not an episode record"):
        log.read()


def test_summary_has_wilson_intervals_per_task_and_suite():
    main = runner()
    records = [_record(0, 48, True), _record(0, 49, False), _record(3, 48, False, iterations=(4,))]
    summary = main.summarize(records, "libero_object")
    assert summary["tasks"]["0"]["success_rate"] == 0.5
    assert summary["tasks"]["0"]["ci95"] == list(wilson_interval(1, 2))
    assert summary["tasks"]["3"]["ci95"] == list(wilson_interval(0, 1))
    assert summary["total"]["n"] == 3 and summary["total"]["ci95"] == list(wilson_interval(1, 3))
    assert summary["chunks"] == 5 and summary["iterations_mean"] == pytest.approx(44 / 5)
    table = main.format_table(summary)
    assert "libero_object" in table and "[0.09, 0.91]" in table  # Wilson 95% for 1/2


def test_chunk_record_reads_what_the_server_returns():
    main = runner()
    reply = {"actions": [[0.0] * 7], "solver": {"iterations": 7, "final_residual": 0.02},
             "server_timing": {"infer_ms": 12.5}, "policy_timing": {"infer_ms": 11.0}}
    assert main.chunk_record(reply, 20.0) == {"iterations": 7, "residual": 0.02, "server_ms": 12.5,
                                              "policy_ms": 11.0, "round_trip_ms": 20.0}
    # openpi's own server sends no solver fields: the record says so instead of failing
    assert main.chunk_record({"actions": []}, 5.0)["iterations"] is None
    json.dumps(main.chunk_record(reply, 1.0))
