"""A sharded LIBERO evaluation through allenai's vla-eval orchestrator, on a CPU, with this project's extras only (no
PyTorch): ``examples/vla_eval/pi0_eqm_server.py`` on the shared trained checkpoint, ``run_libero.py`` with 2 shards ×
1 short episode of the real LIBERO simulator, the harness's own records and summary."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.serving.conftest import REPO
from tests.serving.conftest import free_port

if importlib.util.find_spec("vla_eval") is None or importlib.util.find_spec("libero") is None:
    if os.environ.get("CI"):
        raise RuntimeError("vla-eval and LIBERO must be installed in CI: uv sync --extra vla-eval --extra libero")
    pytest.skip("needs uv sync --extra vla-eval --extra libero", allow_module_level=True)

pytestmark = [pytest.mark.sim, pytest.mark.slow]
HERE = REPO / "examples" / "vla_eval"


def test_the_harness_s_own_libero_class_needs_torch():
    """Why examples/vla_eval/libero_benchmark.py exists: vla-eval 0.8.0's class imports torch, not installed here.
    When this fails, the harness no longer needs it and the subclass can go."""
    from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark

    assert importlib.util.find_spec("torch") is None
    with pytest.raises(ModuleNotFoundError, match="torch"):
        LIBEROBenchmark().get_tasks()


def test_two_shards_evaluate_libero_through_the_harness(trained_libero, tmp_path):
    cfg, step_dir = trained_libero
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "pi0_eqm_server.py"), "--args.checkpoint", str(step_dir),
                               "--args.config", cfg.name, "--args.max_batch_size", "2", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = tmp_path / "results"
    try:
        run = subprocess.run([sys.executable, str(HERE / "run_libero.py"), "--shards", "2", "--server-url",
                              f"ws://127.0.0.1:{port}", "--output-dir", str(out), "--eval-id", "test", "--server-wait-s",
                              "300", "--", "--benchmark-field", "max_tasks=2", "--benchmark-field", "max_steps=8",
                              "--param", "num_steps_wait=2"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        server.terminate()
        log = server.communicate(timeout=60)[0]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    (summary,) = [json.loads(p.read_text()) for p in out.glob("*_aggregate.json")]
    assert summary["server_info"]["model_server"] == "Pi0EqmModelServer"
    episodes = [e for t in summary["tasks"] for e in t["episodes"]]
    assert sorted(e["task_id"] for e in episodes) == [0, 1]
    assert all(e["steps"] == 8 and e["metrics"]["success"] in (True, False) for e in episodes)
    for shard in (0, 1):  # the harness gave each shard one of the two episodes
        assert (out / f"shard-{shard}.log").read_text().count(" ep0: ") == 1
    assert "over 2 episodes (2 tasks)" in run.stdout, run.stdout


def test_the_launcher_s_bad_input_is_one_line_and_exit_2(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(HERE / "run_libero.py"), *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    for args, says in [(["--shards", "0"], "--shards must be at least 1"),
                       (["--server-url", "http://x"], "expected ws://HOST:PORT"),
                       (["--config", "nope.yaml"], "no such file"),
                       (["--server-url", f"ws://127.0.0.1:{free_port()}", "--server-wait-s", "0.5",
                         "--output-dir", str(tmp_path / "out")], "no model server at")]:
        proc = run(*args)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "out" / "shard-0.log").exists()  # nothing started without a server
