"""scripts/serve_policy.py end to end on a real (tiny) LIBERO checkpoint: port in use, no robot, warm-up, metadata."""

import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest

from pi0_eqm.serving.client import WebsocketClientPolicy
from pi0_eqm.serving.server import bind_socket
from pi0_eqm.training.config import get_config
from tests.policies.conftest import libero_obs
from tests.serving.conftest import REPO
from tests.serving.conftest import free_port
from tests.serving.conftest import health

SCRIPT = REPO / "scripts" / "serve_policy.py"


def load_script():
    spec = importlib.util.spec_from_file_location("serve_policy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_port_in_use_is_one_line_before_the_checkpoint_loads(trained_libero):
    cfg, step_dir = trained_libero
    sock = bind_socket("127.0.0.1", 0)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(step_dir), "--config", cfg.name,
                               "--port", str(sock.getsockname()[1])], capture_output=True, text=True, timeout=300)
    finally:
        sock.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "(run with --debug for the traceback)", proc.stderr[-2000:]
    assert lines[-2].startswith("error: cannot listen on 127.0.0.1:") and "in use" in lines[-2], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "loading" not in proc.stderr.lower()
    assert time.monotonic() - t0 < 120


def test_config_without_robot_is_refused(monkeypatch, tmp_path):
    module = load_script()
    monkeypatch.setattr("pi0_eqm.policies.policy_config.resolve_checkpoint",
                        lambda checkpoint, config: (get_config("debug"), tmp_path))
    with pytest.raises(ValueError, match="has no robot"):
        module.build_server(module.Args(checkpoint=str(tmp_path), config="debug"))


def test_served_checkpoint_is_ready_after_warm_up_and_declares_its_assumptions(trained_libero):
    cfg, step_dir = trained_libero
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--checkpoint", str(step_dir), "--config", cfg.name,
                             "--port", str(port), "--max-batch", "2", "--warm-start", "aligned", "--executed", "5",
                             "--warm-variants", "bb"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            status = health(port)
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                break
            time.sleep(0.2)
        assert seen[-1] == 200, (seen, proc.stdout.read() if proc.poll() is not None else "")
        assert all(s in (None, 503) for s in seen[:-1]), seen
        with WebsocketClientPolicy("127.0.0.1", port, connect_timeout=10) as client:
            meta = client.get_server_metadata()
            assert meta["executed_actions_per_chunk"] == 5 and meta["warm_start"] == "aligned"
            assert meta["new_episode_detection"]["gap_s"] > 0 and meta["max_batch"] == 2
            t0 = time.monotonic()
            out = client.infer(libero_obs(np.random.default_rng(0)))
            assert out["actions"].shape == (cfg.model.action_horizon, 7)
            assert time.monotonic() - t0 < 5  # compiled during the warm-up, not now
            t0 = time.monotonic()
            bb = client.infer({**libero_obs(np.random.default_rng(2)), "decoder_settings": {"variant": "bb"}})
            assert bb["actions"].shape == out["actions"].shape and time.monotonic() - t0 < 5  # --warm-variants
            with pytest.raises(RuntimeError, match="variant='gd' are not compiled on this server"):
                client.infer({**libero_obs(np.random.default_rng(3)), "decoder_settings": {"variant": "gd"}})
            with pytest.raises(RuntimeError, match="above this server's per-request cap of 100"):
                client.infer({**libero_obs(np.random.default_rng(1)), "decoder_settings": {"max_iters": 10_000}})
    finally:
        proc.terminate()
        proc.wait(30)
