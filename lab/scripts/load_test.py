"""Load test: serve a policy on loopback and drive it with real PyPI openpi clients (one process each, in the
environment ``scripts/openpi_client_env.sh`` builds), with micro-batching off and on, and once more with one hostile
client sending garbage in the mix. Prints, per run: errors, throughput, client latency p50 / p90 / p99 and the
server's batch sizes and RSS.

    uv run lab/scripts/load_test.py --config pi0_eqm_metaworld --checkpoint checkpoints/pi0_eqm_metaworld/main
    uv run lab/scripts/load_test.py --config debug_libero --random-init --clients 1 4 --requests 20

Every client sends one uncounted request first, then waits for the others, then sends ``--requests`` requests
back to back (the state moves a little per request, like a robot's). Bounded in count and time; the server binds
127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Annotated

import numpy as np
import tyro

from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.policies.policy import SERVING_CAPS
from pi0_eqm.policies.policy import padded_batch_sizes

REPO = Path(__file__).resolve().parents[2]

CLIENT = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from openpi_client import msgpack_numpy, websocket_client_policy
    port, n, obs_path, go_path, state_key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    obs = msgpack_numpy.unpackb(open(obs_path, "rb").read())
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    client.infer(obs)  # uncounted
    print("READY", flush=True)
    while not os.path.exists(go_path):
        time.sleep(0.002)
    lat, errors, t0 = [], [], time.time()
    for i in range(n):
        o = dict(obs)
        o[state_key] = (obs[state_key] + 0.002 * i).astype(np.float32)
        t = time.perf_counter()
        try:
            out = client.infer(o)
            if not np.all(np.isfinite(out["actions"])):
                errors.append("non-finite actions")
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e)[:200]}")
        lat.append((time.perf_counter() - t) * 1e3)
    print("RESULT " + json.dumps({"lat": lat, "errors": errors, "t0": t0, "t1": time.time()}), flush=True)
""")

HOSTILE = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from websockets.sync.client import connect
    from pi0_eqm.serving.wire import packb, unpackb
    port, obs_path, stop_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    good = unpackb(open(obs_path, "rb").read())
    rng = np.random.default_rng(0)
    nd = lambda data, dtype, shape: {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}
    attacks = [
        lambda: rng.bytes(int(rng.integers(1, 4096))),
        lambda: "not a binary frame",
        lambda: packb({**good, "observation/state": np.full_like(good["observation/state"], 1e300, np.float64)}),
        lambda: packb({**good, "observation/state": np.full_like(good["observation/state"], np.nan)}),
        lambda: packb({"__control__": np.array(["reset"])}),
        lambda: packb({**good, "decoder_settings": {"max_iters": 10_000, "threshold": 0.0}}),
        lambda: packb({**good, "decoder_settings": {"executed": 10**12, "max_reuse": "foo"}}),
        lambda: packb({**good, "decoder_settings": {"step_size": np.arange(3.0)}}),
        lambda: packb({**good, "x": nd(b"", "<f4", [2**31, 2**31, 0])}),
        lambda: packb({**good, "x": nd(b"\\0" * 64, "|O", [8])}),
        lambda: packb({**good, "x": [[None] * 60_000] * 4}),
        lambda: packb({**good, "x": [[None] * 9_000] * 3}),
        lambda: packb(good)[:1000],
    ]
    sent = replies = reconnects = 0
    ws = None
    while not os.path.exists(stop_path):
        try:
            if ws is None:
                ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=10)
                ws.recv(timeout=10)
                reconnects += 1
            ws.send(attacks[sent % len(attacks)]())
            sent += 1
            reply = ws.recv(timeout=30)
            replies += isinstance(reply, str)
            if sent % 50 == 0:  # now and then vanish mid-request
                ws.send(packb(good)); ws.close(); ws = None
        except Exception:
            ws = None
    print("RESULT " + json.dumps({"sent": sent, "error_frames": replies, "connections": reconnects}), flush=True)
