"""Training benchmark: step time and samples/s of tiny configs on this machine, and the memory full-size configs
need — train-state bytes (params, trainable, AdamW, EMA) from ``jax.eval_shape`` and the compiled train step's
``memory_analysis()`` on abstract inputs; nothing full-size is materialised.

    uv run lab/scripts/benchmark_train.py [--configs debug_eqm pi0_eqm_metaworld] [--full-size pi0_eqm_libero ...]
                                      [--memory-batch-sizes 32 8] [--no-compile]
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import tyro


@dataclasses.dataclass
class Args:
    configs: tuple[str, ...] = ("debug_eqm", "pi0_eqm_metaworld")
    full_size: tuple[str, ...] = ("pi0_libero", "pi0_eqm_libero", "pi0_libero_low_mem_finetune",
                                  "pi0_eqm_libero_low_mem_finetune")
    batch_size: int = 32
    steps: int = 20
    memory_batch_sizes: tuple[int, ...] = (32,)  # openpi's global batch; on one device that is the per-device batch
    compile: bool = True  # lower + compile each full-size train step on abstract inputs for its memory analysis


def _timed_steps(name: str, batch_size: int, steps: int) -> dict:
    from pi0_eqm.decoders import make_decoder
    from pi0_eqm.training.config import get_config
    from pi0_eqm.training.train_step import init_train_state
    from pi0_eqm.training.train_step import make_train_step

    cfg = get_config(name)
    model = cfg.model
    tx = cfg.optimizer.create(cfg.lr_schedule.create())
    state = init_train_state(model.init(jax.random.key(0)), tx, jax.random.key(1), ema=cfg.ema_decay is not None)
    step = jax.jit(make_train_step(make_decoder(model), tx, cfg.ema_decay), donate_argnums=0)
    obs, actions = model.fake_obs(batch_size), model.fake_actions(batch_size)
    obs = obs.replace(images={k: np.random.default_rng(0).uniform(-1, 1, v.shape).astype(np.float32)
                              for k, v in obs.images.items()})
    if model.ki is not None:  # KI: the full FAST slot budget, half of it real tokens (Meta-World chunks: ~17 + 2)
        rng = np.random.default_rng(1)
        seqs = [model.fast_layout.sequence(rng.integers(0, model.ki.fast_vocab_size, model.ki.max_fast_tokens // 2),
                                           model.ki.max_fast_tokens)[:2] for _ in range(batch_size)]
        obs = obs.replace(fast_tokens=np.stack([t for t, _ in seqs]), fast_mask=np.stack([m for _, m in seqs]))
    t = time.perf_counter()
    state, m = step(state, obs, actions)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = step(state, obs, actions)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    n = sum(x.size for x in jax.tree.leaves(state.params))
    med = float(np.median(times))
    return {"config": name, "params_M": n / 1e6, "batch": batch_size, "compile_s": compile_s,
            "step_ms": med * 1e3, "samples_per_s": batch_size / med}


def main(args: Args) -> None:
    from pi0_eqm_experiments.benchmarks.train_memory import GIB
    from pi0_eqm_experiments.benchmarks.train_memory import train_memory

    from pi0_eqm.training.config import get_config

    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s)")
    if args.configs:
        print(f"\n{'config':<22} {'params':>8} {'batch':>5} {'compile s':>9} {'step ms':>8} {'samples/s':>9}")
    for name in args.configs:
        r = _timed_steps(name, args.batch_size, args.steps)
        print(f"{r['config']:<22} {r['params_M']:>7.2f}M {r['batch']:>5} {r['compile_s']:>9.1f} {r['step_ms']:>8.1f} "
              f"{r['samples_per_s']:>9.1f}")
    print(f"\nfull-size train state (jax.eval_shape) and the compiled train step's buffers "
          f"(memory_analysis on {jax.devices()[0].platform}), GiB")
    print(f"{'config':<33} {'batch':>5} {'params':>7} {'trainable':>9} {'params':>6} {'AdamW':>6} {'EMA':>5} "
          f"{'state':>6} {'args':>6} {'temp':>6} {'peak':>6} {'compile s':>9}")
    for name in args.full_size:
        for batch in args.memory_batch_sizes:
            m = train_memory(get_config(name), batch, compile=args.compile)
            g = lambda b: "-" if b is None else f"{b / GIB:.1f}"
            print(f"{name:<33} {batch:>5} {m.params / 1e9:>6.2f}B {m.trainable / 1e9:>8.3f}B {g(m.params_bytes):>6} "
                  f"{g(m.opt_state_bytes):>6} {g(m.ema_bytes):>5} {g(m.state_bytes):>6} {g(m.argument_bytes):>6} "
                  f"{g(m.temp_bytes):>6} {g(m.peak_bytes):>6} {'-' if m.compile_s is None else f'{m.compile_s:.0f}':>9}",
                  flush=True)
    print("peak = arguments + outputs - donated (aliased) + temporaries; openpi documents > 22.5 GB (LoRA) and "
          "> 70 GB (full) per GPU")


if __name__ == "__main__":
    main(tyro.cli(Args))
