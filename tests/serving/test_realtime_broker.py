"""AsyncChunkBroker: executes the current chunk while the next request is in flight, sends the committed prefix it
expects, switches at the measured delay, drops replies of ended episodes, and never invents actions."""

import threading

import numpy as np
import pytest

from pi0_eqm.serving.realtime import COMMITTED_KEY
from pi0_eqm.serving.realtime import OVERLAP_KEY
from pi0_eqm.serving.realtime import AsyncChunkBroker
from pi0_eqm.serving.realtime import ChunkExhaustedError

H = 8


class GatedPolicy:
    """Chunk k is ``k + 0.01·i`` in row i; every request after the first waits until the test opens its gate."""

    def __init__(self, fail_on=()):
        self.requests, self.fail_on = [], set(fail_on)
        self.gates = [threading.Event() for _ in range(10)]
        self.done = [threading.Event() for _ in range(10)]
        self.gates[0].set()

    def infer(self, obs):
        k = len(self.requests)
        self.requests.append(obs)
        self.gates[k].wait(10)
        try:
            if k in self.fail_on:
                raise RuntimeError("server said no")
            return {"actions": np.full((H, 2), float(k)) + 0.01 * np.arange(H)[:, None]}
        finally:
            self.done[k].set()


def step(broker, t):
    return float(broker.infer({"t": t})["actions"][0])


def test_switches_at_the_measured_delay_and_sends_the_expected_prefix():
    pol = GatedPolicy()
    b = AsyncChunkBroker(pol, execute=3, expected_delay=2)
    got = [step(b, t) for t in range(5)]  # chunk 0 rows 0..4; the request for chunk 1 left at row 3
    assert got == pytest.approx([0.00, 0.01, 0.02, 0.03, 0.04])
    sent = pol.requests[1]
    np.testing.assert_allclose(sent[COMMITTED_KEY][:, 0], [0.03, 0.04])  # A_0[s : s+d]
    np.testing.assert_allclose(sent[OVERLAP_KEY][:, 0], [0.05, 0.06, 0.07])  # A_0[s+d : H]
    got.append(step(b, 5))  # still waiting: row 5 of chunk 0
    pol.gates[1].set()
    pol.done[1].wait(5)
    got.append(step(b, 6))  # the reply arrived 3 steps after the request: chunk 1 from row 3
    assert got[-2:] == pytest.approx([0.05, 1.03])
    assert [r.delay for r in b.records] == [0, 3]
    assert b.records[0].replaced is None and b.records[1].replaced[0] == pytest.approx(0.06)  # A_0[6]: replaced
    b.close()


def test_a_reply_of_an_ended_episode_is_dropped():
    pol = GatedPolicy()
    b = AsyncChunkBroker(pol, execute=2, expected_delay=1)
    [step(b, t) for t in range(3)]  # request 1 in flight
    b.reset()
    pol.gates[1].set()
    pol.done[1].wait(5)
    pol.gates[2].set()
    assert step(b, 0) == pytest.approx(2.0)  # the new episode's first chunk (request 2), not the stale reply
    assert COMMITTED_KEY not in pol.requests[2]
    b.close()


def test_a_failed_request_falls_back_to_the_current_chunk_then_stops():
    pol = GatedPolicy(fail_on={1})
    b = AsyncChunkBroker(pol, execute=2, expected_delay=1)
    pol.gates[1].set()
    got = [step(b, t) for t in range(H)]  # the whole of chunk 0, nothing invented
    assert got == pytest.approx([0.01 * i for i in range(H)])
    assert b.errors and "server said no" in b.errors[0]
    with pytest.raises(ChunkExhaustedError, match="exhausted"):
        step(b, H)
    b.close()


def test_naive_mode_sends_no_prefix():
    pol = GatedPolicy()
    b = AsyncChunkBroker(pol, execute=2, expected_delay=2, send_prefix=False)
    [step(b, t) for t in range(3)]
    assert COMMITTED_KEY not in pol.requests[1] and OVERLAP_KEY not in pol.requests[1]
    pol.gates[1].set()
    b.close()


def test_a_chunk_that_runs_out_waits_for_the_reply_in_flight():
    pol = GatedPolicy()
    b = AsyncChunkBroker(pol, execute=6, expected_delay=1)
    [step(b, t) for t in range(H)]  # rows 0..7 of chunk 0; request 1 left at row 6 and is still gated
    threading.Timer(0.2, pol.gates[1].set).start()
    assert step(b, H) == pytest.approx(1.02)  # waited, then chunk 1 at the delay so far (8 − 6 = 2)
    assert b.late == 1 and [r.delay for r in b.records] == [0, 2]
    b.close()
