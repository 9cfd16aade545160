"""Solver benchmark: prefix time, per-iteration cost inside the while_loop vs one cached expert forward, and
iterations to ε for cold vs warm start on a trained toy model. Used by ``lab/scripts/benchmark_solver.py``."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from pi0_eqm.decoders.eqm import EqmDecoder
from pi0_eqm.decoders.eqm import EqmDecodeSettings
from pi0_eqm.decoders.warm_start import warm_start_init
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.models.pi0 import Pi0Config
from pi0_eqm.training import toy_data as toy


def _median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def timing(config: Pi0Config, params, batch_size: int, k_lo: int = 20, k_hi: int = 120, repeats: int = 7) -> dict:
    """Median timings (ms). Per-iteration cost = (T(k_hi) − T(k_lo)) / (k_hi − k_lo) with the threshold disabled."""
    dec = EqmDecoder(config)
    model = Pi0(config)
    obs, _, _ = toy.make_batch(config, batch_size, np.random.default_rng(0))
    obs = jax.device_put(obs)
    x = jax.random.normal(jax.random.key(1), (batch_size, config.action_horizon, config.action_dim))
    zero_t = jnp.zeros((batch_size,), jnp.float32)
    v = {"params": params}

    prefill = jax.jit(lambda p, o: model.apply({"params": p}, o, method=Pi0.prefill))
    cache, pmask = prefill(params, obs)
    expert = jax.jit(lambda p, c, m, s, a: model.apply({"params": p}, c, m, s, a, zero_t, method=Pi0.expert_field))

    def decode_k(k):
        settings = EqmDecodeSettings(max_iters=k, threshold=0.0)
        return jax.jit(lambda p, o, r: dec.decode(p, o, r, settings=settings)[0])

    d_lo, d_hi = decode_k(k_lo), decode_k(k_hi)
    rng = jax.random.key(2)
    t_prefix = _median_time(prefill, params, obs, repeats=repeats)
    t_expert = _median_time(expert, params, cache, pmask, obs.state, x, repeats=repeats * 3)
    # Interleave the two budgets so machine noise hits both alike.
    lo, hi = [], []
    jax.block_until_ready(d_lo(params, obs, rng))
    jax.block_until_ready(d_hi(params, obs, rng))
    for _ in range(repeats):
        for fn, out in ((d_lo, lo), (d_hi, hi)):
            t = time.perf_counter()
            jax.block_until_ready(fn(params, obs, rng))
            out.append(time.perf_counter() - t)
    t_iter = (np.median(hi) - np.median(lo)) / (k_hi - k_lo)
    del v
    return {
        "batch_size": batch_size,
        "prefix_ms": t_prefix * 1e3,
        "expert_forward_ms": t_expert * 1e3,
        "while_loop_iteration_ms": t_iter * 1e3,
        "iteration_over_forward": t_iter / t_expert,
        f"decode_{k_lo}_iters_ms": float(np.median(lo)) * 1e3,
        f"decode_{k_hi}_iters_ms": float(np.median(hi)) * 1e3,
    }


def warm_vs_cold(config: Pi0Config, params, *, batch_size: int = 32, executed: int | None = None,
                 thresholds=(1e-1, 3e-2, 1e-2, 3e-3, 1e-3), seed: int = 7) -> list[dict]:
    """Closed-loop replanning on the toy task: decode a chunk, execute ``s`` of its actions, re-decode the next
    chunk from the new state cold (noise), with the paper's half-chunk rule, and with the aligned shift."""
    dec = EqmDecoder(config)
    h = config.action_horizon
    s = executed if executed is not None else max(1, h // 4)
    d = config.real_action_dim or 4
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 4, batch_size)
    state = rng.uniform(-1, 1, (batch_size, d)).astype(np.float32)
    rows = []
    for eps in thresholds:
        settings = EqmDecodeSettings(threshold=eps, max_iters=300)  # iterations to ε, not the default 10-forward cap
        decode = jax.jit(lambda p, o, r, init, s=settings: dec.decode(p, o, r, init=init, settings=s))
        obs0 = toy.make_obs(config, ids, state, np.random.default_rng(seed))
        noise0 = jax.random.normal(jax.random.key(seed), (batch_size, h, config.action_dim))
        prev, _ = decode(params, obs0, jax.random.key(0), noise0)
        new_state = np.asarray(prev)[:, s - 1, :d]  # state after executing s actions (absolute targets)
        obs1 = toy.make_obs(config, ids, new_state, np.random.default_rng(seed + 1))
        target = toy.chunk_from(config, new_state, toy.goals(4, d)[ids])
        noise1 = jax.random.normal(jax.random.key(seed + 1), noise0.shape)
        row = {"threshold": eps, "executed": s}
        for mode in ("off", "paper_half", "aligned"):
            init = warm_start_init(prev, s, noise1, mode)
            a, st = decode(params, obs1, jax.random.key(1), init)
            err = np.sqrt(np.mean((np.asarray(a)[..., :d] - target[..., :d]) ** 2))
            row[f"{mode}_iters"] = float(np.mean(st.iterations))
            row[f"{mode}_rmse"] = float(err)
        rows.append(row)
    return rows
