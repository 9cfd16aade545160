"""Data parallelism + FSDP on a 2-D ``("data", "fsdp")`` device mesh, single- or multi-host.

The layout follows openpi's ``sharding.py``: the batch is split over *all* devices
(``P(("data", "fsdp"))``), and parameters / optimizer state above ``min_size_mbytes`` are sharded along their largest
axis divisible by the fsdp size (everything else is replicated). ``fsdp`` therefore only saves memory; the
data-parallel degree is always the full device count.

Typical use (the same code runs on one CPU, 8 fake CPU devices, or several hosts after
``distributed.initialize_from_env()``)::

    mesh = make_mesh(num_fsdp_devices)
    state = init_sharded(lambda: init_train_state(config.init(key), tx, rng, ema=True), mesh)
    step = jit_train_step(make_train_step(decoder, tx, ema_decay), mesh, state_shardings(state, mesh))
    for local_batch in loader:                       # this host's part of the global batch (numpy)
        obs, actions, pad = global_batch_from_local(local_batch, mesh)
        with jax.set_mesh(mesh):
            state, metrics = step(state, obs, actions, pad)

``jax.make_mesh`` defaults to ``Explicit`` axis types on jax ≥ 0.7, under which openpi-style FSDP fails at trace
time; :func:`make_mesh` always builds ``Auto`` axes.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import logging
import math
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch dimension is split over both mesh axes


def make_mesh(num_fsdp_devices: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh of ``Auto`` axes over ``devices`` (default: all devices of all processes).

    ``num_fsdp_devices`` must divide the device count; the data axis gets the rest. With the default device order
    (process-major), an fsdp group that divides the per-host device count stays within one host, so parameter
    all-gathers use the fast local interconnect and only gradient reductions cross hosts.
    """
    devs = list(jax.devices() if devices is None else devices)
    n = len(devs)
    if n == 0:
        raise ValueError("make_mesh: no devices given")
    if not isinstance(num_fsdp_devices, (int, np.integer)) or num_fsdp_devices < 1:
        raise ValueError(f"num_fsdp_devices must be a positive int, got {num_fsdp_devices!r}")
    if n % num_fsdp_devices:
        raise ValueError(
            f"num_fsdp_devices={num_fsdp_devices} does not divide the device count {n}; "
            f"choose one of {[d for d in range(1, n + 1) if n % d == 0]}"
        )
    shape = (n // num_fsdp_devices, int(num_fsdp_devices))
    axis_types = (AxisType.Auto, AxisType.Auto)
    if devices is None:
        return jax.make_mesh(shape, BATCH_AXES, axis_types=axis_types)
    return Mesh(np.asarray(devs, dtype=object).reshape(shape), BATCH_AXES, axis_types=axis_types)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh; other axes unsplit."""
    return NamedSharding(mesh, P(BATCH_AXES))


_data_sharding = data_sharding  # for functions whose parameter shadows the name


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def _nbytes(x) -> int:
    itemsize = getattr(x.dtype, "itemsize", None)
    if itemsize is None:
        itemsize = np.dtype(x.dtype).itemsize
    return int(math.prod(x.shape)) * int(itemsize)


def fsdp_sharding(pytree: Any, mesh: Mesh, min_size_mbytes: float = 4, log: bool = False) -> Any:
    """openpi's FSDP rule: a ``NamedSharding`` per leaf of ``pytree`` (arrays or ``ShapeDtypeStruct``\\ s).

    Replicate everything when the fsdp axis has size 1, scalars / vectors, non-arrays, and arrays smaller than
    ``min_size_mbytes`` MiB. Otherwise shard the largest axis divisible by the fsdp size (ties: the later axis, as
    openpi's ``argsort(...)[::-1]``); if none divides, replicate with a warning.
    """
    fsdp = mesh.shape[FSDP_AXIS]
    min_size_bytes = min_size_mbytes * 2**20
    rep = replicated(mesh)

    def one(path, x):
        if fsdp == 1 or not hasattr(x, "shape") or not hasattr(x, "dtype") or len(x.shape) < 2:
            return rep
        if _nbytes(x) < min_size_bytes:
            return rep
        for axis in np.argsort(x.shape, kind="stable")[::-1]:
            if x.shape[axis] % fsdp == 0:
                spec = [None] * len(x.shape)
                spec[axis] = FSDP_AXIS
                if log:
                    logger.info("fsdp: sharding %s %s along axis %d", jax.tree_util.keystr(path), x.shape, axis)
                return NamedSharding(mesh, P(*spec))
        logger.warning(
            "fsdp: no axis of %s %s is divisible by fsdp=%d; replicating", jax.tree_util.keystr(path), x.shape, fsdp
        )
        return rep

    return jax.tree_util.tree_map_with_path(one, pytree)


def state_shardings(abstract_state: Any, mesh: Mesh, min_size_mbytes: float = 4, log: bool = False) -> Any:
    """Shardings for a whole ``TrainState`` (params, optimizer moments and EMA share the FSDP rule; the step counter,
    RNG and optimizer counters are replicated). Accepts concrete arrays or ``jax.eval_shape`` output."""
    return fsdp_sharding(abstract_state, mesh, min_size_mbytes=min_size_mbytes, log=log)


def shard_train_state(state: Any, mesh: Mesh, min_size_mbytes: float = 4, shardings: Any = None) -> Any:
    """Places an existing (host or single-device) ``state`` onto ``mesh``. Every process must pass the same values.

    For large models prefer :func:`init_sharded`, which never materialises the unsharded state on one device.
    """
    if shardings is None:
        shardings = state_shardings(state, mesh, min_size_mbytes)
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)

    def put(x, s):  # multi-host: each process fills only its own devices' shards from its (identical) copy
        x = np.asarray(x) if not isinstance(x, jax.Array) or x.is_fully_addressable else x
        if isinstance(x, jax.Array):
            return jax.device_put(x, s)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, state, shardings)


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, *args, min_size_mbytes: float = 4, log: bool = False) -> Any:
    """Runs ``init_fn(*args)`` jitted with FSDP ``out_shardings`` so each device only materialises its shards.

    ``args`` (e.g. RNG keys) are replicated; every process must pass the same values.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = state_shardings(abstract, mesh, min_size_mbytes, log=log)
    with jax.set_mesh(mesh):
        return jax.jit(init_fn, out_shardings=shardings)(*args)


def jit_train_step(
    step_fn: Callable,
    mesh: Mesh,
    state_sharding: Any,
    data_sharding: NamedSharding | None = None,
    donate: bool = True,
) -> Callable:
    """``jax.jit`` of ``step_fn(state, obs, actions, action_is_pad) -> (state, metrics)`` on ``mesh``.

    State in/out with ``state_sharding``, the three batch arguments with ``data_sharding`` (default
    :func:`data_sharding`), metrics replicated (so every host can read them). The input state is donated. Call
    it with global arrays (see :func:`global_batch_from_local`); wrapping calls in ``jax.set_mesh(mesh)`` makes the
    mesh available to sharding constraints inside the model.
    """
    if data_sharding is None:
        data_sharding = _data_sharding(mesh)
    rep = replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_sharding, data_sharding, data_sharding, data_sharding),
        out_shardings=(state_sharding, rep),
        donate_argnums=(0,) if donate else (),
    )


