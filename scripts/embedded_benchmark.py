"""The main job: the whole loop on the embedded Meta-World benchmark, on a laptop-class CPU, no downloads.

    uv run scripts/embedded_benchmark.py                      # π₀-EqM: demos → norm stats → train → closed-loop eval
    uv run scripts/embedded_benchmark.py --decoders eqm flow  # also the flow baseline, trained identically

1. generates scripted-expert demos for the default 8 tasks (cached under ./data/metaworld),
2. computes norm stats, 3. trains each decoder's config (resumes an interrupted run, reuses a finished one),
4. evaluates closed loop on held-out configurations, prints a success table, writes JSON + PNG to ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")



@dataclasses.dataclass
class Args:
    decoders: tuple[str, ...] = ("eqm",)  # eqm and/or flow
    demos_per_task: int = 10
    train_steps: int | None = None  # default: the config's (1500)
    batch_size: int | None = None
    episodes_per_task: int = 10
    replan_every: int = 8
    eval_seed: int = 1000
    max_steps: int = 200
    exp_name: str = "main"
    retrain: bool = False  # ignore an existing finished run and train again
    out: str = "results/embedded"
    seed: int = 42
    tasks: tuple[str, ...] | None = None  # default: the 8 default tasks
    checkpoint_base_dir: str = "./checkpoints"
    assets_base_dir: str = "./assets"
    progress: bool = True


def main(args: Args) -> dict:
    from pi0_eqm.benchmarks import metaworld as bench
    from pi0_eqm.decoders.settings import DecoderSettings
    from pi0_eqm.envs.demos import generate_dataset
    from pi0_eqm.envs.tasks import DEFAULT_TASKS
    from pi0_eqm.training.data_config import data_home

    names = {"eqm": "pi0_eqm_metaworld", "flow": "pi0_metaworld"}
    bad = [d for d in args.decoders if d not in names]
    if bad:
        raise ValueError(f"unknown decoders {bad}; expected eqm and/or flow")
    t0 = time.time()
    timings = {}
    tasks = tuple(args.tasks or DEFAULT_TASKS)
    version_dir = generate_dataset(data_home() / "metaworld", tasks=tasks, episodes_per_task=args.demos_per_task,
                                   resolution=64, progress=args.progress)
    data_path = str(version_dir.parent.resolve())
    timings["demos_s"] = time.time() - t0
    print(f"demos: {version_dir} ({timings['demos_s']:.0f} s)")

    rows, results = {}, {}
    for dec in args.decoders:
        cfg = bench.configure_run(names[dec], data_path, exp_name=args.exp_name, seed=args.seed,
                                  train_steps=args.train_steps, batch_size=args.batch_size,
                                  checkpoint_base_dir=args.checkpoint_base_dir, assets_base_dir=args.assets_base_dir)
        t = time.time()
        bench.train_or_reuse(cfg, args.retrain, args.progress)
        timings[f"train_{dec}_s"] = time.time() - t
        t = time.time()
        settings = DecoderSettings(executed=args.replan_every)
        policy = bench.load_policy(cfg, cfg.checkpoint_dir, settings)
        res = bench.evaluate_policy(policy, episodes_per_task=args.episodes_per_task, replan_every=args.replan_every,
                                    seed=args.eval_seed, max_steps=args.max_steps, tasks=tasks,
                                    resolution=cfg.model.image_resolution[0], progress=args.progress)
        timings[f"eval_{dec}_s"] = time.time() - t
        rows[cfg.name] = bench.summary_row(res)
        results[cfg.name] = res
    timings["total_s"] = time.time() - t0
    print()
    print(bench.format_table(rows, tasks))
    print("\nwall time: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    out = {"args": dataclasses.asdict(args), "summary": rows, "timings": timings, "results": results}
    bench.save_json(os.path.join(args.out, "results.json"), out)
    bench.plot_success(rows, tasks, os.path.join(args.out, "success.png"),
                       "Meta-World (held-out configurations)")
    print(f"results: {args.out}/results.json, {args.out}/success.png")
    return out


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
