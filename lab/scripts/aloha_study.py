"""Flow vs EqM on the bimanual ALOHA sim (transfer cube and insertion) on a CPU, over several training seeds, paired.

    uv run lab/scripts/aloha_study.py                     # both tasks, seeds 42 43 44, 20 held-out episodes per seed

One command, every step cached (a rerun resumes): per task, scripted demos (``scripts/generate_aloha_demos.py --task
<task> --episodes 30 --resolution 64``), norm stats, the task's π₀ flow and EqM CPU configs (``pi0_aloha_sim_cpu`` /
``pi0_eqm_aloha_sim_cpu``; ``pi0_aloha_sim_insertion_cpu`` / ``pi0_eqm_aloha_sim_insertion_cpu``) — and, on transfer
cube only, their π₀.5 twins ``pi05_aloha_sim_cpu`` / ``pi05_eqm_aloha_sim_cpu`` (arms ``pi05-*``) — trained per seed
(``checkpoints/<config>/s<seed>``), each arm evaluated by ``scripts/eval.py`` on the same held-out configurations
(evaluation seed 1000, episode e) into ``<out>/<task>/<arm>/s<seed>``. Writes ``<out>/aloha_study.{json,md,png}``: per
task and arm the pooled success with a Wilson 95% CI, the per-seed rates with a Student-t CI across seeds, the mean of
the episodes' best reward (0–4), forwards per chunk and latency; paired comparisons on identical episodes (difference
with CI, McNemar's exact test) per task and over both tasks, the default arm first.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import tyro  # noqa: E402

from pi0_eqm.envs.stats import paired_comparison  # noqa: E402
from pi0_eqm.envs.stats import seed_mean_interval  # noqa: E402
from pi0_eqm.envs.stats import success_summary  # noqa: E402
from pi0_eqm.training.config import get_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TASKS = ("transfer_cube", "insertion")
# arm → ({task: config}, eval.py decoder flags); the default arm (EqM's library defaults, 10 forwards) is listed first
ARMS = {"eqm-10": ({"transfer_cube": "pi0_eqm_aloha_sim_cpu", "insertion": "pi0_eqm_aloha_sim_insertion_cpu"}, []),
        "flow-10": ({"transfer_cube": "pi0_aloha_sim_cpu", "insertion": "pi0_aloha_sim_insertion_cpu"}, []),
        "eqm-paper": ({"transfer_cube": "pi0_eqm_aloha_sim_cpu", "insertion": "pi0_eqm_aloha_sim_insertion_cpu"},
                      ["--preset", "paper"]),
        "pi05-eqm-10": ({"transfer_cube": "pi05_eqm_aloha_sim_cpu"}, []),
        "pi05-flow-10": ({"transfer_cube": "pi05_aloha_sim_cpu"}, [])}
DEFAULT_ARM = "eqm-10"


@dataclasses.dataclass
class Args:
    arms: tuple[str, ...] = tuple(ARMS)  # the π₀.5 arms run on transfer cube only
    tasks: tuple[str, ...] = TASKS
    seeds: tuple[int, ...] = (42, 43, 44)
    episodes: int = 20
    eval_seed: int = 1000
    replan_every: int = 8
    out: str = "results/aloha_study"


def _run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)


def _trained(config: str, seed: int) -> bool:
    cfg = get_config(config)
    return (REPO / cfg.checkpoint_base_dir / config / f"s{seed}" / str(cfg.num_train_steps) / "params").is_dir()


def _runs(args: Args) -> list[tuple[str, str]]:
    """The (task, arm) pairs the study runs: every arm on every task it has a config for."""
    return [(task, arm) for task in args.tasks for arm in args.arms if task in ARMS[arm][0]]


def _prepare(args: Args) -> None:
    for task in args.tasks:
        _run("scripts/generate_aloha_demos.py", "--task", task, "--episodes", "30", "--resolution", "64")
    for config in sorted({ARMS[arm][0][task] for task, arm in _runs(args)}):
        cfg = get_config(config)
        if not (REPO / cfg.assets_base_dir / config / cfg.data.asset_id / "norm_stats.json").is_file():
            _run("scripts/compute_norm_stats.py", config)
        for seed in args.seeds:
            if not _trained(config, seed):
                run_dir = REPO / cfg.checkpoint_base_dir / config / f"s{seed}"
                _run("scripts/train.py", config, "--exp-name", f"s{seed}", "--seed", str(seed),
                     *(["--resume"] if run_dir.exists() else []))


def _evaluate(args: Args, task: str, arm: str, seed: int) -> dict:
    configs, flags = ARMS[arm]
    out = Path(args.out) / task / arm / f"s{seed}"
    if not (REPO / out / "results.json").is_file():
        _run("scripts/eval.py", "--checkpoint", f"checkpoints/{configs[task]}/s{seed}", "--tasks", task,
             "--episodes-per-task", str(args.episodes), "--seed", str(args.eval_seed), "--replan-every",
             str(args.replan_every), *flags, "--out", str(out))
    return json.loads((REPO / out / "results.json").read_text())


def summarize(results: dict[str, dict[int, dict]]) -> dict:
    """Per arm (``results[arm][seed]`` = an eval.py result): pooled success, per-seed rates, mean best reward."""
    summary = {}
    for arm, by_seed in results.items():
        eps = [e for r in by_seed.values() for e in r["episodes"]]
        rates = [sum(e["success"] for e in r["episodes"]) / len(r["episodes"]) for r in by_seed.values()]
        forwards = [v for e in eps for v in e["stats"].get("solver/iterations", [])]
        latency = sorted(v * 1e3 for e in eps for v in e["latency_s"])
        rewards = [e["max_reward"] for e in eps if e.get("max_reward") is not None]
        mean, lo, hi = seed_mean_interval(rates)
        summary[arm] = {**success_summary(sum(e["success"] for e in eps), len(eps)), "per_seed": rates,
                        "seed_mean": mean, "seed_ci95": [lo, hi], "forwards_mean": sum(forwards) / len(forwards),
                        "latency_ms_p50": latency[len(latency) // 2],
                        "max_reward_mean": sum(rewards) / len(rewards) if len(rewards) == len(eps) else None}
    return summary


def paired(results: dict[str, dict[str, dict[int, dict]]], a: str, b: str) -> dict:
    """``a`` vs ``b`` on the (task, seed, episode) outcomes both have (``results[task][arm][seed]``)."""
    outcome = {arm: {(task, s, e["episode"]): bool(e["success"]) for task, by_arm in results.items()
                     for s, r in by_arm.get(arm, {}).items() for e in r["episodes"]} for arm in (a, b)}
    keys = sorted(set(outcome[a]) & set(outcome[b]))
    return paired_comparison([outcome[a][k] for k in keys], [outcome[b][k] for k in keys])


def markdown(summaries: dict[str, dict], pairs: dict) -> str:
    rows = ["| task | arm | forwards | success (pooled, 95% CI) | per seed | seed mean (t CI) | best reward | p50 ms |",
            "|---|---|---|---|---|---|---|---|"]
    for task, summary in summaries.items():
        for arm, s in summary.items():
            lo, hi = s["seed_ci95"]
            reward = "—" if s["max_reward_mean"] is None else f"{s['max_reward_mean']:.2f}"
            rows.append(f"| {task} | `{arm}`{' (default)' if arm == DEFAULT_ARM else ''} | {s['forwards_mean']:.0f} | "
                        f"{s['success_rate']:.3f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] (n = {s['n']}) | "
                        f"{', '.join(f'{r:.2f}' for r in s['per_seed'])} | {s['seed_mean']:.3f} [{lo:.2f}, {hi:.2f}] | "
                        f"{reward} | {s['latency_ms_p50']:.1f} |")
    rows += ["", "| paired (same episodes) | task | difference (95% CI) | a only / b only | McNemar p |",
             "|---|---|---|---|---|"]
    for (task, a, b), p in pairs.items():
        rows.append(f"| `{a}` − `{b}` (n = {p['n']}) | {task} | {p['diff']:+.3f} [{p['diff_ci95'][0]:+.3f}, "
                    f"{p['diff_ci95'][1]:+.3f}] | {p['a_only']} / {p['b_only']} | {p['mcnemar_p']:.3g} |")
    return "\n".join(rows) + "\n"


def plot(path: Path, summaries: dict[str, dict]) -> None:
    fig, axes = plt.subplots(1, len(summaries), figsize=(5 * len(summaries), 3), squeeze=False)
    for ax, (task, summary) in zip(axes[0], summaries.items(), strict=True):
        arms = list(summary)
        rates = [summary[a]["success_rate"] for a in arms]
        err = [[r - summary[a]["ci95"][0] for a, r in zip(arms, rates, strict=True)],
               [summary[a]["ci95"][1] - r for a, r in zip(arms, rates, strict=True)]]
        ax.bar(arms, rates, yerr=err, capsize=4, color=["tab:blue" if a == DEFAULT_ARM else "tab:gray" for a in arms])
        ax.set_ylabel("success (Wilson 95% CI)")
        ax.set_ylim(0, 1)
        ax.set_title(f"ALOHA sim {task.replace('_', ' ')}, pooled over seeds")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    unknown = sorted(set(args.arms) - set(ARMS)) + sorted(set(args.tasks) - set(TASKS))
    if unknown or not _runs(args):
        raise SystemExit(f"error: unknown arm(s) or task(s) {unknown}, or no arm has a config for the tasks; expected "
                         f"arms among {list(ARMS)} and tasks among {list(TASKS)}")
    _prepare(args)
    results = {task: {arm: {seed: _evaluate(args, task, arm, seed) for seed in args.seeds}
                      for t, arm in _runs(args) if t == task} for task in args.tasks}
    summaries = {task: summarize(by_arm) for task, by_arm in results.items()}
    comparisons = [(DEFAULT_ARM, b) for b in args.arms if b != DEFAULT_ARM]
    if {"pi05-eqm-10", "pi05-flow-10"} <= set(args.arms):  # π₀.5's own decoder comparison
        comparisons.append(("pi05-eqm-10", "pi05-flow-10"))
    pairs = {}
    for a, b in comparisons:
        tasks = [t for t in args.tasks if a in results[t] and b in results[t]]
        for task in tasks:
            pairs[(task, a, b)] = paired({task: results[task]}, a, b)
        if len(tasks) > 1:
            pairs[("all", a, b)] = paired({t: results[t] for t in tasks}, a, b)
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "aloha_study.json").write_text(json.dumps(
        {"args": dataclasses.asdict(args), "summary": summaries,
         "paired": {f"{task}: {a} - {b}": p for (task, a, b), p in pairs.items()}}, indent=2))
    (out / "aloha_study.md").write_text(markdown(summaries, pairs))
    plot(out / "aloha_study.png", summaries)
    print(markdown(summaries, pairs))
    return {"summary": summaries, "pairs": pairs}


if __name__ == "__main__":
    main(tyro.cli(Args))
