"""Multi-process (multi-host) JAX start-up from environment variables (openpi has no equivalent).

Call :func:`initialize_from_env` first thing in a training script, before any other JAX call. It reads, in order:

1. Our own variables (any launcher: ``torchrun``-style scripts, ``mpirun`` wrappers, manual runs, tests)::

       PI0_COORDINATOR_ADDRESS=host:port   # process 0's address, reachable by all processes
       PI0_NUM_PROCESSES=N
       PI0_PROCESS_ID=i                    # 0 <= i < N
       PI0_LOCAL_DEVICE_IDS=0,1            # optional: restrict this process to these local accelerators

   ``PI0_NUM_PROCESSES`` and ``PI0_PROCESS_ID`` must be given together; the address is required when N > 1.
2. SLURM (``srun``): ``SLURM_NTASKS`` / ``SLURM_PROCID``; the coordinator is the first node of
   ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``) on port ``PI0_COORDINATOR_PORT`` (else
   ``JAX_COORDINATOR_PORT``, else a port derived from ``SLURM_JOB_ID`` as JAX does). ``PI0_COORDINATOR_ADDRESS``
   overrides the derived address. With several tasks per node each task is pinned to the accelerator
   ``SLURM_LOCALID`` (one task per GPU); with one task per node it keeps all local devices. (JAX's own SLURM
   auto-detection would pin a one-task-per-node job to a single GPU, which is why we compute the values ourselves.)
3. Otherwise, a cluster that JAX's own auto-detection recognises (Open MPI's ``mpirun``, a Cloud TPU pod slice
   started with ``--worker=all``, GKE TPU / Kubernetes with ``jax[k8s]``): ``jax.distributed.initialize()`` with
   no arguments, as JAX documents for those launchers.
4. Otherwise: a single process, nothing to initialize.

``PI0_DISTRIBUTED=0`` forces a single process whatever the environment says (e.g. a plain ``python train.py`` inside
an ``sbatch --ntasks=4`` script, where SLURM's variables describe tasks that were never launched).

On CPU, cross-process collectives use gloo (JAX's default ``jax_cpu_collectives_implementation``), which we set
explicitly. The local CPU device count is the usual ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` (or
``jax_num_cpu_devices``).
"""

from __future__ import annotations

from collections.abc import Mapping
import logging
import os
import re
import threading

import jax
from jax._src import xla_bridge
from jax._src.clusters import ClusterEnv

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "PI0_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "PI0_NUM_PROCESSES"
ENV_PROCESS_ID = "PI0_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "PI0_LOCAL_DEVICE_IDS"
ENV_COORDINATOR_PORT = "PI0_COORDINATOR_PORT"
ENV_DISABLE = "PI0_DISTRIBUTED"  # "0" / "false" / "no" / "off": always a single process


class DistributedConfigError(ValueError):
    """The environment describes an inconsistent or incomplete multi-process setup."""


