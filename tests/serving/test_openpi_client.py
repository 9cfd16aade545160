"""The REAL PyPI openpi-client (own env, numpy<2) against our server, and byte-identical encoding."""

from __future__ import annotations

import json
import subprocess
import textwrap

import numpy as np

from pi0_eqm.serving import PolicyServer
from pi0_eqm.serving import packb
from pi0_eqm.serving import unpackb
from tests.serving.conftest import HORIZON
from tests.serving.conftest import METADATA
from tests.serving.conftest import StatePolicy
from tests.serving.conftest import expected_actions

CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from openpi_client import action_chunk_broker, msgpack_numpy, websocket_client_policy

    port = int(sys.argv[1])
    rng = np.random.default_rng(0)
    def obs(state, prompt="put the bowl on the plate"):
        return {
            "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/state": np.asarray(state, np.float32),
            "prompt": prompt,
        }
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    report = {"metadata": client.get_server_metadata(), "numpy": np.__version__}
    state = np.linspace(-1, 1, 8)
    out = client.infer(obs(state))
    report["actions"] = out["actions"].tolist()
    report["actions_dtype"] = str(out["actions"].dtype)
    report["server_timing"] = out["server_timing"]
    report["policy_timing"] = out["policy_timing"]
    # A bad observation raises RuntimeError with our message; the same client keeps working afterwards.
    try:
        client.infer(obs(np.full(8, np.nan)))
        report["bad_error"] = None
    except RuntimeError as e:
        report["bad_error"] = str(e)
    out2 = client.infer(obs(state * 2))
    report["actions2"] = out2["actions"].tolist()
    report["prev_total_ms" ] = out2["server_timing"].get("prev_total_ms")
    broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=3)
    report["broker"] = [broker.infer(obs(state))["actions"].tolist() for _ in range(4)]
    client.reset()
    # Byte-level reference encodings from the genuine client codec.
    samples = {
        "state": {"observation/state": np.arange(2, dtype=np.float32)},
        "mixed": {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.float32(1.5), "c": np.array(["x", "yz"]),
                  "d": [1, 2.5, "s", {"e": np.bool_(True)}], "f": np.zeros((2, 2), np.uint8)},
    }
    report["packed"] = {k: msgpack_numpy.packb(v).hex() for k, v in samples.items()}
    print("REPORT " + json.dumps(report))
    """
)


def test_real_openpi_client_against_server(served, openpi_client_python):
    server, _ = served
    proc = subprocess.run(
        [openpi_client_python, "-c", CLIENT_SCRIPT, str(server.port)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line[len("REPORT ") :])

    assert report["numpy"].startswith("1."), "the openpi-client env should have its own numpy<2"
    assert report["metadata"] == METADATA
    state = np.linspace(-1, 1, 8).astype(np.float32)
    actions = np.asarray(report["actions"])
    assert actions.shape == (HORIZON, 7) and report["actions_dtype"] == "float64"
    np.testing.assert_allclose(actions, expected_actions(state))
    np.testing.assert_allclose(report["actions2"], expected_actions(state * 2))
    assert report["server_timing"]["infer_ms"] >= 0 and report["policy_timing"] == {"infer_ms": 0.5}
    assert report["prev_total_ms"] is not None  # 2nd successful request on that connection
    err = report["bad_error"]
    assert err and err.startswith("Error in inference server:\nInvalid request: ") and "8 NaN" in err, err
    broker = np.asarray(report["broker"])  # one chunk, then steps 0, 1, 2 of it, then a fresh chunk
    np.testing.assert_allclose(broker, expected_actions(state)[[0, 1, 2, 0]])

    # Our encoder is byte-identical to openpi-client's, and our decoder reads its bytes back.
    ours = {
        "state": {"observation/state": np.arange(2, dtype=np.float32)},
        "mixed": {
            "a": np.arange(6, dtype=np.int16).reshape(2, 3),
            "b": np.float32(1.5),
            "c": np.array(["x", "yz"]),
            "d": [1, 2.5, "s", {"e": np.bool_(True)}],
            "f": np.zeros((2, 2), np.uint8),
        },
    }
    for name, obj in ours.items():
        theirs = bytes.fromhex(report["packed"][name])
        assert packb(obj) == theirs, name
        back = unpackb(theirs)
        assert sorted(back) == sorted(obj)
    np.testing.assert_array_equal(unpackb(bytes.fromhex(report["packed"]["mixed"]))["c"], ["x", "yz"])


API_KEY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from openpi_client import websocket_client_policy
    port = int(sys.argv[1])
    report = {}
    for key in ("s3cret", "wrong", None):
        try:
            c = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port, api_key=key)
            out = c.infer({"observation/state": np.ones(8, np.float32)})
            report[str(key)] = list(out["actions"].shape)
        except Exception as e:
            report[str(key)] = type(e).__name__ + ": " + str(e)[:200]
    print("REPORT " + json.dumps(report))
    """
)


def test_real_openpi_client_api_key_header(openpi_client_python):
    """openpi's client sends ``Authorization: Api-Key <key>`` when given ``api_key``; the server checks it."""
    with PolicyServer(StatePolicy(), port=0, api_key="s3cret") as server:
        proc = subprocess.run([openpi_client_python, "-c", API_KEY_SCRIPT, str(server.port)], capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))[len("REPORT "):])
    assert report["s3cret"] == [HORIZON, 7]
    assert "401" in report["wrong"] and "401" in report["None"], report
