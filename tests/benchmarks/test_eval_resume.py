"""``scripts/eval.py`` keeps every finished episode in ``<out>/episodes.jsonl`` (an ``EpisodeLog``): a stopped
evaluation loses none, the same command runs only the rest, and another evaluation's ``--out`` is refused."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pi0_eqm.envs.episode_log import EpisodeLog
from tests.benchmarks.conftest import REPO
from tests.benchmarks.conftest import TASKS
from tests.benchmarks.conftest import load_script

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_a_stopped_evaluation_keeps_its_episodes_and_resumes(tmp_path, metaworld_home):
    run = metaworld_home.ckpt / "pi0_eqm_metaworld" / "seed1_t8"
    out = tmp_path / "eval"
    cmd = [sys.executable, str(REPO / "scripts" / "eval.py"), "--checkpoint", str(run), "--tasks", *TASKS,
           "--episodes-per-task", "3", "--max-steps", "12", "--replan-every", "4", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PI0_DATA_HOME": str(metaworld_home.data)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = EpisodeLog(out / "episodes.jsonl")
    deadline = time.monotonic() + 300
    while len(log.read()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    kept = log.read()
    assert 2 <= len(kept) < 6 and not (out / "results.json").exists()
    with open(log.path, "a") as f:
        f.write('{"task": "torn')  # a write cut short by the kill

    mod = load_script("eval")
    args = mod.Args(checkpoint=str(run), tasks=TASKS, episodes_per_task=3, max_steps=12, replan_every=4,
                    out=str(out))
    result = mod.main(args)
    records = log.read()
    assert records[: len(kept)] == kept and len(records) == 6  # only the missing episodes ran
    assert sorted((r["task"], r["episode"]) for r in records) == sorted((t, e) for t in TASKS for e in range(3))
    assert result["overall"]["n"] == 6
    assert json.loads((out / "results.json").read_text())["overall"]["n"] == 6
    mod.main(args)  # nothing left to run
    assert len(log.read()) == 6

    with pytest.raises(ValueError, match=r"another evaluation \(different seed\)"):
        mod.main(dataclasses.replace(args, seed=7))
