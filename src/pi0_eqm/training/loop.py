"""The training loop behind ``scripts/train.py``: data → sharded jitted steps → logs and openpi-layout checkpoints.

Better than openpi where it is weak: the data-iterator state is checkpointed (a resumed run sees exactly the batches
an uninterrupted run would), SIGTERM/SIGINT save a checkpoint before exiting, a NaN/inf loss stops the run with a clear
message without overwriting the last good checkpoint, and multi-host jobs shard the data per process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from pi0_eqm.atomic import atomic_write_bytes
from pi0_eqm.data.loader import DataLoader
from pi0_eqm.decoders import make_decoder
from pi0_eqm.models.ki import FAST_TOKENIZER_DIR
from pi0_eqm.training import checkpoints as _ckpt
from pi0_eqm.training import distributed as _dist
from pi0_eqm.training import sharding as _sharding
from pi0_eqm.training.augment import with_augmentation
from pi0_eqm.training.checkpoint_dir import latest_step_dir
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.config_record import config_to_record
from pi0_eqm.training.config_record import read_config_and_data
from pi0_eqm.training.config_record import resume_differences
from pi0_eqm.training.data_loader import create_data_loader
from pi0_eqm.training.data_loader import split_batch
from pi0_eqm.training.freeze import ParamPartition
from pi0_eqm.training.train_step import init_train_state
from pi0_eqm.training.train_step import make_train_step

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class _StopFlag:
    """Once armed (after the first step of this call: before it, no step is owed and a signal ends the process at
    once, even inside a compile), SIGTERM/SIGINT ask the loop to stop after the current step and save. A second
    Ctrl-C while a checkpoint save is in progress (``saving()``) waits for the save; otherwise, or on a third, it
    raises KeyboardInterrupt."""

    def __init__(self, saving=lambda: False):
        self.signal: int | None = None
        self.saving = saving
        self._interrupts = 0
        self._old = {}

    def __enter__(self):
        return self

    def arm(self) -> None:
        if self._old:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts == 1 and self.saving():
                logger.warning("a checkpoint save is in progress: waiting for it to finish (Ctrl-C again aborts it, "
                               "losing that checkpoint)")
                return
            raise KeyboardInterrupt  # give up immediately
        self.signal = signum
        logger.warning("received signal %d: finishing the current step and saving a checkpoint", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _log_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Rewrite ``metrics.jsonl`` (atomically) as an uninterrupted run up to ``last_step`` would have left it: one
    record per step (the last written), none after ``last_step``, no torn lines."""
    if not path.is_file():
        return
    records: dict[int, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and step <= last_step:
            records[step] = json.dumps(record)
    atomic_write_bytes(path, "".join(records[s] + "\n" for s in sorted(records)).encode())


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _non_finite_error(what: str, step: int, manager, checkpoint_dir: Path) -> NonFiniteLossError:
    """The error of a non-finite loss or params at (1-based) ``step``, naming the last committed checkpoint only
    after the pending asynchronous save has finished."""
    note = ""
    try:
        _ckpt.wait_until_saved(manager)
    except _ckpt.CheckpointSaveError as e:
        note = f" (the checkpoint save in progress failed: {e})"
    manager.reload()
    committed = manager.latest_step()
    kept = (f"The last good checkpoint in {checkpoint_dir} is step {committed}; --resume continues from it"
            if committed is not None else f"No checkpoint of this run was committed in {checkpoint_dir}")
    return NonFiniteLossError(
        f"{what} at step {step} (as numbered in metrics.jsonl); stopping without saving this state. {kept}{note}. "
        "Lower the learning rate or check the norm stats for near-constant dimensions."
    )


# The jitted train step of every step structure trained in this process, so a second run of the same structure (a
# resume, another seed, another dataset of the same shapes) reuses its compilation.
_STEP_FNS: dict[tuple, Any] = {}


def step_key(config: TrainConfig, mesh) -> tuple:
    """Everything the jitted train step depends on besides its arguments' shapes: the model and decoder, the
    optimizer, the LR schedule, EMA, the freeze filter, augmentation and the sharding. Seeds, data, paths and
    checkpointing do not enter it."""
    return (config.model, config.optimizer, config.lr_schedule, config.ema_decay, config.freeze,
            config.augment_images, config.fsdp_devices, config.fsdp_min_size_mbytes, mesh)


def _check_resume_config(config: TrainConfig, data_fingerprint: str | None) -> None:
    """Refuse a ``--resume`` whose config or data content differs from what the newest step recorded (fields a
    resume may change: ``config_record.RESUMABLE_FIELDS``)."""
    try:
        step_dir = latest_step_dir(config.checkpoint_dir)
        recorded, recorded_data = read_config_and_data(step_dir)
    except (FileNotFoundError, ValueError) as e:
        logger.warning("cannot compare with the recorded train config (%s); resuming without that check", e)
        return
    diffs = resume_differences(config, recorded, data_fingerprint, recorded_data) if recorded is not None else []
    if diffs:
        listed = "\n  ".join(diffs)
        raise ValueError(
            f"--resume: this config differs from the one step {step_dir.name} of {config.checkpoint_dir} was trained "
            f"with:\n  {listed}\nEither restore the recorded values (the step's train_config/train_config.json "
            "holds them), or start a new run (another --exp-name) that loads these weights with "
            f"weight_loader=CheckpointWeightLoader({str(step_dir / 'params')!r}) in its config.")


def train(config: TrainConfig, *, progress: bool = True, stop_after: int | None = None) -> dict:
    """Runs (or resumes) training. ``stop_after`` stops after that many steps of this call (tests: simulate a kill)."""

    process_index, process_count = _dist.initialize_from_env()
    mesh = _sharding.make_mesh(config.fsdp_devices)
    data_cfg = config.data.create(config.model, config.assets_dir)
    decoder = make_decoder(config.model)
    schedule = config.lr_schedule.create()
    tx = config.optimizer.create(schedule)

    rng = jax.random.key(config.seed)
    train_rng, init_rng = jax.random.split(rng)

    partition = ParamPartition.of(jax.eval_shape(config.model.init, init_rng), config.model, config.freeze)

    def init_state():
        params = config.model.init(init_rng)
        return init_train_state(params, tx, train_rng, ema=config.ema_decay is not None, partition=partition)

    abstract = jax.eval_shape(init_state)
    state_sharding = _sharding.fsdp_sharding(abstract, mesh, min_size_mbytes=config.fsdp_min_size_mbytes)
    # The data and its norm stats are checked before the run directory is touched.
    block, blocks = _sharding.process_batch_block(mesh)  # the global batches do not depend on the process count
    loader = create_data_loader(config, data_cfg, shard_index=block, shard_count=blocks)
    data_fingerprint = config.data.fingerprint()
    manager, resuming = _ckpt.initialize_checkpoint_dir(
        config.checkpoint_dir, keep_period=config.keep_period, max_to_keep=config.max_to_keep,
        overwrite=config.overwrite, resume=config.resume, async_save=config.async_checkpoint,
        base_dir=config.checkpoint_base_dir,
    )
    setup = _Setup(config, mesh, process_index, data_cfg, decoder, tx, schedule, partition, init_state, abstract,
                   state_sharding, loader, data_fingerprint)
    try:
        return _train_in(setup, manager, resuming, progress=progress, stop_after=stop_after)
    finally:
        _ckpt.release_run_dir(manager)  # on every exit path (a no-op when already released)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What ``train`` prepares before it takes the run directory."""

    config: TrainConfig
    mesh: Any
    process_index: int
    data_cfg: Any
    decoder: Any
    tx: Any
    schedule: Any
    partition: ParamPartition
    init_state: Any
    abstract: Any
    state_sharding: Any
    loader: DataLoader
    data_fingerprint: str | None  # the training data's content (pi0_eqm.data.fingerprint), recorded with every step


def _train_in(setup: _Setup, manager, resuming: bool, *, progress: bool, stop_after: int | None) -> dict:
    """The run itself, once its directory is locked: restore or initialize, then the step loop."""
    config, mesh, process_index, data_cfg = setup.config, setup.mesh, setup.process_index, setup.data_cfg
    loader, abstract, state_sharding, partition = setup.loader, setup.abstract, setup.state_sharding, setup.partition
    if resuming:
        _check_resume_config(config, setup.data_fingerprint)
    data_iter = iter(loader)

    if resuming:
        abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                        abstract, state_sharding)
        state, data_state, start = _ckpt.restore_state(manager, abstract_sharded,
                                                       data_state_check=loader.state_problems)
        if data_state is not None:
            data_iter.set_state(data_state)
        logger.info("resumed from step %d of %s", start, config.checkpoint_dir)
    else:
        state = jax.jit(setup.init_state, out_shardings=state_sharding)()
        params = config.weight_loader.load(_sharding.gather_to_host(state.params))  # multi-host: every process
        state = _sharding.shard_train_state(
            state.replace(params=params, ema_params=params if config.ema_decay is not None else None), mesh,
            shardings=state_sharding)
        start = 0

    data_sharding = _sharding.data_sharding(mesh)
    n_train, n_frozen = partition.count(abstract.params)
    logger.info("%.2fM trainable params, %.2fM frozen", n_train / 1e6, n_frozen / 1e6)
    key = step_key(config, mesh)
    step_fn = _STEP_FNS.get(key)
    if step_fn is None:
        train_step = make_train_step(setup.decoder, setup.tx, config.ema_decay, setup.schedule, partition)
        if config.augment_images:
            train_step = with_augmentation(train_step)
        step_fn = _STEP_FNS[key] = jax.jit(
            train_step, in_shardings=(state_sharding, data_sharding, data_sharding, data_sharding),
            out_shardings=(state_sharding, _sharding.replicated(mesh)), donate_argnums=0)

    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.checkpoint_dir / "metrics.jsonl"
    if process_index == 0:  # a fresh run in a reused directory starts with an empty log
        _truncate_metrics(log_path, start)
    norm_stats = {data_cfg.asset_id: data_cfg.norm_stats} if data_cfg.norm_stats else None
    # The fitted FAST tokenizer travels with every checkpoint step (assets/<asset_id>/fast_tokenizer/).
    fast_dir = config.assets_dir / str(data_cfg.asset_id) / FAST_TOKENIZER_DIR
    asset_dirs = {f"{data_cfg.asset_id}/{FAST_TOKENIZER_DIR}": fast_dir} if data_cfg.asset_id and fast_dir.is_dir() \
        else None
    wandb_run = _maybe_wandb(config, resuming)
    config_record = config_to_record(config, setup.data_fingerprint)  # every step records its config and data

    def save(s, wait=False):
        _ckpt.save_state(manager, s, ema=config.ema_decay is not None, norm_stats=norm_stats,
                         data_state=data_iter.get_state(), wait=wait, asset_dirs=asset_dirs,
                         train_config=config_record)

    history, t_last, n_since = [], time.perf_counter(), 0
    step = start
    with _StopFlag(saving=manager.is_saving_in_progress) as stop, jax.set_mesh(mesh):
        pbar = tqdm(range(start, config.num_train_steps), initial=start, total=config.num_train_steps,
                    disable=not progress or process_index != 0, desc=config.name)
        for step in pbar:
            batch = next(data_iter)
            obs, actions, is_pad = split_batch(batch)
            obs, actions, is_pad = _sharding.global_batch_from_local((obs, actions, is_pad), mesh)
            new_state, metrics = step_fn(state, obs, actions, is_pad)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise _non_finite_error(f"loss is {loss}", step + 1, manager, config.checkpoint_dir)
            if not bool(_all_finite(new_state.params)):
                raise _non_finite_error("the params hold NaN or infinite values", step + 1, manager,
                                        config.checkpoint_dir)
            state = new_state
            stop.arm()
            n_since += 1
            done = step + 1
            if done % config.log_interval == 0 or done == config.num_train_steps:
                now = time.perf_counter()
                record = {k: float(v) for k, v in jax.device_get(metrics).items()}
                record |= {"step": done, "samples_per_s": n_since * config.batch_size / (now - t_last),
                           "time": time.time()}
                t_last, n_since = now, 0
                history.append(record)
                if process_index == 0:
                    _log_line(log_path, record)
                    pbar.set_postfix(loss=f"{record['loss']:.4f}", gnorm=f"{record['grad_norm']:.3f}")
                    if wandb_run is not None:
                        wandb_run.log(record, step=done)
            stopping = stop.signal is not None or (stop_after is not None and done - start >= stop_after)
            if done % config.save_interval == 0 or done == config.num_train_steps or stopping:
                save(state, wait=stopping)
            if stopping:
                logger.warning("stopped at step %d; resume with --resume", done)
                break
        _ckpt.wait_until_saved(manager)
    return {"state": state, "history": history, "last_step": int(jax.device_get(state.step)), "start_step": start}


def _maybe_wandb(config: TrainConfig, resuming: bool):
    if not config.wandb_enabled or jax.process_index() != 0:
        return None
    try:
        import wandb  # lazy: optional extra (uv sync --extra wandb)
    except ImportError as e:
        raise ImportError("wandb is enabled but not installed: uv sync --extra wandb") from e
    id_file = config.checkpoint_dir / "wandb_id.txt"
    if resuming and id_file.exists():
        return wandb.init(id=id_file.read_text().strip(), resume="must", project=config.project_name)
    run = wandb.init(name=config.exp_name, project=config.project_name, config={"name": config.name})
    id_file.write_text(run.id)
    return run
