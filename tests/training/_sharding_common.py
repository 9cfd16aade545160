"""Shared setup for the sharding tests: the tiny π₀-EqM, a toy batch, and a reference (unsharded) run.

Imported both by the pytest process (1 CPU device) and by the subprocess workers (8 fake devices / 2 processes),
so every run trains the exact same model on the exact same data.
"""

from __future__ import annotations

import numpy as np

GLOBAL_BATCH = 8
STEPS = 2
MIN_SIZE_MBYTES = 0.02  # ~20 KiB: the tiny model's big matrices get sharded, small ones stay replicated
EMA_DECAY = 0.9
LR = 0.1


def config():
    from pi0_eqm.models.configs import model_config

    return model_config("pi0_tiny", real_action_dim=4, image_resolution=(16, 16), action_horizon=4)


def setup():
    """Returns ``(cfg, step_fn, init_fn, batches)``; ``batches`` = list of ``STEPS`` numpy ``(obs, actions, pad)``."""
    import jax
    import optax

    from pi0_eqm.decoders import make_decoder
    from pi0_eqm.training.toy_data import make_batch
    from pi0_eqm.training.train_step import init_train_state
    from pi0_eqm.training.train_step import make_train_step

    cfg = config()
    # SGD + momentum (sharded like the params) after global-norm clipping: the update is linear in the gradient, so
    # comparing updates compares gradients. (Adam would turn fp noise in the exactly-zero attention key-bias
    # gradient into ±lr updates and make a run-to-run comparison meaningless for those leaves.)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(LR, momentum=0.9))
    step_fn = make_train_step(make_decoder(cfg), tx, ema_decay=EMA_DECAY)

    def init_fn():
        return init_train_state(cfg.init(jax.random.key(0)), tx, jax.random.key(1), ema=True)

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(STEPS):
        obs, actions, _ = make_batch(cfg, GLOBAL_BATCH, rng)
        pad = np.zeros(actions.shape[:2], bool)
        pad[::3, -1] = True  # exercise the padding mask
        batches.append((obs, actions, pad))
    return cfg, step_fn, init_fn, batches


def flat(tree) -> dict[str, np.ndarray]:
    import jax

    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def summarize(init_params, metrics, state) -> dict[str, np.ndarray]:
    """npz-able record of a run: per-step loss / grad_norm, the initial params, and the final params + EMA."""
    out = {f"metric/{k}": np.asarray([float(m[k]) for m in metrics]) for k in ("loss", "grad_norm")}
    out.update({f"init{k}": v for k, v in flat(init_params).items()})
    out.update({f"params{k}": v for k, v in flat(state.params).items()})
    out.update({f"ema{k}": v for k, v in flat(state.ema_params).items()})
    out["step"] = np.asarray(state.step)
    return out


def reference_run() -> dict[str, np.ndarray]:
    """The plain single-device ``jax.jit`` run on the full batch."""
    import jax

    _, step_fn, init_fn, batches = setup()
    state = jax.jit(init_fn)()
    init_params = jax.device_get(state.params)
    step = jax.jit(step_fn)
    metrics = []
    for obs, actions, pad in batches:
        state, m = step(state, obs, actions, pad)
        metrics.append(m)
    return summarize(init_params, metrics, jax.device_get(state))