def check_global_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    n = data_parallel_size(mesh)
    if global_batch_size % n:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the data-parallel device count {n} "
            f"(mesh {dict(mesh.shape)}); use a multiple of {n}"
        )


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of ``global_batch_size`` (what its data loader should produce per step)."""
    check_global_batch_size(global_batch_size, mesh)
    n_local = len(mesh.local_devices)
    return global_batch_size // data_parallel_size(mesh) * n_local


def process_batch_block(mesh: Mesh) -> tuple[int, int]:
    """``(block, count)``: this process's rows of every global batch are block ``block`` of ``count`` equal,
    consecutive blocks (where :func:`global_batch_from_local` puts them). Feed its loader that block of the global
    stream (``DataLoader(shard_index=block, shard_count=count)``) and the global batches are the same for any
    process count. Raises :class:`ValueError` if the mesh gives a process non-consecutive rows."""
    n = data_parallel_size(mesh)
    rows = sorted(idx[0].start or 0 for idx in data_sharding(mesh).addressable_devices_indices_map((n,)).values())
    if not rows:
        raise ValueError("this process has no devices in the mesh")
    if rows != list(range(rows[0], rows[0] + len(rows))) or rows[0] % len(rows) or n % len(rows):
        raise ValueError(f"the mesh gives this process the non-consecutive batch rows {rows} of {n}")
    return rows[0] // len(rows), n // len(rows)


def global_batch_from_local(local_batch: Any, mesh: Mesh, sharding: NamedSharding | None = None) -> Any:
    """Assembles each process's numpy batch (a pytree; leading axis = local batch) into global ``jax.Array``\\ s.

    Process ``p``'s rows land on its own devices; the global batch is the concatenation of the processes' local
    batches in device order (process-major for the default mesh). ``None`` leaves stay ``None``. Single-process,
    this is just a sharded ``device_put``.
    """
    sharding = data_sharding(mesh) if sharding is None else sharding
    n_dp = data_parallel_size(mesh)
    n_local = len(mesh.local_devices)
    if n_local == 0:
        raise ValueError("this process has no devices in the mesh")
    leaves = jax.tree.leaves(local_batch)
    if not leaves:
        raise ValueError("global_batch_from_local: empty batch")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"all batch leaves need the same leading (batch) axis; got leading sizes {sorted(map(str, sizes))}"
        )
    (local_b,) = sizes
    if local_b % n_local:
        raise ValueError(f"local batch size {local_b} is not divisible by this process's {n_local} devices in the mesh")
    global_b = local_b // n_local * n_dp
    check_global_batch_size(global_b, mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (global_b, *x.shape[1:]))

    return jax.tree.map(put, local_batch)


def gather_to_host(tree: Any) -> Any:
    """Full numpy copies of (possibly multi-host sharded) arrays on every process, e.g. for logging or export."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


__all__ = [
    "BATCH_AXES",
    "DATA_AXIS",
    "FSDP_AXIS",
    "check_global_batch_size",
    "data_parallel_size",
    "data_sharding",
    "fsdp_sharding",
    "gather_to_host",
    "global_batch_from_local",
    "init_sharded",
    "jit_train_step",
    "local_batch_size",
    "process_batch_block",
    "make_mesh",
    "replicated",
    "shard_train_state",
    "state_shardings",
]
