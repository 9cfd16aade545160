"""Knowledge-insulation ablation on the embedded Meta-World benchmark: success vs training steps, with and without KI.

    uv run lab/scripts/ki_ablation.py                                  # EqM and flow, each with and without KI
    uv run lab/scripts/ki_ablation.py --arms eqm eqm_ki --episodes-per-task 10
    uv run lab/scripts/ki_ablation.py --arms eqm_joint     # FAST loss without stop-gradient (no insulation)
    uv run lab/scripts/ki_ablation.py --arms pi05_eqm_ki pi05_eqm pi05_flow_ki pi05_flow   # the same on π₀.5

Every arm trains with the same data, batch, steps, schedule and seed (``--exp-name ki_ablation``), keeps a checkpoint
every ``--eval-every`` steps, and each kept step is evaluated closed loop on the same held-out configurations. The
KI arms (``pi0_*_ki_metaworld``) add the FAST next-token loss on the backbone and read stop-gradient backbone K/V in
the expert; ``*_joint`` arms keep the FAST loss but let expert gradients into the backbone. The measured train
throughput of every arm is reported so the compute can be compared. Writes ``<out>/ki_ablation.json`` and
``<out>/ki_ablation.png`` after every evaluation; arms already in that file from an earlier invocation are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")


ARMS = {"eqm": "pi0_eqm_metaworld", "eqm_ki": "pi0_eqm_ki_metaworld", "flow": "pi0_metaworld",
        "flow_ki": "pi0_ki_metaworld",
        # the FAST loss without insulation (expert gradients reach the backbone): separates the two ingredients
        "eqm_joint": "pi0_eqm_ki_metaworld", "flow_joint": "pi0_ki_metaworld",
        # π₀.5: the discretised state is in the prompt, so the insulated backbone sees the robot state
        "pi05_eqm": "pi05_eqm_metaworld", "pi05_eqm_ki": "pi05_eqm_ki_metaworld", "pi05_flow": "pi05_metaworld",
        "pi05_flow_ki": "pi05_ki_metaworld"}


@dataclasses.dataclass
class Args:
    arms: tuple[str, ...] = ("eqm_ki", "eqm", "flow_ki", "flow")
    train_steps: int = 1500
    eval_every: int = 500
    episodes_per_task: int = 5
    demos_per_task: int = 10
    replan_every: int = 8
    eval_seed: int = 1000
    max_steps: int = 200
    seed: int = 42
    batch_size: int | None = None  # default: the config's (32)
    tasks: tuple[str, ...] | None = None  # default: the 8 default tasks
    exp_name: str = "ki_ablation"
    retrain: bool = False
    checkpoint_base_dir: str = "./checkpoints"
    assets_base_dir: str = "./assets"
    out: str = "results/ki_ablation"
    progress: bool = True


def _train_stats(run_dir) -> dict:
    """Mean train throughput and the last logged losses from ``metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    sps = [r["samples_per_s"] for r in records[1:]] or [r["samples_per_s"] for r in records]
    last = records[-1]
    out = {"samples_per_s": sum(sps) / len(sps), "last_step": last["step"]}
    out |= {k: last[k] for k in ("loss", "action_loss", "fast_ce", "fast_acc") if k in last}
    return out


