"""A sharded LIBERO evaluation through allenai's vla-eval harness against a running pi0_eqm model server.

    uv sync --extra vla-eval --extra libero
    uv run examples/vla_eval/pi0_eqm_server.py --args.checkpoint checkpoints/<config>/<run> --port 8001 &
    uv run examples/vla_eval/run_libero.py --shards 4

Starts ``--shards`` ``vla-eval run --no-docker`` processes on ``libero_cpu.yaml`` (this folder on ``PYTHONPATH``, so
the config's ``libero_benchmark:LIBEROBenchmark`` resolves) with one ``--eval-id``: the harness gives each shard its
share of the (task, episode) items and every shard records into ``<output-dir>/recording-<eval-id>.sqlite``. Waits for
the server to accept connections first (the adapter listens only once its warm-up compiles are done; none within
``--server-wait-s``: exit 2), then for every shard; a failed shard is named with the end of its log
(``<output-dir>/shard-<i>.log``), exit 1. Then exports the harness's episode records and summary (``vla-eval export``)
and prints the success rate. Arguments after ``--`` go to every ``vla-eval run`` (e.g. ``-- --benchmark-field
max_tasks=2 --benchmark-field max_steps=60``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse
import uuid

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=4, help="simulator processes (default 4)")
    p.add_argument("--config", type=Path, default=HERE / "libero_cpu.yaml", help="vla-eval config (default: %(default)s)")
    p.add_argument("--server-url", default="ws://127.0.0.1:8001", help="the model server (default: %(default)s)")
    p.add_argument("--output-dir", type=Path, default=Path("results/vla_eval_libero"), help="(default: %(default)s)")
    p.add_argument("--eval-id", default=None, help="the harness's run id (default: a new one)")
    p.add_argument("--server-wait-s", type=float, default=600.0, help="how long to wait for the server to listen")
    args = p.parse_args(argv)
    if args.shards < 1:
        p.error(f"--shards must be at least 1, got {args.shards}")
    if not args.config.is_file():
        p.error(f"--config {args.config}: no such file")
    url = urlparse(args.server_url)
    if url.scheme not in ("ws", "wss") or not url.hostname or not url.port:
        p.error(f"--server-url {args.server_url!r}: expected ws://HOST:PORT")
    return args, extra


def wait_for_server(url: str, timeout_s: float) -> None:
    parsed = urlparse(url)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((parsed.hostname, parsed.port), timeout=2):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                print(f"error: no model server at {url} after {timeout_s:.0f} s ({e}); start "
                      "examples/vla_eval/pi0_eqm_server.py first", file=sys.stderr)
                sys.exit(2)
            time.sleep(min(1.0, timeout_s))


def main(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    out = args.output_dir.resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: --output-dir {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    eval_id = args.eval_id or uuid.uuid4().hex[:12]
    wait_for_server(args.server_url, args.server_wait_s)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    env.setdefault("MUJOCO_GL", "egl")
    shards = []
    for i in range(args.shards):
        log = open(out / f"shard-{i}.log", "w")  # noqa: SIM115 (closed below)
        cmd = [sys.executable, "-m", "vla_eval.cli.main", "run", "--config", str(args.config), "--no-docker",
               "--server-url", args.server_url, "--output-dir", str(out), "--shard-id", str(i),
               "--num-shards", str(args.shards), "--eval-id", eval_id, *extra]
        shards.append((i, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    print(f"{args.shards} shards running (eval id {eval_id}); logs in {out}/shard-*.log", flush=True)
    failed = []
    for i, proc, log in shards:
        rc = proc.wait()
        log.close()
        if rc != 0:
            failed.append((i, rc))
    for i, rc in failed:
        tail = (out / f"shard-{i}.log").read_text(errors="replace").splitlines()[-15:]
        print(f"error: shard {i} exited {rc}; the end of {out}/shard-{i}.log:\n  " + "\n  ".join(tail),
              file=sys.stderr)
    if failed:
        return 1
    from vla_eval.results.export import export_eval  # lazy: after the shards, in this process only

    for body in export_eval(out, eval_id):
        episodes = sum(t.get("num_episodes", 0) for t in body.get("tasks", []))
        print(f"{body['benchmark']}: success {body.get('mean_success', 0.0):.1%} over {episodes} episodes "
              f"({len(body.get('tasks', []))} tasks); records in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