def _int_var(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise DistributedConfigError(f"{name}={raw!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """First hostname of a SLURM node list: ``node[001-004,007],gpu5`` → ``node001``; ``a,b`` → ``a``."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise DistributedConfigError("empty SLURM node list")
    m = re.match(r"^([^,\[]*)(?:\[([^\]]*)\])?", nodelist)
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    first = re.split(r"[,-]", ranges, maxsplit=1)[0]
    return prefix + first


def _parse_device_ids(raw: str, name: str) -> list[int]:
    try:
        ids = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise DistributedConfigError(f"{name}={raw!r} must be a comma-separated list of ints") from None
    if not ids:
        raise DistributedConfigError(f"{name} is set but empty")
    return ids


def _check_address(address: str, name: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedConfigError(f"{name}={address!r} must be 'host:port' with a port in 1..65535")
    return address


def _disabled(env: Mapping[str, str]) -> bool:
    return env.get(ENV_DISABLE, "").strip().lower() in ("0", "false", "no", "off")


def detect_cluster() -> str | None:
    """Name of the cluster JAX's auto-detection finds in ``os.environ`` (``ompi``, ``gcetpu``, ``gketpu``, ``k8s``,
    ...), or ``None``. SLURM is left to :func:`resolve_env`, which pins devices per task itself."""
    for cluster in ClusterEnv._cluster_types:
        if cluster.opt_in_only_method or cluster.name in ("", "slurm"):
            continue
        if cluster.is_env_present():
            return cluster.name
    return None


def resolve_env(env: Mapping[str, str] | None = None) -> dict | None:
    """The ``jax.distributed.initialize`` arguments described by ``env`` (default ``os.environ``), or ``None`` for a
    single-process run. Raises :class:`DistributedConfigError` for half-specified settings. Pure; no JAX calls."""
    env = os.environ if env is None else env
    if _disabled(env):
        return None
    ours = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if env.get(k, "") != ""]
    local_ids = (
        _parse_device_ids(env[ENV_LOCAL_DEVICE_IDS], ENV_LOCAL_DEVICE_IDS)
        if env.get(ENV_LOCAL_DEVICE_IDS, "") != ""
        else None
    )
    address = env.get(ENV_COORDINATOR, "") or None

    if ours:
        if len(ours) != 2:
            missing = ENV_PROCESS_ID if ENV_NUM_PROCESSES in ours else ENV_NUM_PROCESSES
            raise DistributedConfigError(
                f"{ours[0]} is set but {missing} is not; set {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID} and "
                f"{ENV_COORDINATOR} together (or none of them for a single process)"
            )
        num, pid = _int_var(env, ENV_NUM_PROCESSES), _int_var(env, ENV_PROCESS_ID)
        source = "PI0_*"
    elif "SLURM_NTASKS" in env or "SLURM_PROCID" in env:
        if not ("SLURM_NTASKS" in env and "SLURM_PROCID" in env):
            raise DistributedConfigError(
                "found only one of SLURM_NTASKS / SLURM_PROCID; launch with `srun` so SLURM sets both "
                f"(or set {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID} explicitly)"
            )
        num, pid = _int_var(env, "SLURM_NTASKS"), _int_var(env, "SLURM_PROCID")
        source = "SLURM"
        if num > 1 and address is None:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
            if not nodelist:
                raise DistributedConfigError(
                    f"SLURM job with {num} tasks but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set; "
                    f"set {ENV_COORDINATOR}=host:port"
                )
            port = env.get(ENV_COORDINATOR_PORT) or env.get("JAX_COORDINATOR_PORT")
            if not port:
                if "SLURM_JOB_ID" not in env:
                    raise DistributedConfigError(
                        f"cannot derive a coordinator port without SLURM_JOB_ID; set {ENV_COORDINATOR_PORT}"
                    )
                port = str(_int_var(env, "SLURM_JOB_ID") % 2**12 + (65535 - 2**12 + 1))  # same rule as JAX
            address = f"{first_slurm_host(nodelist)}:{port}"
        if num > 1 and local_ids is None and "SLURM_LOCALID" in env:
            nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")
            per_node = env.get("SLURM_NTASKS_PER_NODE")
            several = (
                int(per_node) > 1
                if per_node and per_node.isdigit()
                else (nodes is not None and nodes.isdigit() and num > int(nodes))
            )
            if several:
                local_ids = [_int_var(env, "SLURM_LOCALID")]
    else:
        if address is not None:
            raise DistributedConfigError(f"{ENV_COORDINATOR} is set but {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID} are not")
        return None

    if num < 1:
        raise DistributedConfigError(f"number of processes must be >= 1, got {num} ({source})")
    if not 0 <= pid < num:
        raise DistributedConfigError(f"process id {pid} is out of range for {num} processes ({source})")
    if num == 1:
        return None
    if address is None:
        raise DistributedConfigError(f"{ENV_NUM_PROCESSES}={num} > 1 needs {ENV_COORDINATOR}=host:port")
    return {
        "coordinator_address": _check_address(address, ENV_COORDINATOR if source == "PI0_*" else "coordinator"),
        "num_processes": num,
        "process_id": pid,
        "local_device_ids": local_ids,
        "source": source,
    }


def _check_backends_untouched() -> None:
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "initialize_from_env() must be called before any JAX computation or device query "
            "(jax.devices(), jnp arrays, ...) in this process"
        )


def initialize_from_env(env: Mapping[str, str] | None = None, *, initialization_timeout: int = 300) -> tuple[int, int]:
    """Initializes ``jax.distributed`` as the environment describes; returns ``(process_index, process_count)``.

    A no-op returning ``(0, 1)`` for a single process. Idempotent: a second call (or a call after the launcher
    already initialized JAX) returns the current values. Must run before anything touches a JAX backend.
    """

    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    args = resolve_env(env)
    if args is None:
        cluster = None if env is not None or _disabled(os.environ) else detect_cluster()
        if cluster is None:
            return 0, 1
        _check_backends_untouched()
        logger.info("jax.distributed.initialize with JAX's auto-detection (%s cluster)", cluster)
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
        return jax.process_index(), jax.process_count()
    _check_backends_untouched()
    source = args.pop("source")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logger.info(
        "jax.distributed.initialize from %s: process %d/%d, coordinator %s",
        source,
        args["process_id"],
        args["num_processes"],
        args["coordinator_address"],
    )
    jax.distributed.initialize(
        **args,
        cluster_detection_method="deactivate",  # we resolved everything; don't let JAX re-detect and override
        initialization_timeout=initialization_timeout,
    )
    index, count = jax.process_index(), jax.process_count()
    if (index, count) != (args["process_id"], args["num_processes"]):
        raise RuntimeError(
            f"jax reports process {index}/{count}, expected {args['process_id']}/{args['num_processes']}"
        )
    return index, count


def per_host_shard() -> tuple[int, int]:
    """``(shard_index, shard_count)`` for this host's data loader: one disjoint shard per JAX process."""

    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """True on the process that should log, write summaries and export artefacts."""

    return jax.process_index() == 0


__all__ = [
    "DistributedConfigError",
    "detect_cluster",
    "first_slurm_host",
    "initialize_from_env",
    "is_main_process",
    "per_host_shard",
    "resolve_env",
]


def _live_processes(timeout_s: float) -> set[int] | None:
    """The processes the coordination service counts as alive, or ``None`` if it does not answer within ``timeout_s``
    (it answers once it has noticed a death: after the heartbeat timeout, 100 s by default)."""
    from jax._src import distributed as _distributed  # lazy: JAX's private client, asked only after a failure

    client = _distributed.global_state.client
    if client is None:
        return None
    answer: list = []

    def ask() -> None:
        try:
            answer.append(client.get_live_nodes(list(range(jax.process_count()))))
        except Exception:  # noqa: BLE001 - the service itself may be gone (process 0 hosts it)
            pass

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not answer:
        return None
    live = answer[0]
    return {int(getattr(n, "node_id", n)) for n in (live.keys() if isinstance(live, Mapping) else live)}


def peer_failure(e: BaseException, *, wait_s: float = 5.0) -> str | None:
    """For a multi-process job, the one-paragraph report of a JAX runtime error (a failed collective: another
    process is gone) naming the process that stopped: the only other one in a 2-process job, else those the
    coordination service no longer counts as alive if it answers within ``wait_s`` seconds; ``None`` for anything
    else."""
    if not isinstance(e, jax.errors.JaxRuntimeError) or not jax.distributed.is_initialized() or jax.process_count() < 2:
        return None
    me, count = jax.process_index(), jax.process_count()
    if count == 2:
        dead = [1 - me]
    else:
        live = _live_processes(wait_s)
        dead = sorted(set(range(count)) - live - {me}) if live is not None else []
    who = (f"process{'es' if len(dead) > 1 else ''} {', '.join(map(str, dead))} of {count} stopped" if dead
           else f"another of the {count} processes most likely stopped (the coordinator could not yet say which)")
    detail = " ".join(str(e).split())[:300]
    return (f"process {me} of {count}: a step's collective with the other processes failed ({detail}); {who}. See "
            "that process's log for why; the last committed checkpoint step is intact: restart every process with "
            "--resume")
