"""Server capacity and lifecycle: connection limits, idle timeout, warm-up before ready, API key, port in use,
validation off the event loop, and micro-batching across connections."""

from __future__ import annotations

import http.client
import threading
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.serving import ObservationSchema
from pi0_eqm.serving import PolicyServer
from pi0_eqm.serving import packb
from pi0_eqm.serving import unpackb
from pi0_eqm.serving.server import CONTROL_KEY
from pi0_eqm.serving.server import bind_socket
from tests.serving.conftest import StatePolicy
from tests.serving.conftest import expected_actions
from tests.serving.conftest import libero_obs

GOOD = libero_obs()


def healthz(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def open_ws(port: int, **kw):
    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=5, **kw)
    ws.recv(timeout=5)
    return ws


def test_connection_limits_and_healthz_capacity():
    with PolicyServer(StatePolicy(), port=0, max_connections=3, max_connections_per_peer=2) as server:
        a, b = open_ws(server.port), open_ws(server.port)
        with pytest.raises(InvalidStatus) as info:  # third from the same peer
            open_ws(server.port)
        assert info.value.response.status_code == 503 and b"too many connections" in info.value.response.body
        assert healthz(server.port) == (200, b"OK\n")  # two of three slots used
        a.close()
        b.close()
    with PolicyServer(StatePolicy(), port=0, max_connections=2, max_connections_per_peer=8) as server:
        conns = [open_ws(server.port), open_ws(server.port)]
        time.sleep(0.1)
        assert healthz(server.port) == (503, b"at capacity\n")
        with pytest.raises(InvalidStatus):
            open_ws(server.port)
        conns.pop().close()
        deadline = time.monotonic() + 5
        while healthz(server.port)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert healthz(server.port) == (200, b"OK\n")
        open_ws(server.port).close()
        conns[0].close()


def test_idle_connection_is_closed():
    with PolicyServer(StatePolicy(), port=0, idle_timeout=0.3) as server:
        ws = open_ws(server.port)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1001 and "idle" in info.value.rcvd.reason
        ws = open_ws(server.port)  # an active connection is kept
        for _ in range(3):
            time.sleep(0.15)
            ws.send(packb(GOOD))
            assert isinstance(ws.recv(timeout=5), bytes)
        ws.close()


def test_resets_and_invalid_frames_do_not_keep_a_connection_open():
    """Idle means no observation: a client that only sends resets (or garbage) is closed after the idle timeout."""
    with PolicyServer(StatePolicy(), port=0, idle_timeout=0.5) as server:
        for frame in (packb({CONTROL_KEY: "reset"}), b"not msgpack"):
            ws = open_ws(server.port)
            start = time.monotonic()
            with pytest.raises(ConnectionClosed) as info:
                while time.monotonic() - start < 5:
                    ws.send(frame)
                    ws.recv(timeout=5)
                    time.sleep(0.05)
            assert info.value.rcvd.code == 1001 and "idle" in info.value.rcvd.reason
            assert time.monotonic() - start < 2.0


def test_not_ready_until_warm_up_is_done():
    gate = threading.Event()
    calls = []

    def warmup():
        calls.append(1)
        gate.wait(10)

    server = PolicyServer(StatePolicy(), port=0, warmup=warmup)
    starter = threading.Thread(target=server.start)
    starter.start()
    try:
        deadline = time.monotonic() + 5
        while not server._started.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert healthz(server.port) == (503, b"warming up\n")
        with pytest.raises(InvalidStatus) as info:
            open_ws(server.port)
        assert info.value.response.status_code == 503
        gate.set()
        starter.join(10)
        assert healthz(server.port) == (200, b"OK\n") and calls == [1]
        open_ws(server.port).close()
    finally:
        gate.set()
        server.stop()


def test_failing_warm_up_fails_the_start():
    def warmup():
        raise KeyError("the checkpoint does not fit this config")

    with pytest.raises(RuntimeError, match="does not fit"):
        PolicyServer(StatePolicy(), port=0, warmup=warmup).start()


