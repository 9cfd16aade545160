"""Device benchmark: full-size π₀ / π₀.5 on one accelerator within a time budget; writes ``device_benchmark.json`` and
``device_benchmark.md`` to ``--out``.

    python lab/device/benchmark.py --out DIR                 # full size, 450 s budget (docs/accelerators.md)
    python lab/device/benchmark.py --out DIR --size tiny     # the same code at CPU size (the test runs this)

Needs only JAX, flax, optax, orbax-checkpoint and numpy (the lent image) plus the wheels in ``requirements.txt``
(``lab/device/README.md``); ``PYTHONPATH=src`` makes the library importable without installing it.

Cases, in this order, each in its own process with the rest of the budget as its time limit (a case cut off keeps the
rows it printed; one that runs out of device memory is reported as such and the next one runs):

* ``pi0``: prefix (prefill) ms, flow-10 and EqM-10 chunk ms and their ratio per batch size, then requests/s through
  the real server with the micro-batcher for 1, 8, 32 client processes;
* ``lora_<b>`` / ``full_<b>``: one train step of π₀ at per-device batch ``b`` (LoRA: openpi's low-mem fine-tune;
  full: every weight, EMA) — compile s, median step ms, peak device memory;
* ``pi05``: the ``pi0`` timings for π₀.5 (no serving).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import threading
import time

import jax

HERE = Path(__file__).resolve().parent
GIB = 2**30


@dataclasses.dataclass
class Case:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    rows: list = dataclasses.field(default_factory=list)
    detail: str = ""


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, help="directory for device_benchmark.json / .md (created)")
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget for all cases (default 450)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=20, help="timed requests per client")
    p.add_argument("--train-batch", type=int, nargs="+", default=[32, 8])
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20, help="timed calls per inference figure (median)")
    p.add_argument("--cases", nargs="+", default=None, help="run only these cases (default: all, in order)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = p.parse_args(argv)
    bad = [n for n in args.batch_sizes + args.clients + args.train_batch if n < 1]
    if bad or args.repeats < 1 or args.train_steps < 1 or args.requests < 1 or args.budget_s <= 0:
        p.error("batch sizes, clients, repeats, steps and requests must be >= 1 and the budget > 0")
    if args.case is None and args.out is None:
        p.error("--out DIR is required")
    if args.cases:
        unknown = sorted(set(args.cases) - set(case_names(args, all_cases=True)))
        if unknown:
            p.error(f"unknown case(s) {unknown}; expected some of {case_names(args, all_cases=True)}")
    return args


def case_names(args, all_cases: bool = False) -> list[str]:
    """The cases in the order they run: π₀ first, then the first train batch's LoRA step (openpi's memory figure is
    for LoRA at batch 32), π₀.5, and the other train steps."""
    train = [f"{m}_{b}" for m in ("lora", "full") for b in args.train_batch]
    order = ["pi0", train[0], "pi05", *train[1:]]
    return order if all_cases or not args.cases else [c for c in order if c in args.cases]


def run_case(args) -> None:
    import cases  # lazy: the orchestrator never initialises a backend; each case is its own process

    if args.case in ("pi0", "pi05"):
        policies = cases.infer(args.size, args.case, args.batch_sizes, args.repeats)
        if args.case == "pi0":
            cases.serve(policies, args.clients, args.requests)
    else:
        mode, batch = args.case.split("_")
        cases.train(args.size, mode, int(batch), args.train_steps)


def _child_env() -> dict:
    env = dict(os.environ)
    src = str(HERE.parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # JAX preallocates 75% by default
    return env


def orchestrate(args, argv) -> list[Case]:
    start = time.monotonic()
    done = []
    for name in case_names(args):
        case = Case(name)
        done.append(case)
        left = args.budget_s - (time.monotonic() - start)
        if left < 10:
            case.status = "skipped: the time budget was spent"
            continue
        t = time.monotonic()
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--case", name]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
        err: list[str] = []
        reader = threading.Thread(target=err.extend, args=(proc.stderr,), daemon=True)
        reader.start()
        lines = threading.Thread(target=_collect, args=(proc, case), daemon=True)
        lines.start()
        try:
            rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        lines.join(10)
        reader.join(10)
        case.seconds = time.monotonic() - t
        text = "".join(err)
        if rc == 0:
            case.status = "done"
        elif rc is None:
            case.status = f"cut off by the time budget after {case.seconds:.0f} s"
        elif "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text:
            case.status = "out of device memory"
            case.detail = _last_line(text, "RESOURCE_EXHAUSTED")
        else:
            case.status = f"failed (exit {rc})"
            case.detail = _last_line(text)
        print(f"[{name}] {case.status} in {case.seconds:.0f} s", flush=True)
        if case.detail:
            print(f"[{name}] {case.detail}", flush=True)
    return done


def _collect(proc, case: Case) -> None:
    for line in proc.stdout:
        if line.startswith("ROW "):
            case.rows.append(json.loads(line[4:]))
            print(f"[{case.name}] {line[4:].strip()}", flush=True)


def _last_line(text: str, containing: str = "") -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and containing in ln]
    return lines[-1][:400] if lines else ""


def environment() -> dict:
    dev = jax.devices()[0]
    return {"device": getattr(dev, "device_kind", dev.platform), "platform": dev.platform,
            "device_count": jax.device_count(), "jax": jax.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def markdown(result: dict) -> str:
    env, rows = result["environment"], [r for c in result["cases"] for r in c["rows"]]
    gib = lambda b: "-" if b is None else f"{b / GIB:.1f}"
    out = [f"# Device benchmark ({result['size']} size)", "",
           f"{env['device']} ({env['platform']}, {env['device_count']} device(s)), JAX {env['jax']}, Python "
           f"{env['python']}, {env['date']}; budget {result['budget_s']:.0f} s, used {result['wall_s']:.0f} s. "
           f"Inference params in bfloat16; random weights; {result['repeats']} timed calls per figure (median).", ""]
    models = [r for r in rows if r["kind"] == "model"]
    if models:
        out += ["| model | params | init s |", "|---|---|---|"]
        out += [f"| {r['model']} | {r['params'] / 1e6:,.1f}M | {r['init_s']:.1f} |" for r in models] + [""]
    infer = [r for r in rows if r["kind"] == "infer"]
    if infer:
        out += ["| model | batch | prefix ms | flow-10 ms | EqM-10 ms | EqM/flow | compile s (prefix / flow / EqM) "
                "| peak GiB |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['model']} | {r['batch']} | {r['prefix_ms']:.1f} | {r['flow_ms']:.1f} | {r['eqm_ms']:.1f} | "
                f"{r['eqm_over_flow']:.2f} | {r['prefix_compile_s']:.0f} / {r['flow_compile_s']:.0f} / "
                f"{r['eqm_compile_s']:.0f} | {gib(r['peak_bytes'])} |" for r in infer] + [""]
    serve = [r for r in rows if r["kind"] == "serve"]
    if serve:
        base = next((r["requests_per_s"] for r in serve if r["clients"] == 1), None)
        out += ["| clients | requests/s | × 1 client | p50 ms | p90 ms | mean batch | errors |",
                "|---|---|---|---|---|---|---|"]
        ratio = lambda r: "-" if base is None else f"{r['requests_per_s'] / base:.1f}"
        out += [f"| {r['clients']} | {r['requests_per_s']:.1f} | {ratio(r)} | {r['latency_p50_ms']:.1f} | "
                f"{r['latency_p90_ms']:.1f} | {r['mean_batch']:.1f} | {r['errors']} |" for r in serve] + [""]
    train = [r for r in rows if r["kind"] == "train"]
    if train:
        out += ["| train | batch | trainable | frozen | EMA | step ms | samples/s | compile s | peak GiB |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['mode']} ({r['decoder']}) | {r['batch']} | {r['trainable'] / 1e6:,.1f}M | "
                f"{r['frozen'] / 1e6:,.1f}M | {r['ema'] or '-'} | {r['step_ms']:.0f} | {r['samples_per_s']:.1f} | "
                f"{r['compile_s']:.0f} | {gib(r['peak_bytes'])} |" for r in train] + [""]
    out += ["| case | status | seconds |", "|---|---|---|"]
    out += [f"| {c['name']} | {c['status']}{': ' + c['detail'] if c['detail'] else ''} | {c['seconds']:.0f} |"
            for c in result["cases"]]
    return "\n".join(out) + "\n"


def main(argv=None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.case:
        run_case(args)
        return None
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    cases_run = orchestrate(args, argv)
    result = {"size": args.size, "budget_s": args.budget_s, "wall_s": time.monotonic() - t, "repeats": args.repeats,
              "environment": environment(), "cases": [dataclasses.asdict(c) for c in cases_run]}
    (args.out / "device_benchmark.json").write_text(json.dumps(result, indent=2))
    (args.out / "device_benchmark.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
