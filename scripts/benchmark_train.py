"""Training benchmark: step time and samples/s of tiny configs on this machine, and the memory a full-size config
needs (params, AdamW state, EMA) from ``jax.eval_shape`` — nothing full-size is materialised.

    uv run scripts/benchmark_train.py [--configs debug_eqm pi0_eqm_metaworld pi0_eqm_ki_metaworld] [--steps 20]
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
    full_size: tuple[str, ...] = ("pi0_libero", "pi0_eqm_libero")
    batch_size: int = 32
    steps: int = 20


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


def _memory(name: str) -> dict:
    from pi0_eqm.training.config import get_config
    from pi0_eqm.training.train_step import init_train_state

    cfg = get_config(name)
    tx = cfg.optimizer.create(cfg.lr_schedule.create())
    abstract = jax.eval_shape(lambda: init_train_state(cfg.model.init(jax.random.key(0)), tx, jax.random.key(1),
                                                       ema=cfg.ema_decay is not None))

    def gib(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2**30

    n = sum(x.size for x in jax.tree.leaves(abstract.params))
    return {"config": name, "params_B": n / 1e9, "params_GiB": gib(abstract.params),
            "opt_state_GiB": gib(abstract.opt_state), "ema_GiB": gib(abstract.ema_params) if abstract.ema_params else 0.0,
            "total_state_GiB": gib(abstract)}


def main(args: Args) -> None:
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"\n{'config':<22} {'params':>8} {'batch':>5} {'compile s':>9} {'step ms':>8} {'samples/s':>9}")
    for name in args.configs:
        r = _timed_steps(name, args.batch_size, args.steps)
        print(f"{r['config']:<22} {r['params_M']:>7.2f}M {r['batch']:>5} {r['compile_s']:>9.1f} {r['step_ms']:>8.1f} "
              f"{r['samples_per_s']:>9.1f}")
    print(f"\n{'full-size config':<22} {'params':>8} {'params':>9} {'AdamW':>9} {'EMA':>8} {'train state':>12}")
    for name in args.full_size:
        r = _memory(name)
        print(f"{r['config']:<22} {r['params_B']:>7.3f}B {r['params_GiB']:>7.1f}GiB {r['opt_state_GiB']:>7.1f}GiB "
              f"{r['ema_GiB']:>6.1f}GiB {r['total_state_GiB']:>10.1f}GiB   (fp32; + activations)")


if __name__ == "__main__":
    main(tyro.cli(Args))
