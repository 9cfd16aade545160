"""The policy server over real websockets on 127.0.0.1: malformed messages, errors, sessions, concurrency, health."""

from __future__ import annotations

import http.client
import threading
import time

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pi0_eqm.serving import PolicyServer
from pi0_eqm.serving import packb
from pi0_eqm.serving import unpackb
from tests.serving.conftest import HORIZON
from tests.serving.conftest import METADATA
from tests.serving.conftest import StatePolicy
from tests.serving.conftest import expected_actions
from tests.serving.conftest import libero_obs
from tests.serving.load import run_load

GOOD = libero_obs()


def nd(data: bytes, dtype, shape) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def with_state(state) -> bytes:
    """A packed LIBERO request whose state entry is replaced by ``state`` (raw msgpack-able value)."""
    raw = {k: v for k, v in GOOD.items() if k != "observation/state"}
    return packb({**raw, "observation/state": state})


def with_obs(key: str, value) -> bytes:
    return packb({**GOOD, key: value})


def without(key: str) -> bytes:
    return packb({k: v for k, v in GOOD.items() if k != key})


def nested(depth: int):
    x = 1
    for _ in range(depth):
        x = [x]
    return x


def ws_connect(port: int):
    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=10)
    assert unpackb(ws.recv(timeout=10)) == METADATA
    return ws


def request(ws, frame, timeout: float = 10):
    ws.send(frame)
    return ws.recv(timeout=timeout)


def assert_good_reply(reply, state=GOOD["observation/state"]):
    assert isinstance(reply, bytes), f"expected a binary reply, got: {reply!r:.500}"
    out = unpackb(reply)
    np.testing.assert_allclose(out["actions"], expected_actions(state))
    assert out["actions"].shape == (HORIZON, 7)
    assert out["server_timing"]["infer_ms"] >= 0 and out["policy_timing"] == {"infer_ms": 0.5}
    return out


F4 = "<f4"
STATE8 = np.zeros(8, np.float32).tobytes()
# (case id, frame sent, substring of the error reply). Every case must get a text frame "Invalid request: ..." and
# leave the connection usable.
MALFORMED = [
    ("wrong_dtype_int", with_state(np.arange(8)), "observation/state: dtype 'int64' is not allowed; expected float"),
    ("object_dtype", with_state(nd(b"\0" * 64, "|O", [8])), "observation/state: dtype '|O' is not allowed"),
    ("void_dtype", with_state(nd(STATE8, "|V4", [8])), "dtype '|V4' is not allowed"),
    ("complex_dtype", with_state(nd(b"\0" * 64, "<c8", [8])), "dtype '<c8' is not allowed"),
    ("datetime_dtype", with_state(nd(b"\0" * 64, "<M8[s]", [8])), "dtype '<M8[s]' is not a valid dtype string"),
    ("bad_dtype_string", with_state(nd(STATE8, "<f4;rm", [8])), "is not a valid dtype string"),
    ("unparsable_dtype", with_state(nd(STATE8, "<q9", [8])), "could not be parsed"),
    ("truncated_data", with_state(nd(STATE8[:-1], F4, [8])), "data has 31 bytes but shape [8]"),
    ("extra_data", with_state(nd(STATE8 + b"\0", F4, [8])), "data has 33 bytes"),
    ("huge_shape", with_state(nd(b"", F4, [1 << 31, 1 << 31])), "elements; expected at most"),
    ("negative_shape", with_state(nd(STATE8, F4, [-8])), "negative dimension"),
    ("rank_too_high", with_state(nd(b"\0" * 4, F4, [1] * 5)), "has rank 5; expected rank <= 4"),
    ("shape_not_ints", with_state(nd(STATE8, F4, [8.0])), "shape must be a list of ints"),
    ("message_too_big", with_obs("blob", b"\0" * (1 << 20)), "bytes exceeds the limit of 1048576 bytes"),
    ("missing_key", without("observation/wrist_image"), "observation/wrist_image: required key is missing"),
    ("missing_prompt", without("prompt"), "prompt: required key is missing; expected a str of at most 4096 char"),
    ("wrong_image_size", with_obs("observation/image", np.zeros((256, 256, 3), np.uint8)), "image shape (256, 256, 3)"),
    ("image_chw", with_obs("observation/image", np.zeros((3, 224, 224), np.uint8)), "expected uint8 image"),
    ("wrong_image_dtype", with_obs("observation/image", np.zeros((224, 224, 3), np.float32)), "image dtype 'float32'"),
    ("nan_state", with_state(np.array([np.nan] + [0] * 7, np.float32)), "1 NaN and 0 inf"),
    ("inf_state", with_state(np.array([np.inf, -np.inf] + [0] * 6, np.float32)), "0 NaN and 2 inf"),
    ("wrong_state_dim", with_state(np.zeros(7, np.float32)), "observation/state: shape (7,) is wrong; expected (8,)"),
    ("state_as_list", with_state([0.0] * 8), "observation/state: expected a float array of shape (8,), got list"),
    ("prompt_wrong_type", with_obs("prompt", 42), "prompt: expected a str"),
    ("non_msgpack", b"\xc1GET / HTTP/1.1\r\n", "not valid msgpack"),
    ("truncated_msgpack", packb(GOOD)[:5000], "not valid msgpack"),
    ("trailing_bytes", packb(GOOD) + b"\x00", "trailing bytes"),
    ("empty_frame", b"", "empty message"),
    ("text_frame", "{'observation/state': [0, 0]}", "got a text frame; expected a binary frame"),
    ("too_deep", with_obs("extra", nested(12)), "nesting depth 9 exceeds the limit of 8"),
    ("top_level_list", packb([1, 2, 3]), "expected a map (dict) of observation keys at top level, got list"),
    ("top_level_int", packb(7), "got int"),
    ("non_str_key", msgpack.packb({b"observation/state": 1}), "is not a str"),
    ("ext_type", msgpack.packb({"x": msgpack.ExtType(1, b"abc")}), "extension type 1 is not allowed"),
    ("bad_unicode_array", with_obs("prompt", nd(b"\xff" * 8, "<U2", [])), "invalid code points"),
    ("npgeneric_wrong_payload", with_obs("prompt", {b"__npgeneric__": True, b"data": [1], b"dtype": "<U3"}), "carries"),
    ("unknown_control", packb({"__control__": "shutdown"}), "unknown control message"),
    ("bad_reset_flag", with_obs("__reset__", "yes"), "__reset__: expected a bool"),
    ("state_overflows_float32", with_state(np.full(8, 1e300)), "8 value(s) overflow float32"),
    ("state_too_large", with_state(np.full(8, 3e38, np.float32)), "magnitude 3e+38 is above the allowed 1e+06"),
    ("control_value_ndarray", packb({"__control__": np.array(["reset"])}), "__control__ = ndarray"),
    ("control_with_extra_keys", packb({"__control__": "reset", "x": 1}), "unknown control message"),
    ("zero_size_huge_dims", with_obs("x", nd(b"", F4, [1 << 31, 1 << 31, 0])), "per dimension"),
    ("too_many_values", with_obs("x", [[None] * 9_000] * 25), "more than 20000 values"),
    ("container_too_long", with_obs("x", [None] * 10_001), "too long"),
]


