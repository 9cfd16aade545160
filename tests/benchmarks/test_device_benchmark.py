"""The device benchmark (``lab/device/benchmark.py``) at tiny size on the CPU: every figure present and sane, the
reports written, a spent budget reported instead of run, bad arguments refused, and every module its processes import
coming from the accelerator image's packages, the wheels ``lab/device/requirements.txt`` lists, the standard library
or the repo."""

import importlib.metadata as md
import json
import os
from pathlib import Path
import subprocess
import sys

from packaging.requirements import Requirement
import pytest

from tests.packages import lock_closure
from tests.packages import normalize

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "lab" / "device" / "benchmark.py"
# The lent image: Python 3.12, JAX 0.11 (CUDA), flax, optax, orbax-checkpoint, numpy and their dependencies (their
# closure in uv.lock).
IMAGE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
# jax imports these when they are installed (inside try/except ImportError); the benchmark runs without them.
OPTIONAL = {"cloudpickle", "filelock"}
REPO_MODULES = {"__main__", "sitecustomize", "pi0_eqm", "cases", "client", "benchmark", "cython_runtime"}
TRACER = """
import atexit, os, sys
def _dump():
    with open(os.path.join(os.environ["IMPORT_TRACE_DIR"], f"{os.getpid()}.txt"), "w") as f:
        f.write("\\n".join(sorted({m.split(".")[0] for m in list(sys.modules)})))
atexit.register(_dump)
"""


def _listed() -> list[str]:
    lines = (REPO / "lab" / "device" / "requirements.txt").read_text().splitlines()
    return [Requirement(ln.split("#")[0]).name for ln in lines if ln.split("#")[0].strip()]


def _run(out: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), "--out", str(out), "--size", "tiny", *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_tiny_benchmark_measures_every_figure_and_imports_only_the_image_and_the_listed_wheels(tmp_path, monkeypatch):
    site, trace = tmp_path / "site", tmp_path / "trace"
    site.mkdir()
    trace.mkdir()
    (site / "sitecustomize.py").write_text(TRACER)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("IMPORT_TRACE_DIR", str(trace))
    out = tmp_path / "out"
    # π₀ (inference + serving) and a LoRA step here; .ci/lane-py312 runs π₀.5 and a full fine-tune step
    # a budget well above the ~140 s it takes in CI: on a loaded 2-core machine the 450 s default cut lora_2 off
    proc = _run(out, "--budget-s", "850", "--cases", "pi0", "lora_2", "--batch-sizes", "1", "--clients", "1", "2",
                "--requests", "3", "--train-batch", "2", "--train-steps", "1", "--repeats", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "device_benchmark.json").read_text())
    assert [(c["name"], c["status"]) for c in result["cases"]] == [("pi0", "done"), ("lora_2", "done")]
    rows = [r for c in result["cases"] for r in c["rows"]]
    infer = [r for r in rows if r["kind"] == "infer"]
    assert [r["batch"] for r in infer] == [1]  # batch 2 is compiled and served below; the lane times batch 1 and 2
    for r in infer:
        assert r["flow_forwards"] == r["eqm_forwards"] == 10 and r["flow_finite"] and r["eqm_finite"]
        assert min(r["prefix_ms"], r["flow_ms"], r["eqm_ms"], r["prefix_compile_s"]) > 0
        assert r["eqm_over_flow"] == pytest.approx(r["eqm_ms"] / r["flow_ms"])
    serve = [r for r in rows if r["kind"] == "serve"]
    assert [(r["clients"], r["requests"], r["errors"]) for r in serve] == [(1, 3, 0), (2, 6, 0)]
    assert serve[0]["mean_batch"] == 1 and 1 <= serve[1]["mean_batch"] <= 2 and serve[1]["requests_per_s"] > 0
    (train,) = [r for r in rows if r["kind"] == "train"]
    assert train["mode"] == "lora" and train["batch"] == 2 and train["finite"] and train["ema"] is None
    assert train["trainable"] > 0 and train["frozen"] > 0 and train["step_ms"] > 0
    md_text = (out / "device_benchmark.md").read_text()
    assert "| pi0 | 1 |" in md_text and "| lora (flow) | 2 |" in md_text and "| 2 | " in md_text

    # The orchestrator, both cases and the three client processes each left their imports; what the interpreter
    # itself loads at start-up in this environment (site .pth hooks such as setuptools' _distutils_hack) is not the
    # benchmark's and is measured with a bare interpreter.
    traces = list(trace.glob("*.txt"))
    assert len(traces) == 6, [t.name for t in traces]
    imported = set().union(*(set(t.read_text().split()) for t in traces))
    bare = tmp_path / "bare"
    bare.mkdir()
    subprocess.run([sys.executable, "-c", "pass"], env={**os.environ, "IMPORT_TRACE_DIR": str(bare)}, check=True)
    imported -= set(next(bare.glob("*.txt")).read_text().split())
    owners = md.packages_distributions()
    allowed = lock_closure(IMAGE) | lock_closure(_listed()) | OPTIONAL
    outside, used = [], set()
    for module in sorted(imported - set(sys.stdlib_module_names) - REPO_MODULES):
        dists = {normalize(d) for d in owners.get(module, [])}
        if not dists and module.startswith("_"):
            continue  # interpreter and extension internals (_cython_*, _sysconfigdata_*)
        used |= dists
        if not dists & allowed:
            outside.append((module, sorted(dists)))
    assert not outside, f"imported from outside the image and requirements.txt: {outside}"
    assert {normalize(n) for n in _listed()} <= used, "requirements.txt lists a wheel nothing imports"


def test_a_spent_budget_is_reported_not_run(tmp_path):
    proc = _run(tmp_path, "--budget-s", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "device_benchmark.json").read_text())
    assert [c["name"] for c in result["cases"]] == ["pi0", "lora_32", "pi05", "lora_8", "full_32", "full_8"]
    assert {c["status"] for c in result["cases"]} == {"skipped: the time budget was spent"}
    assert "| full_8 | skipped: the time budget was spent |" in (tmp_path / "device_benchmark.md").read_text()


@pytest.mark.parametrize("args, message", [(("--cases", "pi1"), "unknown case(s) ['pi1']"),
                                           (("--repeats", "0"), "must be >= 1")])
def test_bad_arguments_exit_2_with_a_clear_message(tmp_path, args, message):
    proc = _run(tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
