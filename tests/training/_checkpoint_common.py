"""Shared helpers of the checkpoint tests: small and tiny-model train states, norm stats, logged-warning checks."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.models.configs import model_config
from pi0_eqm.training import checkpoints as ckpt
from pi0_eqm.training.train_step import TrainState
from pi0_eqm.training.train_step import init_train_state

ASSET_ID = "physical-intelligence/libero"


def tiny_model_params():
    """Initial params of the ``pi0_tiny`` model (for the ``tiny_params`` module fixtures)."""
    return jax.jit(model_config("pi0_tiny").init)(jax.random.key(0))


def _random_like(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), tree)


@functools.cache
def _update_fn(ema: bool, seed: int):
    tx = optax.adamw(1e-3, weight_decay=1e-4)

    @jax.jit
    def one_update(params, grads, step):
        state = init_train_state(params, tx, jax.random.key(seed), ema=ema)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        ema_params = jax.tree.map(lambda p: 0.5 * p, new_params) if ema else None
        return state.replace(step=step, params=new_params, opt_state=opt_state, ema_params=ema_params)

    return one_update


def _trained_state(params, *, ema: bool, step: int, seed: int = 0) -> TrainState:
    """A state with a non-trivial adamw opt_state (one real update), distinct EMA params and a real key."""
    return _update_fn(ema, seed)(params, _random_like(params, seed + 1), jnp.int32(step))


def _small_state(step: int, *, ema: bool = False) -> TrainState:
    params = {"w": jnp.arange(12.0).reshape(3, 4), "b": {"c": jnp.ones(5) * step}, "big": jnp.ones((64, 64)) * step}
    return _trained_state(params, ema=ema, step=step)


def _norm_stats() -> dict[str, dict[str, NormStats]]:
    s = NormStats(mean=np.arange(8.0), std=np.ones(8) * 2, q01=-np.ones(8), q99=np.ones(8) * 3)
    a = NormStats(mean=np.zeros(7), std=np.ones(7), q01=-np.ones(7) * 2, q99=np.ones(7) * 2)
    return {ASSET_ID: {"state": s, "actions": a}}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype, (jax.tree_util.keystr(path), x.dtype, y.dtype)
        assert x.shape == y.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@contextlib.contextmanager
def _logs_warning(caplog, pattern: str):
    """Like ``pytest.warns(match=pattern)`` for logged warnings; yields the list of matching messages (filled on exit)."""
    found: list[str] = []
    with caplog.at_level(logging.WARNING, logger="pi0_eqm"):
        start = len(caplog.records)
        yield found
    found += [
        r.getMessage() for r in caplog.records[start:] if r.levelno >= logging.WARNING and re.search(pattern, r.getMessage())
    ]
    assert found, f"no warning matching {pattern!r} was logged"


def _entries(run) -> list[str]:
    """The names in a run directory, without the hidden run marker and lock files."""
    return [p for p in os.listdir(run) if not p.startswith(".pi0_eqm")]


def _open(tmp_path, **kw):
    kw.setdefault("max_to_keep", None)
    manager, resuming = ckpt.initialize_checkpoint_dir(tmp_path / "run", **kw)
    return manager, resuming
