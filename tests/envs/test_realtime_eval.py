"""The evaluator under a simulated inference delay: the exact action timeline of sync / naive / prefix (hold still,
committed prefix, switch index), what each request carries, and the boundary discontinuity; then one reduced run in
the real Meta-World simulator, simulated and wall-clock."""

import numpy as np
import pytest

from pi0_eqm.envs import evaluate as ev
from pi0_eqm.envs import metaworld as mw
from pi0_eqm.envs.realtime import RealtimeConfig
from pi0_eqm.serving.realtime import COMMITTED_KEY
from pi0_eqm.serving.realtime import OVERLAP_KEY

H, S = 8, 4


class ChunkPolicy:
    """Chunk k: row i = [k, i, 0, gripper k%2]; records every request."""

    def __init__(self):
        self.requests = []

    def infer(self, obs):
        k = len(self.requests)
        self.requests.append(obs)
        rows = np.zeros((H, 4), np.float32)
        rows[:, 0], rows[:, 1], rows[:, 3] = k, np.arange(H), k % 2
        return {"actions": rows, "solver": {"iterations": 10}}


class RecordingEnv:
    """The MetaWorldEnv interface, recording executed actions; ``steps`` control steps per episode."""

    task = "fake-v3"
    action_dim = 4

    def __init__(self, steps):
        self.max_steps, self.actions = steps, []

    def reset(self, episode):
        self.actions, self.num_steps = [], 0
        return self._obs()

    def _obs(self):
        return {mw.STATE_KEY: np.full(4, float(self.num_steps), np.float32), "prompt": "x"}

    @property
    def done(self):
        return self.num_steps >= self.max_steps

    success = False

    def step(self, action, render=True):
        self.actions.append(np.asarray(action).copy())
        self.num_steps += 1
        return (self._obs() if render else None), 0.0, self.done


def run(method, d, steps=18):
    pol, env = ChunkPolicy(), RecordingEnv(steps)
    rec = ev.run_episode(pol, env, 0, S, realtime=RealtimeConfig(method=method, delay=d))
    return pol, [tuple(a[:2]) for a in env.actions], rec


def test_naive_executes_the_committed_prefix_then_switches_at_d():
    pol, acts, rec = run("naive", 2)
    hold = [(0, 0)] * 2  # the first chunk: hold still while it is computed
    assert acts[:14] == hold + [(0, i) for i in range(4)] + [(0, 4), (0, 5)] + [(1, 2), (1, 3)] + [(1, 4), (1, 5)] \
        + [(2, 2), (2, 3)]
    assert all(COMMITTED_KEY not in r for r in pol.requests)
    assert rec["delays"][0] == 2 and len(rec["jumps"]) == len(pol.requests) - 1
    # ‖A_1[d] − A_0[s+d]‖ in robot units (no normalize given): [1, 2, 0, 1] − [0, 6, 0, 0]
    np.testing.assert_allclose(rec["jumps"][0], np.sqrt(1 + 16 + 1))


def test_prefix_sends_the_committed_rows_and_the_overlap():
    pol, acts, _ = run("prefix", 2)
    assert acts[:12] == [(0, 0)] * 2 + [(0, i) for i in range(6)] + [(1, 2), (1, 3), (1, 4), (1, 5)]
    req = pol.requests[1]
    np.testing.assert_array_equal(req[COMMITTED_KEY][:, 1], [4, 5])  # A_0[s : s+d]
    np.testing.assert_array_equal(req[OVERLAP_KEY][:, 1], [6, 7])  # A_0[s+d : H]
    assert COMMITTED_KEY not in pol.requests[0]  # the first chunk has no predecessor


def test_sync_holds_still_during_inference_and_restarts_the_chunk():
    pol, acts, _ = run("sync", 3)
    hold = [(0, 0)] * 3
    assert acts[:18] == hold + [(0, i) for i in range(4)] + hold + [(1, i) for i in range(4)] + hold + [(2, 0)]
    assert all(COMMITTED_KEY not in r for r in pol.requests)


def test_zero_delay_is_the_synchronous_loop():
    for method in ("sync", "naive", "prefix"):
        _, acts, _ = run(method, 0)
        assert acts[:12] == [(k, i) for k in range(3) for i in range(4)]


def test_bad_realtime_settings_are_refused():
    with pytest.raises(ValueError, match="d = 9"):
        RealtimeConfig(method="naive", delay=9).check(8)
    with pytest.raises(ValueError, match="method"):
        RealtimeConfig(method="rtc").check(8)
    with pytest.raises(ValueError, match="wall-clock"):
        RealtimeConfig(method="sync", wall_clock=True).check(8)


@pytest.mark.sim
def test_real_simulator_simulated_and_wall_clock():
    pol = ev.ExpertPolicy(horizon=H)
    for rt in (RealtimeConfig(method="prefix", delay=2), RealtimeConfig(method="naive", wall_clock=True,
                                                                      control_hz=50.0)):
        res = ev.evaluate(pol, tasks=("button-press-topdown-v3",), episodes_per_task=1, max_steps=40,
                          replan_every=S, progress=False, realtime=rt, privileged_obs=True)
        ep = res["episodes"][0]
        assert ep["steps"] == 40 or ep["success"]
        assert ep["delays"] and all(d >= 0 for d in ep["delays"])
        assert ep["jumps"] and all(j >= 0 for j in ep["jumps"]) and ep["late"] >= 0
        assert res["config"]["realtime"]["method"] == rt.method
