"""Fixtures for the serving tests: a deterministic test policy and a running server on 127.0.0.1."""

from __future__ import annotations

import collections
from pathlib import Path
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from pi0_eqm.robots import LIBERO
from pi0_eqm.serving import PolicyServer
from pi0_eqm.serving import WireLimits

REPO = Path(__file__).resolve().parents[2]
HORIZON, ACTION_DIM = 50, 7
METADATA = {"reset_pose": [0, -1.5, 1.5, 0, 0, 0], "action_horizon": HORIZON}
# Small caps so the limit cases are cheap; a LIBERO request (~301 KB) fits easily.
TEST_LIMITS = WireLimits(max_message_bytes=1 << 20, max_depth=8, max_rank=4)


def expected_actions(state: np.ndarray) -> np.ndarray:
    """What StatePolicy answers: row t is state[:7] * (t + 1), so each client's answer is checkable."""
    return np.asarray(state, np.float64)[:ACTION_DIM][None, :] * np.arange(1, HORIZON + 1, dtype=np.float64)[:, None]


class StatePolicy:
    """Deterministic stand-in for the pi0 Policy with per-session state (a call counter, like a warm start).

    Special prompts: "raise" raises inside infer (internal error path); "sleep:<s>" sleeps s seconds first.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.steps: collections.Counter[str] = collections.Counter()
        self.resets: list[str] = []
        self.sessions: set[str] = set()

    def infer(self, obs: dict, session: str | None = None) -> dict:
        prompt = obs.get("prompt", "")
        if prompt == "raise":
            raise RuntimeError("boom: the test policy was asked to fail")
        if prompt.startswith("sleep:"):
            time.sleep(float(prompt.split(":", 1)[1]))
        with self.lock:
            step = self.steps[session]
            self.steps[session] += 1
            self.sessions.add(session)
        return {
            "actions": expected_actions(obs["observation/state"]),
            "step": step,
            "session": session,
            "policy_timing": {"infer_ms": 0.5},
        }

    def reset(self, session: str | None = None) -> None:
        with self.lock:
            self.resets.append(session)
            self.steps.pop(session, None)


def libero_obs(state=None, prompt: str = "pick up the black bowl", rng: np.random.Generator | None = None) -> dict:
    rng = rng or np.random.default_rng(0)
    return {
        "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/state": np.arange(8, dtype=np.float32) if state is None else np.asarray(state, np.float32),
        "prompt": prompt,
    }


@pytest.fixture(scope="module")
def served():
    """(server, policy) with the LIBERO schema on 127.0.0.1, a free port and 4 inference workers."""
    policy = StatePolicy()
    server = PolicyServer(
        policy, host="127.0.0.1", port=0, metadata=METADATA, schema=LIBERO.schema(), limits=TEST_LIMITS, max_workers=4
    )
    server.start()
    yield server, policy
    server.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(port: int) -> int | None:
    """The HTTP status of a server's ``/healthz`` on ``port`` (``None``: nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None