def compare(run: dict, ref: dict) -> dict[str, float]:
    """Errors of ``run`` against ``ref`` (both from :func:`summarize`), each to be compared with a tolerance.

    - ``loss`` / ``grad_norm``: max relative difference over steps.
    - ``params`` / ``ema``: max over leaves of ``max|a - b| / max(max|b|, 1e-3)`` (final values; the floor is for
      zero-initialised leaves that receive no gradient).
    - ``update``: what training changed, ``Δ = final - init`` (for SGD the summed clipped gradients), per leaf
      ``max|Δa - Δb| / (1e-2 max|Δb| + 8 ulp(max|p|) + 1e-4 max_all|Δb|)``; <= 1 passes. The ulp term is the
      rounding of the stored fp32 params (the tiny model's updates are ~1e-4 of the params), the last term covers
      leaves whose true gradient is ~0 (attention key biases, the last LLM layer's query).
    - ``init``: max abs difference of the initial params (should be exactly 0).
    """
    out = {}
    for k in ("loss", "grad_norm"):
        a, b = run[f"metric/{k}"], ref[f"metric/{k}"]
        out[k] = float(np.max(np.abs(a - b) / np.abs(b)))
    names = [k[len("params") :] for k in ref if k.startswith("params")]
    for pre in ("params", "ema"):
        out[pre] = max(
            float(np.max(np.abs(run[pre + n] - ref[pre + n])) / max(float(np.max(np.abs(ref[pre + n]))), 1e-3))
            for n in names
        )
    out["init"] = max(float(np.max(np.abs(run["init" + n] - ref["init" + n]))) for n in names)
    eps = float(np.finfo(np.float32).eps)
    worst = 0.0
    for pre in ("params", "ema"):
        d_ref = {n: ref[pre + n].astype(np.float64) - ref["init" + n] for n in names}
        d_run = {n: run[pre + n].astype(np.float64) - run["init" + n] for n in names}
        glob = max(float(np.max(np.abs(v))) for v in d_ref.values())
        for n in names:
            assert d_run[n].shape == d_ref[n].shape, (n, d_run[n].shape, d_ref[n].shape)
            scale = 1e-2 * np.max(np.abs(d_ref[n])) + 8 * eps * np.max(np.abs(ref[pre + n])) + 1e-4 * glob
            worst = max(worst, float(np.max(np.abs(d_run[n] - d_ref[n])) / scale))
    out["update"] = worst
    return out


TOLERANCES = {"loss": 1e-5, "grad_norm": 1e-5, "params": 1e-5, "ema": 1e-5, "update": 1.0, "init": 0.0}


def assert_matches(run: dict, ref: dict, what: str) -> dict[str, float]:
    errs = compare(run, ref)
    bad = {k: v for k, v in errs.items() if v > TOLERANCES[k]}
    assert not bad, f"{what} differs from the single-device reference: {bad} (all errors {errs})"
    return errs


def flat_arrays(tree) -> dict:
    import jax

    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


flat_shardings = flat_arrays


# ---- running the worker in subprocesses (used by test_sharding.py and test_distributed.py) -------------------------

WORKER = __import__("pathlib").Path(__file__).with_name("_sharding_worker.py")
CACHE_DIR = WORKER.parents[2] / ".cache" / "jax"  # the persistent compilation cache tests/conftest.py uses
# Compile-time savers (the tiny model's train step compiles ~2x faster); all runs use the same flags.
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
WORKER_TIMEOUT_S = 240

_memo: dict = {}


def worker_env(num_devices: int, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PI0_", "SLURM_", "JAX_", "XLA_"))}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{FAST_XLA_FLAGS} --xla_force_host_platform_device_count={num_devices}",
        JAX_COMPILATION_CACHE_DIR=str(CACHE_DIR),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_worker(args: list[str], env: dict[str, str], log_path):
    """Starts the worker script; its stdout+stderr go to ``log_path`` (a file, so a chatty worker never blocks)."""
    import subprocess
    import sys

    log = open(log_path, "w")  # noqa: SIM115  (closed by wait_workers)
    proc = subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_file = log
    return proc


def wait_workers(procs, timeout: float = WORKER_TIMEOUT_S) -> list[str]:
    """Waits for all ``procs``; on a timeout or the first failure kills the others (a peer of a dead process would
    otherwise hang in a collective). Returns their outputs."""
    import time

    deadline = time.monotonic() + timeout
    failed = None
    try:
        while any(p.poll() is None for p in procs):
            failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            if failed is not None:
                break
            if time.monotonic() > deadline:
                failed = -1
                break
            time.sleep(0.2)
        else:
            failed = next((i for i, p in enumerate(procs) if p.returncode != 0), None)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.log_file.close()
    outputs = [open(p.log_file.name).read() for p in procs]
    if failed == -1:
        raise AssertionError(f"workers timed out after {timeout:.0f}s:\n" + "\n".join(o[-3000:] for o in outputs))
    if failed is not None:
        raise AssertionError(f"worker {failed} exited with {procs[failed].returncode}:\n{outputs[failed][-6000:]}")
    return outputs


def start_reference(out_dir):
    """Starts the single-device reference run (once per pytest session); ``None`` if it is already done.

    Run it next to the test's own workers (pass it to the same :func:`wait_workers`) so it uses the other core.
    """
    if "reference" in _memo:
        return None
    return start_worker(["reference", str(out_dir)], worker_env(1), f"{out_dir}/reference.log")


def load_reference(out_dir) -> dict[str, np.ndarray]:
    if "reference" not in _memo:
        _memo["reference"] = dict(np.load(f"{out_dir}/reference.npz"))
    return _memo["reference"]