@pytest.mark.parametrize(("frame", "needle"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_message_gets_error_and_connection_survives(served, frame, needle):
    server, _ = served
    with ws_connect(server.port) as ws:
        reply = request(ws, frame)
        assert isinstance(reply, str), f"expected a text error frame, got {len(reply)} bytes"
        assert reply.startswith("Invalid request: ") and needle in reply, reply
        assert_good_reply(request(ws, packb(GOOD)))  # same connection keeps working


def test_all_malformed_in_a_row_then_good(served):
    server, _ = served
    with ws_connect(server.port) as ws:
        for _, frame, needle in MALFORMED:
            reply = request(ws, frame)
            assert isinstance(reply, str) and needle in reply, reply
        assert_good_reply(request(ws, packb(GOOD)))
    with ws_connect(server.port) as ws:  # and a new connection too
        assert_good_reply(request(ws, packb(GOOD)))


def test_schema_error_lists_every_problem(served):
    server, _ = served
    bad = {"observation/image": np.zeros((2, 2), np.uint8), "observation/state": np.full(8, np.nan), "prompt": 1}
    with ws_connect(server.port) as ws:
        reply = request(ws, packb(bad))
    assert "4 problems" in reply and "observation/wrist_image: required key is missing" in reply, reply


def test_over_websocket_cap_closes_1009_and_server_survives(served):
    server, _ = served
    with ws_connect(server.port) as ws:
        ws.send(b"\0" * (server.ws_max_size + 1))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    with ws_connect(server.port) as ws:
        assert_good_reply(request(ws, packb(GOOD)))


def test_internal_error_names_the_type_without_traceback_and_closes_1011(served):
    server, policy = served
    with ws_connect(server.port) as ws:
        out = assert_good_reply(request(ws, packb(GOOD)))
        session = out["session"]
        reply = request(ws, packb({**GOOD, "prompt": "raise"}))
        assert isinstance(reply, str) and reply.startswith("Internal server error (RuntimeError, reference "), reply
        assert "Traceback" not in reply and ".py" not in reply and "boom" not in reply  # no source paths or text
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd.code == 1011
    deadline = time.monotonic() + 5
    while session not in policy.resets and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session in policy.resets
    with ws_connect(server.port) as ws:
        assert_good_reply(request(ws, packb(GOOD)))


def test_sessions_timing_and_reset(served):
    server, policy = served
    with ws_connect(server.port) as ws:
        first = assert_good_reply(request(ws, packb(GOOD)))
        assert first["step"] == 0 and "prev_total_ms" not in first["server_timing"]
        second = assert_good_reply(request(ws, packb(GOOD)))
        assert second["step"] == 1 and second["session"] == first["session"]
        assert second["server_timing"]["prev_total_ms"] >= first["server_timing"]["infer_ms"]
        ack = unpackb(request(ws, packb({"__control__": "reset"})))
        assert ack == {"__control__": "reset", "ok": True, "session": first["session"]}
        assert assert_good_reply(request(ws, packb(GOOD)))["step"] == 0
        assert assert_good_reply(request(ws, packb(GOOD)))["step"] == 1
        assert assert_good_reply(request(ws, packb({**GOOD, "__reset__": True})))["step"] == 0
        with ws_connect(server.port) as other:
            assert assert_good_reply(request(other, packb(GOOD)))["session"] != first["session"]
    deadline = time.monotonic() + 5
    while policy.resets.count(first["session"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert policy.resets.count(first["session"]) == 3  # control, flag, close


def test_healthz_and_plain_http(served):
    server, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"OK\n"
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().status == 426  # not a websocket upgrade
    conn.close()


def test_concurrent_clients_get_their_own_answers(served):
    server, _ = served
    n_clients, n_requests = 6, 5
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def client(i: int):
        try:
            with ws_connect(server.port) as ws:
                got = []
                for r in range(n_requests):
                    state = np.full(8, 10 * i + r, np.float32)
                    obs = {**GOOD, "observation/state": state, "prompt": "sleep:0.05"}
                    got.append((state, unpackb(request(ws, packb(obs), timeout=30))))
                results[i] = got
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(results) == list(range(n_clients))
    sessions = set()
    for got in results.values():
        for step, (state, out) in enumerate(got):
            np.testing.assert_allclose(out["actions"], expected_actions(state))
            assert out["step"] == step
        sessions.add(got[0][1]["session"])
    assert len(sessions) == n_clients


def test_long_inference_does_not_block_event_loop():
    """With one worker busy for 1.5 s, health checks, new connections and pings are still answered promptly."""
    server = PolicyServer(
        StatePolicy(), "127.0.0.1", 0, metadata=METADATA, max_workers=1, ping_interval=0.2, ping_timeout=0.5
    )
    server.start()
    try:
        with connect(f"ws://127.0.0.1:{server.port}", compression=None, ping_interval=0.2, ping_timeout=0.5) as ws:
            ws.recv(timeout=5)
            ws.send(packb({**GOOD, "prompt": "sleep:1.5"}))
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            conn.close()
            ws_connect(server.port).close()  # the metadata frame arrives while inference is running
            assert time.monotonic() - t0 < 1.0
            out = unpackb(ws.recv(timeout=10))  # pings at 0.2 s / timeout 0.5 s survived the 1.5 s call
            assert out["server_timing"]["infer_ms"] >= 1400
    finally:
        server.stop()


def test_openpi_style_policy_without_session_or_reset_args():
    class Plain:
        def __init__(self):
            self.resets = 0

        def infer(self, obs):
            return {"actions": np.ones((2, 3)) * obs["x"]}

        def reset(self):
            self.resets += 1

    policy = Plain()
    with PolicyServer(policy, host="127.0.0.1", port=0) as server:
        with connect(f"ws://127.0.0.1:{server.port}", compression=None) as ws:
            assert unpackb(ws.recv(timeout=5)) == {}
            out = unpackb(request(ws, packb({"x": np.float32(2)})))
            np.testing.assert_array_equal(out["actions"], np.full((2, 3), 2.0))
            unpackb(request(ws, packb({"__control__": "reset"})))
    assert policy.resets >= 1


def test_run_load_reports_percentiles(served):
    server, _ = served
    result = run_load(
        "127.0.0.1",
        server.port,
        lambda c, r: {**GOOD, "observation/state": np.full(8, c, np.float32)},
        num_clients=3,
        requests_per_client=5,
        max_seconds=30,
        verbose=False,
    )
    assert result["completed"] == 15 and result["errors"] == 0, result
    assert result["throughput_rps"] > 0 and 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    with pytest.raises(ValueError):
        run_load("127.0.0.1", server.port, lambda: GOOD, num_clients=0, requests_per_client=1)
