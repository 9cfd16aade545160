"""One robot for the device benchmark's serving case: connects, sends one uncounted request, prints READY, waits for
the go file, sends ``n`` requests back to back (the state moves a little per request) and prints
``RESULT <json>`` (latencies in ms, errors, wall-clock start/end, the server's batch size per reply).

    python client.py PORT N OBS_MSGPACK GO_FILE
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from pi0_eqm.serving.client import WebsocketClientPolicy
from pi0_eqm.serving.wire import unpackb


def main(port: int, n: int, obs_path: str, go_path: str) -> None:
    with open(obs_path, "rb") as f:
        obs = unpackb(f.read())
    client = WebsocketClientPolicy("127.0.0.1", port)
    client.infer(obs)
    print("READY", flush=True)
    while not os.path.exists(go_path):
        time.sleep(0.001)
    lat, errors, batch, t0 = [], [], [], time.time()
    for i in range(n):
        o = dict(obs, state=(obs["state"] + 0.002 * i).astype(np.float32))
        t = time.perf_counter()
        try:
            out = client.infer(o)
            batch.append(int(out["policy_timing"]["batch_size"]))
            if not np.all(np.isfinite(out["actions"])):
                errors.append("non-finite actions")
        except Exception as e:  # noqa: BLE001 - reported, not raised: the benchmark counts errors
            errors.append(f"{type(e).__name__}: {str(e)[:200]}")
        lat.append((time.perf_counter() - t) * 1e3)
    print("RESULT " + json.dumps({"lat": lat, "errors": errors, "batch": batch, "t0": t0, "t1": time.time()}),
          flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
