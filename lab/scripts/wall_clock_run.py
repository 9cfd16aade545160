"""Real-time chunking in wall-clock time: each checkpoint served by ``scripts/serve_policy.py`` in its own process,
Meta-World stepped at a fixed control rate in this one, ``AsyncChunkBroker`` between them (the delay is whatever
the round trip really takes, measured per chunk).

    uv run lab/scripts/wall_clock_run.py                       # the realtime study's seed-42 checkpoints, 50 Hz
    uv run lab/scripts/wall_clock_run.py --control-hz 100 --episodes-per-task 2

Arms: ``<checkpoint>-<method>`` with method ``naive`` (switch at the measured delay, nothing sent) or ``prefix``
(the broker also sends the committed rows it expects: the largest delay measured so far in the episode, capped at
the server's ``realtime.max_delay``). The episodes are Meta-World's held-out configurations (evaluation seed 1000),
but wall-clock runs are not deterministic: the delays depend on the machine's load. Writes
``<out>/wall_clock.{json,md}``: per arm, success (Wilson 95% CI), measured delays (mean, p50, p90, max, control
steps), round trips (ms), chunks that ran out before their successor came (late) and the boundary discontinuity
(normalized units, as the realtime study).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
import subprocess
import sys
import time
import urllib.request

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from pi0_eqm.benchmarks import metaworld as bench  # noqa: E402
from pi0_eqm.envs import evaluate as ev  # noqa: E402
from pi0_eqm.envs.realtime import RealtimeConfig  # noqa: E402
from pi0_eqm.envs.stats import success_summary  # noqa: E402
from pi0_eqm.envs.tasks import DEFAULT_TASKS  # noqa: E402
from pi0_eqm.policies.policy_config import create_trained_policy  # noqa: E402
from pi0_eqm.serving.client import WebsocketClientPolicy  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# name → training config; the checkpoint is <checkpoint_base_dir>/<config>/<exp_name>
CHECKPOINTS = {"flow": "pi0_metaworld", "eqm": "pi0_eqm_metaworld", "flow_rtc": "pi0_rtc_metaworld",
               "eqm_prefix": "pi0_eqm_prefix_metaworld"}


@dataclasses.dataclass
class Args:
    checkpoints: tuple[str, ...] = tuple(CHECKPOINTS)  # names of CHECKPOINTS
    methods: tuple[str, ...] = ("naive", "prefix")
    control_hz: float = 50.0
    execute: int = 8  # s
    episodes_per_task: int = 5
    eval_seed: int = 1000
    max_steps: int = 200
    tasks: tuple[str, ...] = DEFAULT_TASKS
    port: int = 8765
    checkpoint_base_dir: str = "./checkpoints"
    exp_name: str = "main"  # the realtime study's seed-42 runs
    out: str = "results/wall_clock"
    progress: bool = True


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 600.0) -> None:
    """Until the server's ``/healthz`` answers 200 (warm-up compiled); raises if the server exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve_policy.py exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"the server on port {port} was not ready after {timeout_s:.0f} s")


def summarize(result: dict) -> dict:
    eps = result["episodes"]
    delays = [d for e in eps for d in e["delays"][1:]]  # the first chunk of an episode is awaited (no delay)
    trips = [1e3 * s for e in eps for s in e["latency_s"]]
    jumps = [j for e in eps for j in e["jumps"]]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
    return {**success_summary(sum(bool(e["success"]) for e in eps), len(eps)),
            "delay_mean": float(np.mean(delays)) if delays else None, "delay_p50": pct(delays, 50),
            "delay_p90": pct(delays, 90), "delay_max": max(delays) if delays else None,
            "round_trip_ms_p50": pct(trips, 50), "round_trip_ms_p90": pct(trips, 90),
            "jump_mean": float(np.mean(jumps)) if jumps else None,
            "late": sum(e.get("late", 0) for e in eps), "broker_errors": sum(len(e.get("broker_errors", []))
                                                                            for e in eps)}


def markdown(rows: dict, args: Args) -> str:
    lines = [f"Control rate {args.control_hz:g} Hz, s = {args.execute}, {len(args.tasks)} tasks × "
             f"{args.episodes_per_task} episodes per arm.", "",
             "| arm | success | Wilson 95% CI | delay mean / p50 / p90 / max | round trip p50 / p90 (ms) | jump | late |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda x, f=".1f": "—" if x is None else format(x, f)  # noqa: E731
    for arm, r in rows.items():
        lines.append(f"| `{arm}` | **{r['success_rate']:.3f}** | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | "
                     f"{fmt(r['delay_mean'], '.2f')} / {fmt(r['delay_p50'], '.0f')} / {fmt(r['delay_p90'], '.0f')} / "
                     f"{fmt(r['delay_max'], 'd')} | {fmt(r['round_trip_ms_p50'])} / {fmt(r['round_trip_ms_p90'])} | "
                     f"{fmt(r['jump_mean'], '.3f')} | {r['late']} |")
    return "\n".join(lines) + "\n"


def run_checkpoint(args: Args, name: str, rows: dict, raw: dict) -> None:
    ckpt = (Path(args.checkpoint_base_dir) / CHECKPOINTS[name] / args.exp_name).resolve()
    if not ckpt.is_dir():
        raise FileNotFoundError(f"{ckpt} is missing: train it first (lab/scripts/realtime_study.py trains it)")
    local = create_trained_policy(None, ckpt)  # only for normalizing the discontinuity metric
    normalize = lambda state, a: local.action_transform({"state": state, "actions": a})["actions"]  # noqa: E731
    log = open(Path(args.out) / f"server_{name}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "serve_policy.py"), "--checkpoint", str(ckpt),
                             "--port", str(args.port), "--executed", str(args.execute)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_ready(args.port, proc)
        with WebsocketClientPolicy(port=args.port, connect_timeout=60) as client:
            for method in args.methods:
                rt = RealtimeConfig(method=method, wall_clock=True, control_hz=args.control_hz)
                res = ev.evaluate(client, tasks=args.tasks, episodes_per_task=args.episodes_per_task,
                                  seed=args.eval_seed, max_steps=args.max_steps, replan_every=args.execute,
                                  resolution=local.config.image_resolution[0], progress=args.progress, realtime=rt,
                                  normalize=normalize)
                arm = f"{name}-{method}"
                rows[arm] = summarize(res)
                raw[arm] = [{k: e[k] for k in ("task", "episode", "success", "steps", "delays", "latency_s", "jumps")}
                            for e in res["episodes"]]
                print(arm, rows[arm], flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def main(args: Args) -> dict:
    unknown = [c for c in args.checkpoints if c not in CHECKPOINTS]
    if unknown:
        raise ValueError(f"unknown checkpoints {unknown}; expected some of {list(CHECKPOINTS)}")
    bad = [m for m in args.methods if m not in ("naive", "prefix")]
    if bad:
        raise ValueError(f"methods {bad}: wall-clock runs take naive or prefix")
    if args.control_hz <= 0:
        raise ValueError(f"--control-hz must be > 0, got {args.control_hz}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows, raw = {}, {}
    for name in args.checkpoints:
        run_checkpoint(args, name, rows, raw)
    text = markdown(rows, args)
    print(text)
    bench.save_json(Path(args.out) / "wall_clock.json", {"args": dataclasses.asdict(args), "summary": rows,
                                                         "episodes": raw})
    (Path(args.out) / "wall_clock.md").write_text(text)
    print(f"results: {args.out}/wall_clock.json, .md")
    return rows


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
