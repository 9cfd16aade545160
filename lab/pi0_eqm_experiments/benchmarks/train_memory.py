"""Training memory of a config without materialising it: train-state bytes from ``jax.eval_shape`` and the compiled
train step's buffer sizes from ``jit(...).lower(abstract inputs).compile().memory_analysis()``.

The compiled figures are XLA's buffer assignment for the backend this runs on (the CPU here): arguments (the train
state and the batch), outputs, temporaries (activations kept for the backward pass, gradients, optimizer update) and
the bytes aliased between arguments and outputs by donating the state. The peak a device needs is about
``arguments + outputs − aliased + temporaries``; a GPU's buffer assignment differs somewhat from the CPU's.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from pi0_eqm.decoders import make_decoder
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.freeze import ParamPartition
from pi0_eqm.training.train_step import init_train_state
from pi0_eqm.training.train_step import make_train_step

GIB = 2**30


def _bytes(tree) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class TrainMemory:
    config: str
    batch_size: int
    params: int  # parameter count
    trainable: int  # trainable parameter count
    params_bytes: int
    trainable_bytes: int
    opt_state_bytes: int
    ema_bytes: int
    state_bytes: int
    # compiled train step (None when not compiled)
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    compile_s: float | None = None

    @property
    def peak_bytes(self) -> int | None:
        if self.temp_bytes is None:
            return None
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def train_memory(cfg: TrainConfig, batch_size: int | None = None, *, compile: bool = True) -> TrainMemory:
    batch_size = batch_size or cfg.batch_size
    model = cfg.model
    schedule = cfg.lr_schedule.create()
    tx = cfg.optimizer.create(schedule)
    partition = ParamPartition.of(jax.eval_shape(model.init, jax.random.key(0)), model, cfg.freeze)
    state = jax.eval_shape(lambda: init_train_state(model.init(jax.random.key(0)), tx, jax.random.key(1),
                                                    ema=cfg.ema_decay is not None, partition=partition))
    trainable, _ = partition.split(state.params)
    n_train, n_frozen = partition.count(state.params)
    out = dict(config=cfg.name, batch_size=batch_size, params=n_train + n_frozen, trainable=n_train,
               params_bytes=_bytes(state.params), trainable_bytes=_bytes(trainable),
               opt_state_bytes=_bytes(state.opt_state), ema_bytes=_bytes(state.ema_params) if state.ema_params else 0,
               state_bytes=_bytes(state))
    if compile:
        obs = jax.eval_shape(lambda: model.fake_obs(batch_size))
        actions = jax.eval_shape(lambda: model.fake_actions(batch_size))
        step = jax.jit(make_train_step(make_decoder(model), tx, cfg.ema_decay, schedule, partition), donate_argnums=0)
        t = time.perf_counter()
        mem = step.lower(state, obs, actions).compile().memory_analysis()
        out.update(argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
                   alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
                   compile_s=time.perf_counter() - t)
    return TrainMemory(**out)
