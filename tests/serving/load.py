"""Bounded load generator for a policy server speaking the openpi wire protocol (a test helper of tests/serving).

``run_load`` opens ``num_clients`` websocket connections (one thread each, like independent robots), sends
``requests_per_client`` requests per connection one at a time, and reports throughput and latency percentiles.
Both counts are capped and the whole run stops at ``max_seconds``, so it can never loop unboundedly.
"""

from __future__ import annotations

from collections.abc import Callable
import inspect
import threading
import time
from typing import Any

import numpy as np
from websockets.sync.client import connect

from pi0_eqm.serving.wire import WireLimits
from pi0_eqm.serving.wire import packb
from pi0_eqm.serving.wire import unpackb

__all__ = ["run_load", "MAX_CLIENTS", "MAX_REQUESTS_PER_CLIENT"]

MAX_CLIENTS = 256
MAX_REQUESTS_PER_CLIENT = 100_000


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {
            "p50": float("nan"),
            "p90": float("nan"),
            "p99": float("nan"),
            "mean": float("nan"),
            "max": float("nan"),
        }
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()), "max": float(a.max())}


def run_load(
    host: str,
    port: int,
    make_obs: Callable[..., dict],
    num_clients: int = 4,
    requests_per_client: int = 20,
    *,
    max_seconds: float = 120.0,
    warmup_requests: int = 1,
    request_timeout: float = 60.0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Drive ``ws://host:port`` with ``num_clients`` concurrent connections.

    ``make_obs`` builds one observation; it is called as ``make_obs(client_index, request_index)`` if it takes two
    positional arguments, else as ``make_obs()``. The first ``warmup_requests`` per client (e.g. a JIT compile) are
    sent but not counted. Returns a dict with counts, ``throughput_rps`` and ``latency_ms`` / ``server_infer_ms``
    percentile dicts (``p50``, ``p90``, ``p99``, ``mean``, ``max``); errors are counted, not raised.
    """
    if not 1 <= num_clients <= MAX_CLIENTS:
        raise ValueError(f"num_clients must be in [1, {MAX_CLIENTS}], got {num_clients}")
    if not 1 <= requests_per_client <= MAX_REQUESTS_PER_CLIENT:
        raise ValueError(f"requests_per_client must be in [1, {MAX_REQUESTS_PER_CLIENT}], got {requests_per_client}")
    if max_seconds <= 0:
        raise ValueError("max_seconds must be positive")
    try:
        two_args = len(inspect.signature(make_obs).parameters) >= 2
    except (TypeError, ValueError):
        two_args = False
    build = make_obs if two_args else (lambda _c, _r: make_obs())

    deadline = time.monotonic() + max_seconds
    lock = threading.Lock()
    latencies: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    started = threading.Barrier(num_clients)
    limits = WireLimits(max_message_bytes=1 << 30, max_total_array_bytes=1 << 30)

    def client(ci: int) -> None:
        try:
            with connect(f"ws://{host}:{port}", compression=None, max_size=None, open_timeout=request_timeout) as ws:
                unpackb(ws.recv(timeout=request_timeout), limits)  # metadata
                try:
                    started.wait(timeout=max(0.0, deadline - time.monotonic()))
                except threading.BrokenBarrierError:
                    pass
                for ri in range(warmup_requests + requests_per_client):
                    if time.monotonic() > deadline:
                        with lock:
                            errors.append(f"client {ci}: stopped at request {ri}: max_seconds reached")
                        return
                    frame = packb(build(ci, ri))
                    t0 = time.perf_counter()
                    ws.send(frame)
                    reply = ws.recv(timeout=request_timeout)
                    dt = (time.perf_counter() - t0) * 1000
                    if isinstance(reply, str):
                        with lock:
                            errors.append(f"client {ci} request {ri}: {reply.splitlines()[0][:200]}")
                        continue
                    out = unpackb(reply, limits)
                    if ri >= warmup_requests:
                        with lock:
                            latencies.append(dt)
                            infer = out.get("server_timing", {}).get("infer_ms") if isinstance(out, dict) else None
                            if isinstance(infer, int | float):
                                server_ms.append(float(infer))
        except Exception as e:  # noqa: BLE001 - reported in the summary
            started.abort()  # never leave the other clients waiting at the start line
            with lock:
                errors.append(f"client {ci}: {type(e).__name__}: {e}")

    t_start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True, name=f"load-{i}") for i in range(num_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + request_timeout + 5)
    wall = time.monotonic() - t_start
    with lock:
        result = {
            "num_clients": num_clients,
            "requests_per_client": requests_per_client,
            "completed": len(latencies),
            "errors": len(errors),
            "error_samples": errors[:10],
            "wall_s": wall,
            "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
            "latency_ms": _percentiles(latencies),
            "server_infer_ms": _percentiles(server_ms),
            "timed_out": any(t.is_alive() for t in threads) or time.monotonic() > deadline,
        }
    if verbose:
        lat = result["latency_ms"]
        print(
            f"load: {num_clients} clients x {requests_per_client} requests: {result['completed']} ok, "
            f"{result['errors']} errors in {wall:.2f} s -> {result['throughput_rps']:.1f} req/s; latency ms "
            f"p50 {lat['p50']:.1f} p90 {lat['p90']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f}"
        )
        for e in result["error_samples"]:
            print(f"  error: {e}")
    return result
