"""The real π₀-EqM Policy behind the websocket server, driven by the REAL PyPI openpi-client in its own env."""

import json
import subprocess
import textwrap

import numpy as np

from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.policies.episodes import EpisodeDetection
from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.robots import LIBERO
from pi0_eqm.serving.server import PolicyServer

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from openpi_client import websocket_client_policy
    rng = np.random.default_rng(0)
    def obs(size=224, state=None):
        return {"observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "observation/state": rng.normal(size=8).astype(np.float32) if state is None else state,
                "prompt": "put the bowl on the plate"}
    c = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=int(sys.argv[1]))
    r = {"metadata": c.get_server_metadata()}
    out = [c.infer(obs()) for _ in range(3)]
    r["shapes"] = [list(o["actions"].shape) for o in out]
    r["solver"] = [o["solver"] for o in out]
    r["timing"] = [o["server_timing"]["infer_ms"] for o in out]
    errors = []
    for bad in (obs(size=200), obs(state=np.full(8, np.nan, np.float32)), {**obs(), "decoder_settings": {"nope": 1}},
                {**obs(), "decoder_settings": {"step_size": -1.0}}, {**obs(), "decoder_settings": {"momentum": 1.0}},
                {**obs(), "decoder_settings": {"preset": "fast"}}, {**obs(), "decoder_settings": {"variant": "adam"}}):
        try:
            c.infer(bad); errors.append(None)
        except RuntimeError as e:
            errors.append(str(e))
    r["errors"] = errors
    r["after"] = list(c.infer(obs())["actions"].shape)
    print("REPORT " + json.dumps(r))
    """
)


def test_openpi_client_drives_the_real_policy(trained_libero, openpi_client_python):
    cfg, step_dir = trained_libero
    policy = create_trained_policy(cfg, step_dir, settings=DecoderSettings(max_iters=30, executed=5, warm_start="aligned"))
    policy.episodes = EpisodeDetection(state_jump=None)  # the client's random states would each look like a reset
    server = PolicyServer(policy, host="127.0.0.1", port=0, metadata={"config": cfg.name}, schema=LIBERO.schema())
    port = server.start()
    try:
        proc = subprocess.run([openpi_client_python, "-c", CLIENT, str(port)], capture_output=True, text=True,
                              timeout=300)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))[len("REPORT "):])
    assert r["metadata"] == {"config": cfg.name}
    assert r["shapes"] == [[cfg.model.action_horizon, 7]] * 3
    assert [s["warm_started"] for s in r["solver"]] == [False, True, True]  # one session per connection
    assert all(1 <= s["iterations"] <= 30 and np.isfinite(s["final_residual"]) for s in r["solver"])
    size_err, nan_err, settings_err, eta_err, mu_err, preset_err, variant_err = r["errors"]
    assert "224" in size_err and "Invalid request" in size_err
    assert "NaN" in nan_err
    assert "unknown decoder settings" in settings_err
    assert "step_size (η) must be > 0" in eta_err
    assert "momentum (μ) must be in [0, 1)" in mu_err
    assert "solver preset must be one of ['action', 'paper', 'bb'], got 'fast'" in preset_err
    assert "solver variant must be one of" in variant_err
    assert r["after"] == [cfg.model.action_horizon, 7]
