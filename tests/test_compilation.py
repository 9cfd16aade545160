"""Programs a run executes once (``pi0_eqm.compilation.jit_once``) compile with less LLVM optimization on the CPU and
must compute exactly what the default compilation computes: the train state's init (random params with LoRA,
optimizer state, EMA copy) and the checkpoint checksums, compared bit for bit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.compilation import ONCE_OPTIONS
from pi0_eqm.compilation import jit_once
from pi0_eqm.training.config import get_config
from pi0_eqm.training.freeze import ParamPartition
from pi0_eqm.training.train_step import init_train_state


def _bits(tree) -> list[np.ndarray]:
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]


def test_the_train_state_init_compiled_once_is_bit_identical_to_the_default_compilation():
    cfg = get_config("debug_eqm_lora")
    model = dataclasses.replace(cfg.model, image_resolution=(16, 16), action_horizon=4)
    tx = cfg.optimizer.create(cfg.lr_schedule.create())
    train_rng, init_rng = jax.random.split(jax.random.key(0))
    partition = ParamPartition.of(jax.eval_shape(model.init, init_rng), model, cfg.freeze)

    def init_state():
        return init_train_state(model.init(init_rng), tx, train_rng, ema=True, partition=partition)

    lowered = jax.jit(init_state).lower()
    default = _bits(lowered.compile()())
    once = _bits(lowered.compile(compiler_options=ONCE_OPTIONS)())
    assert len(default) == len(once) > 100
    for a, b in zip(default, once, strict=True):
        np.testing.assert_array_equal(a, b)
    # jit_once itself (as the training loop calls it), and model.init traced inside it (no options on a nested jit)
    for a, b in zip(default, _bits(jit_once(init_state)()), strict=True):
        np.testing.assert_array_equal(a, b)


def test_jit_once_keeps_jits_arguments_and_works_inside_other_traces():
    @jit_once(static_argnums=(1,))
    def scaled(x, k):
        return x * k + jnp.float32(0.1)

    x = jnp.arange(5, dtype=jnp.float32)
    np.testing.assert_array_equal(scaled(x, 3), jax.jit(lambda v: v * 3 + jnp.float32(0.1))(x))
    np.testing.assert_array_equal(jax.jit(lambda v: scaled(v, 2))(x), scaled(x, 2))  # nested in a jit
    assert jax.eval_shape(lambda v: scaled(v, 2), x).shape == (5,)  # traced with abstract values
    np.testing.assert_array_equal(jax.grad(lambda v: scaled(v, 2).sum())(x), np.full(5, 2.0))
    with pytest.raises(TypeError):
        scaled(x)  # jit's own errors pass through
