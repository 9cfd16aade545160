"""The device benchmark's measurements, one function per case; each prints ``ROW <json>`` lines as it goes (so a case
cut off by the time budget still leaves what it measured) and runs in its own process (``benchmark.py`` starts it),
so a case that runs out of device memory does not take the others with it and each case's peak memory is its own.

Timings: ``jax.jit(...).lower(...).compile()`` is timed apart as the compile; then 2 untimed calls and the median of
``repeats`` calls, each ending in ``jax.block_until_ready``. Inference params are cast to bfloat16 as openpi serves them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from pi0_eqm.decoders import make_decoder
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.models.observation import Observation
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.models.pi0 import Pi0Config
from pi0_eqm.policies.policy import Policy
from pi0_eqm.policies.policy import padded_batch_sizes
from pi0_eqm.serving.server import PolicyServer
from pi0_eqm.serving.wire import packb
from pi0_eqm.training.freeze import FreezeConfig
from pi0_eqm.training.freeze import ParamPartition
from pi0_eqm.training.optimizer import AdamW
from pi0_eqm.training.optimizer import CosineDecaySchedule
from pi0_eqm.training.train_step import init_train_state
from pi0_eqm.training.train_step import make_train_step

CLIENT = Path(__file__).resolve().with_name("client.py")
ITERS = 10  # expert forwards per chunk for both decoders (flow: Euler steps; EqM: never stops early)


@dataclasses.dataclass(frozen=True)
class Size:
    """The models of one benchmark size: ``full`` (openpi's π₀ / π₀.5) or ``tiny`` (the same code on a CPU)."""

    pi0: str
    pi05: str
    lora_llm: str
    lora_expert: str


SIZES = {"full": Size("pi0", "pi05", "gemma_2b_lora", "gemma_300m_lora"),
         "tiny": Size("pi0_tiny", "pi05_tiny", "gemma_tiny_lora", "gemma_tiny_expert_lora")}


def row(**fields) -> None:
    print("ROW " + json.dumps(fields), flush=True)


def peak_memory() -> dict:
    """The device's peak and current bytes in use (``None`` where the backend keeps no statistics, e.g. a CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return {"peak_bytes": stats.get("peak_bytes_in_use"), "bytes_in_use": stats.get("bytes_in_use"),
            "bytes_limit": stats.get("bytes_limit")}


def model(size: str, which: str, **overrides) -> Pi0Config:
    name = getattr(SIZES[size], which)
    return model_config(name, dtype="bfloat16", **overrides)  # the tiny presets compute in float32 otherwise


def bf16(params):
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def model_inputs(cfg: Pi0Config, rng: np.random.Generator) -> dict:
    """One observation in model space (what the robot transforms produce): uint8 cameras at the model's resolution,
    a state, and a prompt of the config's full token length."""
    h, w = cfg.image_resolution
    return {"image": {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k in cfg.image_keys},
            "image_mask": {k: np.True_ for k in cfg.image_keys},
            "state": rng.uniform(-1, 1, cfg.action_dim).astype(np.float32),
            "tokenized_prompt": rng.integers(1, cfg.vocab_size, cfg.max_token_len).astype(np.int32),
            "tokenized_prompt_mask": np.ones(cfg.max_token_len, bool)}


def batched(inputs: dict, b: int) -> Observation:
    return Observation.from_dict(jax.tree.map(lambda x: np.stack([np.asarray(x)] * b), inputs))


def compiled(fn, *args) -> tuple[object, float]:
    t = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    return exe, time.perf_counter() - t


def median_ms(exe, *args, repeats: int) -> float:
    for _ in range(2):
        jax.block_until_ready(exe(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(exe(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def policy(cfg: Pi0Config, params, decoder: str) -> Policy:
    """A policy on model-space inputs (no robot transforms) deciding ``ITERS`` forwards per chunk."""
    if decoder == "flow":
        return Policy(dataclasses.replace(cfg, decoder=FlowConfig()), params, settings=DecoderSettings(max_iters=ITERS))
    return Policy(dataclasses.replace(cfg, decoder=EqmConfig()), params,
                  settings=DecoderSettings(max_iters=ITERS, threshold=0.0))


def infer(size: str, which: str, batch_sizes: list[int], repeats: int) -> dict[str, Policy]:
    """Prefix (prefill) ms and flow-10 / EqM-10 chunk ms per batch size, through each policy's own compiled decode."""
    cfg = model(size, which)
    t = time.perf_counter()
    params = jax.block_until_ready(bf16(cfg.init(jax.random.key(0))))
    n = sum(int(x.size) for x in jax.tree.leaves(params))
    row(kind="model", model=which, params=n, init_s=time.perf_counter() - t, **peak_memory())
    policies = {d: policy(cfg, params, d) for d in ("flow", "eqm")}
    net = Pi0(cfg)
    inputs = model_inputs(cfg, np.random.default_rng(0))
    for b in batch_sizes:
        obs = jax.device_put(batched(inputs, b))
        prefill, prefill_s = compiled(lambda p, o: net.apply({"params": p}, o, method=Pi0.prefill), params, obs)
        out = {"kind": "infer", "model": which, "batch": b, "prefix_ms": median_ms(prefill, params, obs,
                                                                                   repeats=repeats),
               "prefix_compile_s": prefill_s}
        init = jax.random.normal(jax.random.key(1), (b, cfg.action_horizon, cfg.action_dim))
        for name, pol in policies.items():
            ds = pol.decoder.resolve(pol.settings)
            knobs, fn = pol.decoder.traced(ds), pol.compiled_decode(pol.compiled_key(ds))
            args = (params, obs, jax.random.key(0), init, knobs)
            t = time.perf_counter()
            actions, iters, *_ = jax.block_until_ready(fn(*args))
            out[f"{name}_compile_s"] = time.perf_counter() - t
            out[f"{name}_ms"] = median_ms(fn, *args, repeats=repeats)
            out[f"{name}_forwards"] = int(np.max(iters))
            out[f"{name}_finite"] = bool(np.all(np.isfinite(np.asarray(actions, np.float32))))
        out["eqm_over_flow"] = out["eqm_ms"] / out["flow_ms"]
        row(**out, **peak_memory())
    return policies


def serve(policies: dict[str, Policy], clients: list[int], requests: int, decoder: str = "eqm") -> None:
    """Requests/s through the real server (micro-batcher on, ``max_batch`` = the most clients) with 1, 8, 32, ...
    client processes, each sending ``requests`` requests back to back after one uncounted request."""
    pol = policies[decoder]
    cfg = pol.config
    obs = model_inputs(cfg, np.random.default_rng(1))
    sizes = padded_batch_sizes(max(clients))
    t = time.perf_counter()
    pol.warm_up(obs, batch_sizes=sizes)  # every padded batch size the batcher can form, compiled before timing
    row(kind="serve_warm_up", model="pi05" if cfg.pi05 else "pi0", decoder=decoder, batch_sizes=sizes,
        compile_s=time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "obs.msgpack"
        path.write_bytes(packb(obs))
        server = PolicyServer(pol, host="127.0.0.1", port=0, max_batch=max(clients), max_wait_ms=5.0,
                              max_connections_per_peer=max(clients) + 1)
        server.start()
        try:
            for n in clients:
                row(kind="serve", decoder=decoder, **_drive(server.port, n, requests, path))
        finally:
            server.stop()


def _drive(port: int, n: int, requests: int, obs_path: Path) -> dict:
    go = obs_path.with_name(f"go_{n}")
    procs = [subprocess.Popen([sys.executable, str(CLIENT), str(port), str(requests), str(obs_path), str(go)],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"a client did not get ready: {line!r}")
    go.touch()
    results = [json.loads(p.stdout.readline().removeprefix("RESULT ")) for p in procs]
    for p in procs:
        p.wait(timeout=60)
    lat = np.concatenate([r["lat"] for r in results])
    errors = [e for r in results for e in r["errors"]]
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    batches = [b for r in results for b in r["batch"]]
    return {"clients": n, "requests": int(lat.size), "errors": len(errors), "first_error": errors[0] if errors else "",
            "requests_per_s": lat.size / wall, "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p90_ms": float(np.percentile(lat, 90)), "mean_batch": float(np.mean(batches))}


def train(size: str, mode: str, batch: int, steps: int, decoder: str = "flow") -> None:
    """One train step's compile, median step ms and the peak device memory: ``lora`` (openpi's low-mem fine-tune:
    LoRA on both Gemmas, their base weights frozen in bf16, no EMA) or ``full`` (every weight, EMA 0.99)."""
    dec = FlowConfig() if decoder == "flow" else EqmConfig()
    s = SIZES[size]
    cfg = (model(size, "pi0", decoder=dec, paligemma_variant=s.lora_llm, action_expert_variant=s.lora_expert)
           if mode == "lora" else model(size, "pi0", decoder=dec))
    ema = None if mode == "lora" else 0.99
    schedule = CosineDecaySchedule().create()
    tx = AdamW().create(schedule)
    partition = ParamPartition.of(jax.eval_shape(cfg.init, jax.random.key(0)), cfg, FreezeConfig())
    t = time.perf_counter()
    state = jax.jit(lambda k: init_train_state(cfg.init(k), tx, jax.random.key(1), ema=ema is not None,
                                               partition=partition))(jax.random.key(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    n_train, n_frozen = partition.count(state.params)
    rng = np.random.default_rng(0)
    obs = cfg.fake_obs(batch)
    obs = obs.replace(images={k: jnp.asarray(rng.uniform(-1, 1, v.shape), jnp.float32) for k, v in obs.images.items()})
    actions = jnp.asarray(rng.uniform(-1, 1, (batch, cfg.action_horizon, cfg.action_dim)), jnp.float32)
    step = jax.jit(make_train_step(make_decoder(cfg), tx, ema, schedule, partition), donate_argnums=0)
    t = time.perf_counter()
    exe = step.lower(state, obs, actions).compile()
    compile_s = time.perf_counter() - t
    times, losses = [], []
    for i in range(steps + 2):
        t = time.perf_counter()
        state, metrics = exe(state, obs, actions)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - t)
        losses.append(float(metrics["loss"]))
    row(kind="train", mode=mode, decoder=decoder, batch=batch, trainable=n_train, frozen=n_frozen, ema=ema,
        init_s=init_s, compile_s=compile_s, step_ms=float(np.median(times)) * 1e3,
        samples_per_s=batch / float(np.median(times)), finite=bool(np.all(np.isfinite(losses))), **peak_memory())