def _plot(path: str, results: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, rows in results.items():
        steps = sorted(int(s) for s in rows)
        if not steps:
            continue
        y = [rows[str(s)]["mean_success"] for s in steps]
        lo = [rows[str(s)]["ci95"][0] for s in steps]
        hi = [rows[str(s)]["ci95"][1] for s in steps]
        color = "tab:orange" if arm.startswith("eqm") else "tab:blue"  # one colour per decoder, style per variant
        style = "--" if arm.endswith("_ki") else ":" if arm.endswith("_joint") else "-"
        ax.plot(steps, y, marker="o", label=arm, color=color, linestyle=style)
        ax.fill_between(steps, lo, hi, alpha=0.08, color=color)
    ax.set_xlabel("training steps")
    ax.set_ylabel("success rate (held-out configurations)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    from pi0_eqm.benchmarks import metaworld as bench
    from pi0_eqm.decoders.settings import DecoderSettings
    from pi0_eqm.envs.demos import generate_dataset
    from pi0_eqm.envs.tasks import DEFAULT_TASKS
    from pi0_eqm.policies.policy_config import create_trained_policy
    from pi0_eqm.training.data_config import data_home

    bad = [a for a in args.arms if a not in ARMS]
    if bad:
        raise ValueError(f"unknown arms {bad}; expected some of {sorted(ARMS)}")
    if args.eval_every < 1 or args.train_steps % args.eval_every:
        raise ValueError(f"--train-steps ({args.train_steps}) must be a multiple of --eval-every ({args.eval_every})")
    tasks = tuple(args.tasks or DEFAULT_TASKS)
    version_dir = generate_dataset(data_home() / "metaworld", tasks=tasks,
                                   episodes_per_task=args.demos_per_task, resolution=64, progress=args.progress)
    data_path = str(version_dir.parent.resolve())
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "ki_ablation.json")
    previous = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            previous = json.load(f)
    results, train, timings = (previous.get(k, {}) for k in ("results", "train", "timings"))
    out = {"args": dataclasses.asdict(args), "results": results, "train": train, "timings": timings}
    for arm in args.arms:
        cfg = bench.configure_run(ARMS[arm], data_path, exp_name=args.exp_name, seed=args.seed,
                                  train_steps=args.train_steps, batch_size=args.batch_size,
                                  checkpoint_base_dir=args.checkpoint_base_dir,
                                  assets_base_dir=args.assets_base_dir, keep_every=args.eval_every)
        if arm.endswith("_joint"):
            cfg = dataclasses.replace(cfg, name=cfg.name.replace("_ki_", "_joint_"), model=dataclasses.replace(
                cfg.model, ki=dataclasses.replace(cfg.model.ki, stop_gradient=False)))
        t = time.time()
        bench.train_or_reuse(cfg, args.retrain, args.progress)
        timings[f"train_{arm}_s"] = time.time() - t
        train[arm] = _train_stats(cfg.checkpoint_dir)
        results[arm] = {}
        for step in range(args.eval_every, args.train_steps + 1, args.eval_every):
            step_dir = cfg.checkpoint_dir / str(step)
            if not (step_dir / "params").exists():
                raise FileNotFoundError(f"{step_dir} missing; rerun with --retrain to keep every {args.eval_every}")
            t = time.time()
            policy = create_trained_policy(cfg, step_dir, settings=DecoderSettings(executed=args.replan_every))
            res = bench.evaluate_policy(policy, episodes_per_task=args.episodes_per_task,
                                        replan_every=args.replan_every, seed=args.eval_seed, max_steps=args.max_steps,
                                        tasks=tasks, resolution=cfg.model.image_resolution[0],
                                        progress=args.progress)
            timings[f"eval_{arm}_{step}_s"] = time.time() - t
            row = bench.summary_row(res)
            results[arm][str(step)] = row
            print(f"[{arm}] step {step}: success {row['mean_success']:.2f} "
                  f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}], iters/chunk {row['iters_mean']}")
            bench.save_json(json_path, out)
            _plot(os.path.join(args.out, "ki_ablation.png"), results, f"Knowledge insulation (Meta-World, {len(tasks)} tasks)")
    print()
    header = "arm".ljust(9) + "".join(f"{s:>10d}" for s in range(args.eval_every, args.train_steps + 1,
                                                                  args.eval_every)) + "   samples/s"
    print(header)
    for arm, rows in results.items():
        cells = "".join(f"{rows[k]['mean_success']:>10.2f}" for k in sorted(rows, key=int))
        print(arm.ljust(9) + cells + f"{train[arm].get('samples_per_s', float('nan')):>12.1f}")
    print(f"results: {args.out}/ki_ablation.json, {args.out}/ki_ablation.png")
    return out


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