""")


@dataclasses.dataclass
class Args:
    config: str = "debug_libero"
    checkpoint: str | None = None  # run, step or exported dir
    random_init: bool = False  # random params + unit norm stats (measures the serving path, not the policy quality)
    clients: tuple[int, ...] = (1, 4, 8)
    requests: int = 100
    batching: tuple[str, ...] = ("off", "on")
    max_batch: int = 8  # for batching "on"
    max_wait_ms: float = 5.0
    hostile: bool = True  # one more run: the most clients, batching on, plus a hostile client
    max_seconds: float = 900.0  # per run
    decoder: Annotated[DecoderSettings, tyro.conf.OmitArgPrefixes] = DecoderSettings()  # --preset --max-iters ... as eval
    out: str | None = None  # JSON of every run


def _policy(args: Args, cfg):
    from pi0_eqm.data.normalize import NormStats
    from pi0_eqm.policies.policy_config import create_trained_policy
    from pi0_eqm.policies.policy_config import policy_from_params

    if args.checkpoint:
        return create_trained_policy(cfg, args.checkpoint, settings=args.decoder)
    if not args.random_init:
        raise ValueError("pass --checkpoint DIR or --random-init")
    import jax

    d = cfg.model.real_action_dim or cfg.model.action_dim
    sd = cfg.data.spec().state_dim
    stats = {"state": NormStats(np.zeros(sd), np.ones(sd)), "actions": NormStats(np.zeros(d), np.ones(d))}
    return policy_from_params(cfg, cfg.model.init(jax.random.key(0)), stats, settings=args.decoder)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _collect(procs: list[subprocess.Popen], deadline: float) -> list[dict]:
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
        out.append(json.loads(line[7:]) if line else {"failed": (stderr or stdout)[-1000:]})
    return out


def run_case(policy, schema, obs_path: Path, state_key: str, py: str, n_clients: int, args: Args, batching: bool,
             hostile: bool) -> dict:
    from pi0_eqm.serving.server import PolicyServer

    server = PolicyServer(policy, port=0, schema=schema, max_batch=args.max_batch if batching else 1,
                          max_wait_ms=args.max_wait_ms, max_connections_per_peer=64)
    port = server.start()
    rss0 = _rss_mb()
    deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory() as tmp:
        go, stop = Path(tmp) / "go", Path(tmp) / "stop"
        procs = [subprocess.Popen([py, "-c", CLIENT, str(port), str(args.requests), str(obs_path), str(go), state_key],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(n_clients)]
        try:
            for p in procs:  # each prints READY after its uncounted request
                while time.monotonic() < deadline:
                    line = p.stdout.readline()
                    if not line or line.startswith("READY"):
                        break
            bad = subprocess.Popen([sys.executable, "-c", HOSTILE, str(port), str(obs_path), str(stop)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) if hostile else None
            time.sleep(0.5 if hostile else 0.0)
            go.touch()
            t_go = time.time()
            results = _collect(procs, deadline)
            stop.touch()
            hostile_result = _collect([bad], time.monotonic() + 60)[0] if bad is not None else None
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            server.stop()
    lat = np.concatenate([r["lat"] for r in results if "lat" in r] or [np.zeros(0)])
    errors = [e for r in results for e in r.get("errors", [r.get("failed")] if "failed" in r else [])]
    wall = max((r["t1"] for r in results if "t1" in r), default=t_go) - t_go
    sizes = server.batcher.batch_sizes if server.batcher is not None else []
    row = {"clients": n_clients, "requests_per_client": args.requests, "batching": batching, "hostile": hostile,
           "completed": int(lat.size) - len(errors), "errors": len(errors), "error_samples": errors[:5],
           "wall_s": wall, "throughput_rps": (lat.size - len(errors)) / wall if wall > 0 else 0.0,
           "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) if lat.size else float("nan")
                          for q in ("p50", "p90", "p99")},
           "mean_batch": float(np.mean(sizes)) if sizes else 1.0, "max_batch_seen": max(sizes, default=1),
           "rss_mb_start": rss0, "rss_mb_end": _rss_mb(), "hostile_client": hostile_result}
    lq = row["latency_ms"]
    print(f"{n_clients} clients x {args.requests}, batching {'on ' if batching else 'off'}"
          f"{' + hostile' if hostile else ''}: {row['errors']} errors, {row['throughput_rps']:.1f} req/s, "
          f"p50/p90/p99 {lq['p50']:.1f}/{lq['p90']:.1f}/{lq['p99']:.1f} ms, mean batch {row['mean_batch']:.2f}, "
          f"RSS {rss0:.0f} -> {row['rss_mb_end']:.0f} MB" + (f", hostile {hostile_result}" if hostile else ""),
          flush=True)
    return row


def _openpi_python() -> str:
    proc = subprocess.run(["bash", str(REPO / "scripts" / "openpi_client_env.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise FileNotFoundError("the openpi-client environment could not be built (scripts/openpi_client_env.sh): "
                                + proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output")
    return proc.stdout.strip().splitlines()[-1]


def main(args: Args) -> list[dict]:
    from pi0_eqm.policies.policy_config import resolve_checkpoint
    from pi0_eqm.serving.wire import packb
    from pi0_eqm.training.config import get_config

    if args.requests < 1 or not args.clients or min(args.clients) < 1 or max(args.clients) > 64:
        raise ValueError("need --requests >= 1 and --clients between 1 and 64")
    if set(args.batching) - {"off", "on"}:
        raise ValueError(f"--batching takes 'off' and/or 'on', got {list(args.batching)}")
    cfg = get_config(args.config)
    if args.checkpoint:
        cfg, step_dir = resolve_checkpoint(args.checkpoint, args.config)
        args = dataclasses.replace(args, checkpoint=str(step_dir))
    spec = cfg.data.spec()
    if spec is None:
        raise ValueError(f"config {args.config!r} has no robot (its data is {type(cfg.data).__name__}); load-test a "
                         "config whose data names a robot")
    size = spec.image_size or cfg.model.image_resolution[0]
    policy = _policy(args, cfg)
    policy.set_caps(SERVING_CAPS)  # as scripts/serve_policy.py serves by default
    py = _openpi_python()
    example = spec.example(np.random.default_rng(0), size, prompt="open the drawer")
    buckets = padded_batch_sizes(args.max_batch)
    t0 = time.monotonic()
    policy.warm_up(example, buckets)
    print(f"warm-up (batch sizes {buckets}): {time.monotonic() - t0:.1f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        obs_path = Path(tmp) / "obs.msgpack"
        obs_path.write_bytes(packb(example))
        state_key = "/".join(spec.state_key)
        for batching in args.batching:
            for n in args.clients:
                rows.append(run_case(policy, spec.schema(size), obs_path, state_key, py, n, args, batching == "on",
                                     False))
        if args.hostile:
            rows.append(run_case(policy, spec.schema(size), obs_path, state_key, py, max(args.clients), args,
                                 "on" in args.batching, True))
    by = {(r["clients"], r["batching"]): r["throughput_rps"] for r in rows if not r["hostile"]}
    for batching in (True, False):
        lo, hi = by.get((min(args.clients), batching)), by.get((max(args.clients), batching))
        if lo and hi:
            print(f"throughput {max(args.clients)} / {min(args.clients)} clients, batching "
                  f"{'on' if batching else 'off'}: {hi / lo:.2f}x")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"config": cfg.name, "checkpoint": args.checkpoint, "random_init": args.random_init,
                       "runs": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
