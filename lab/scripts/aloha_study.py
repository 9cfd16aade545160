"""Flow vs EqM on the bimanual ALOHA sim (transfer cube) on a CPU, over several training seeds, paired.

    uv run lab/scripts/aloha_study.py                     # seeds 42 43 44, 20 held-out episodes per seed and arm

One command, every step cached (a rerun resumes): scripted demos (``scripts/generate_aloha_demos.py --episodes 30
--resolution 64``), norm stats, ``pi0_aloha_sim_cpu`` (flow) and ``pi0_eqm_aloha_sim_cpu`` (EqM) — and their π₀.5
twins ``pi05_aloha_sim_cpu`` / ``pi05_eqm_aloha_sim_cpu`` (arms ``pi05-*``) — trained per seed
(``checkpoints/<config>/s<seed>``), each arm evaluated by ``scripts/eval.py`` on the same held-out configurations
(evaluation seed 1000, episode e) into ``<out>/<arm>/s<seed>``. Writes ``<out>/aloha_study.{json,md,png}``: per arm the
pooled success with a Wilson 95% CI, the per-seed rates with a Student-t CI across seeds, forwards per chunk and
latency; paired comparisons on identical episodes (difference with CI, McNemar's exact test), the default arm first.
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
# arm → (config, eval.py decoder flags); the default arm (EqM's library defaults, 10 forwards) is listed first
ARMS = {"eqm-10": ("pi0_eqm_aloha_sim_cpu", []), "flow-10": ("pi0_aloha_sim_cpu", []),
        "eqm-paper": ("pi0_eqm_aloha_sim_cpu", ["--preset", "paper"]),
        "pi05-eqm-10": ("pi05_eqm_aloha_sim_cpu", []), "pi05-flow-10": ("pi05_aloha_sim_cpu", [])}
DEFAULT_ARM = "eqm-10"


@dataclasses.dataclass
class Args:
    arms: tuple[str, ...] = tuple(ARMS)  # π₀'s three arms take ~25 min here, π₀.5's two about as long again
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


def _prepare(args: Args) -> None:
    _run("scripts/generate_aloha_demos.py", "--episodes", "30", "--resolution", "64")
    for config in sorted({ARMS[a][0] for a in args.arms}):
        cfg = get_config(config)
        if not (REPO / cfg.assets_base_dir / config / cfg.data.asset_id / "norm_stats.json").is_file():
            _run("scripts/compute_norm_stats.py", config)
        for seed in args.seeds:
            if not _trained(config, seed):
                run_dir = REPO / cfg.checkpoint_base_dir / config / f"s{seed}"
                _run("scripts/train.py", config, "--exp-name", f"s{seed}", "--seed", str(seed),
                     *(["--resume"] if run_dir.exists() else []))


def _evaluate(args: Args, arm: str, seed: int) -> dict:
    config, flags = ARMS[arm]
    out = Path(args.out) / arm / f"s{seed}"
    if not (out / "results.json").is_file():
        _run("scripts/eval.py", "--checkpoint", f"checkpoints/{config}/s{seed}", "--episodes-per-task",
             str(args.episodes), "--seed", str(args.eval_seed), "--replan-every", str(args.replan_every), *flags,
             "--out", str(out))
    return json.loads((REPO / out / "results.json").read_text())


def summarize(results: dict[str, dict[int, dict]]) -> dict:
    summary = {}
    for arm, by_seed in results.items():
        eps = [e for r in by_seed.values() for e in r["episodes"]]
        rates = [sum(e["success"] for e in r["episodes"]) / len(r["episodes"]) for r in by_seed.values()]
        forwards = [v for e in eps for v in e["stats"].get("solver/iterations", [])]
        latency = sorted(v * 1e3 for e in eps for v in e["latency_s"])
        mean, lo, hi = seed_mean_interval(rates)
        summary[arm] = {**success_summary(sum(e["success"] for e in eps), len(eps)), "per_seed": rates,
                        "seed_mean": mean, "seed_ci95": [lo, hi], "forwards_mean": sum(forwards) / len(forwards),
                        "latency_ms_p50": latency[len(latency) // 2]}
    return summary


def paired(results: dict[str, dict[int, dict]], a: str, b: str) -> dict:
    outcome = {arm: {(s, e["episode"]): bool(e["success"]) for s, r in by_seed.items() for e in r["episodes"]}
               for arm, by_seed in results.items()}
    keys = sorted(set(outcome[a]) & set(outcome[b]))
    return paired_comparison([outcome[a][k] for k in keys], [outcome[b][k] for k in keys])


def markdown(summary: dict, pairs: dict) -> str:
    rows = ["| arm | forwards | success (pooled, 95% CI) | per seed | seed mean (t CI) | p50 ms |",
            "|---|---|---|---|---|---|"]
    for arm, s in summary.items():
        lo, hi = s["seed_ci95"]
        rows.append(f"| `{arm}`{' (default)' if arm == DEFAULT_ARM else ''} | {s['forwards_mean']:.0f} | "
                    f"{s['success_rate']:.3f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] (n = {s['n']}) | "
                    f"{', '.join(f'{r:.2f}' for r in s['per_seed'])} | {s['seed_mean']:.3f} [{lo:.2f}, {hi:.2f}] | "
                    f"{s['latency_ms_p50']:.1f} |")
    rows += ["", "| paired (same episodes) | difference (95% CI) | a only / b only | McNemar p |", "|---|---|---|---|"]
    for (a, b), p in pairs.items():
        rows.append(f"| `{a}` − `{b}` (n = {p['n']}) | {p['diff']:+.3f} [{p['diff_ci95'][0]:+.3f}, "
                    f"{p['diff_ci95'][1]:+.3f}] | {p['a_only']} / {p['b_only']} | {p['mcnemar_p']:.3g} |")
    return "\n".join(rows) + "\n"


def plot(path: Path, summary: dict) -> None:
    fig, ax = plt.subplots(figsize=(5, 3))
    arms = list(summary)
    rates = [summary[a]["success_rate"] for a in arms]
    err = [[r - summary[a]["ci95"][0] for a, r in zip(arms, rates, strict=True)],
           [summary[a]["ci95"][1] - r for a, r in zip(arms, rates, strict=True)]]
    ax.bar(arms, rates, yerr=err, capsize=4, color=["tab:blue" if a == DEFAULT_ARM else "tab:gray" for a in arms])
    ax.set_ylabel("success (Wilson 95% CI)")
    ax.set_title("ALOHA sim transfer cube, pooled over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"error: unknown arm(s) {unknown}; expected some of {list(ARMS)}")
    _prepare(args)
    results = {arm: {seed: _evaluate(args, arm, seed) for seed in args.seeds} for arm in args.arms}
    summary = summarize(results)
    others = [a for a in args.arms if a != DEFAULT_ARM]
    pairs = {(DEFAULT_ARM, b): paired(results, DEFAULT_ARM, b) for b in others if DEFAULT_ARM in results}
    if {"pi05-eqm-10", "pi05-flow-10"} <= set(results):  # π₀.5's own decoder comparison
        pairs[("pi05-eqm-10", "pi05-flow-10")] = paired(results, "pi05-eqm-10", "pi05-flow-10")
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "aloha_study.json").write_text(json.dumps(
        {"args": dataclasses.asdict(args), "summary": summary,
         "paired": {f"{a} - {b}": p for (a, b), p in pairs.items()}}, indent=2))
    (out / "aloha_study.md").write_text(markdown(summary, pairs))
    plot(out / "aloha_study.png", summary)
    print(markdown(summary, pairs))
    return {"summary": summary, "pairs": pairs}


if __name__ == "__main__":
    main(tyro.cli(Args))
