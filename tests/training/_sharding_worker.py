"""Subprocess worker for tests/training/test_sharding.py and test_distributed.py (not collected by pytest).

    python _sharding_worker.py reference OUT_DIR           # single device, plain jax.jit, full batch
    python _sharding_worker.py mesh OUT_DIR FSDP [FSDP...] # one process with 8 fake CPU devices (XLA_FLAGS)
    python _sharding_worker.py multi OUT_DIR FSDP          # one of N processes; PI0_* env vars set by the test

Writes ``<OUT_DIR>/<name>.npz`` (see ``_sharding_common.summarize``) and ``<name>.json`` (mesh + shardings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, for `tests.training._sharding_common`

from pi0_eqm.training import distributed  # noqa: E402  (imports no jax backend)

T0 = time.time()


def log(msg):
    print(f"[worker {os.environ.get('PI0_PROCESS_ID', '-')} {time.time() - T0:6.1f}s] {msg}", flush=True)


def trees_equal(a, b) -> bool:
    import jax
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


def run(mesh, out_dir: Path, name: str, process_rows=None):
    """Initialises the state on ``mesh`` and trains ``STEPS`` steps; process 0 saves the record."""
    import jax
    import numpy as np

    from pi0_eqm.training import sharding as sh
    from tests.training import _sharding_common as common

    _, step_fn, init_fn, batches = common.setup()
    shardings = sh.state_shardings(jax.eval_shape(init_fn), mesh, min_size_mbytes=common.MIN_SIZE_MBYTES)
    info = {
        "mesh": dict(mesh.shape),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
    }
    state = sh.init_sharded(init_fn, mesh, min_size_mbytes=common.MIN_SIZE_MBYTES)
    host_state = sh.gather_to_host(state)
    # the host -> mesh path (e.g. restoring a checkpoint) must reproduce the same global arrays and shardings
    placed = sh.shard_train_state(host_state, mesh, shardings=shardings)
    info["put_roundtrip_equal"] = trees_equal(sh.gather_to_host(placed), host_state) and all(
        a.sharding == b.sharding for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(state), strict=True)
    )
    del placed
    flat_params = common.flat_arrays(state.params)
    info["specs"] = {k: str(s.spec) for k, s in common.flat_arrays(shardings.params).items()}
    info["placed_specs"] = {k: str(x.sharding.spec) for k, x in flat_params.items()}
    info["shard_shapes"] = {k: list(x.addressable_shards[0].data.shape) for k, x in flat_params.items()}
    info["full_shapes"] = {k: list(x.shape) for k, x in flat_params.items()}
    info["opt_state_specs"] = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state.opt_state)})

    step = sh.jit_train_step(step_fn, mesh, shardings)
    metrics = []
    for obs, actions, pad in batches:
        local = (obs, actions, pad)
        if process_rows is not None:
            local = jax.tree.map(lambda x: x[process_rows], local)
        g_obs, g_actions, g_pad = sh.global_batch_from_local(local, mesh)
        assert g_actions.shape == actions.shape, (g_actions.shape, actions.shape)
        with jax.set_mesh(mesh):
            state, m = step(state, g_obs, g_actions, g_pad)
        metrics.append(m)
        log(f"{name}: loss {float(m['loss']):.6f}")
    info["out_specs_equal"] = {k: str(x.sharding.spec) for k, x in common.flat_arrays(state.params).items()} == (
        info["placed_specs"]
    )
    final = sh.gather_to_host(state)
    if jax.process_index() == 0:
        np.savez(out_dir / f"{name}.npz", **common.summarize(host_state.params, metrics, final))
        (out_dir / f"{name}.json").write_text(json.dumps(info, indent=1))


def main():
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    fsdps = [int(x) for x in sys.argv[3:]]
    index, count = distributed.initialize_from_env()
    import jax

    from pi0_eqm.training import sharding as sh
    from tests.training import _sharding_common as common

    log(
        f"process {index}/{count}, {jax.local_device_count()} local / {jax.device_count()} global devices, "
        f"cpu collectives {jax.config.jax_cpu_collectives_implementation}"
    )
    if mode == "reference":
        import numpy as np

        np.savez(out_dir / "reference.npz", **common.reference_run())
    elif mode == "mesh":
        for f in fsdps:
            run(sh.make_mesh(f), out_dir, f"mesh_{jax.device_count() // f}x{f}")
    elif mode == "multi":
        shard, nshards = distributed.per_host_shard()
        per = common.GLOBAL_BATCH // nshards
        rows = slice(shard * per, (shard + 1) * per)  # this host's part of every global batch
        (f,) = fsdps
        run(sh.make_mesh(f), out_dir, f"multi_{count}p_{jax.device_count() // f}x{f}", process_rows=rows)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    log("done")


if __name__ == "__main__":
    main()