def test_api_key_is_required_when_set():
    with PolicyServer(StatePolicy(), port=0, api_key="s3cret") as server:
        with pytest.raises(InvalidStatus) as info:
            open_ws(server.port)
        assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            open_ws(server.port, additional_headers={"Authorization": "Api-Key wrong"})
        ws = open_ws(server.port, additional_headers={"Authorization": "Api-Key s3cret"})
        ws.send(packb(GOOD))
        assert isinstance(ws.recv(timeout=5), bytes)
        ws.close()
        assert healthz(server.port)[0] == 200  # health checks need no key


def test_port_in_use_is_a_one_line_error():
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}: .*in use"):
            bind_socket("127.0.0.1", port)
        with PolicyServer(StatePolicy(), sock=sock) as server:  # the pre-bound socket is what serves
            assert server.port == port
            open_ws(port).close()
    finally:
        sock.close()


class SlowSpec:
    """A schema entry whose check takes 1 s (stands in for validating a huge message)."""

    required = True

    def expected(self) -> str:
        return "anything"

    def check(self, path, value):
        time.sleep(1.0)
        return []


def test_validation_runs_off_the_event_loop():
    schema = ObservationSchema({"slow": SlowSpec()})
    with PolicyServer(StatePolicy(), port=0, schema=schema) as server:
        ws = open_ws(server.port)
        ws.send(packb({**GOOD, "slow": 1}))
        time.sleep(0.1)
        t0 = time.monotonic()
        assert healthz(server.port)[0] == 200
        open_ws(server.port).close()
        assert time.monotonic() - t0 < 0.5
        assert isinstance(ws.recv(timeout=5), bytes)
        ws.close()


class BatchPolicy(StatePolicy):
    """StatePolicy with ``infer_batch``; records the size of every batch. A state of all -1 is a client error."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def infer_batch(self, items):
        time.sleep(0.05)
        self.batches.append(len(items))
        out = []
        for obs, session in items:
            if np.all(obs["observation/state"] == -1):
                out.append(InvalidRequestError("state -1 is refused"))
            else:
                out.append(self.infer(obs, session=session))
        return out


def test_requests_from_different_connections_are_batched():
    policy = BatchPolicy()
    results, errors = {}, []

    def client(i: int):
        try:
            with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as ws:
                ws.recv(timeout=5)
                got = []
                for r in range(6):
                    state = np.full(8, -1 if (i == 0 and r == 2) else 10 * i + r, np.float32)
                    ws.send(packb({**GOOD, "observation/state": state}))
                    reply = ws.recv(timeout=10)
                    got.append((state, reply))
                results[i] = got
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    with PolicyServer(policy, port=0, max_batch=4, max_wait_ms=50) as server:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert max(policy.batches) > 1 and max(policy.batches) <= 4 and sum(policy.batches) == 24
    for i, got in results.items():
        for r, (state, reply) in enumerate(got):
            if i == 0 and r == 2:
                assert reply == "Invalid request: state -1 is refused"
                continue
            np.testing.assert_allclose(unpackb(reply)["actions"], expected_actions(state))


def test_default_limits_serve_a_64_client_evaluation_host():
    """An evaluation host running 64 openpi clients (vla-eval shards) is served with the default limits; the 65th
    connection from that host is refused, so one address never holds every slot."""
    with PolicyServer(StatePolicy(), port=0) as server:
        assert server.max_connections > server.max_connections_per_peer == 64
        conns = [open_ws(server.port) for _ in range(64)]
        try:
            with pytest.raises(InvalidStatus) as info:
                open_ws(server.port)
            assert info.value.response.status_code == 503
            conns[-1].send(packb(GOOD))
            assert isinstance(conns[-1].recv(timeout=5), bytes)
            assert healthz(server.port) == (200, b"OK\n")
        finally:
            for ws in conns:
                ws.close()
