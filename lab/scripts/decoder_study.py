"""Flow vs EqM on the embedded Meta-World benchmark at matched budgets, over several training seeds, paired.

    uv run lab/scripts/decoder_study.py                                 # the default arms, seeds 42 43 44
    uv run lab/scripts/decoder_study.py --arms eqm-10 flow-10 --seeds 42

Every arm is (decoder, EqM training variant, decoder settings). Each (arm, seed) trains its checkpoint if missing
(``checkpoints/<config>/<exp>``: ``main`` for seed 42, ``seed<N>`` otherwise, ``<variant>_s<N>`` for EqM training
variants) and is evaluated on the same held-out episodes (evaluation seed 1000, episode e of task t), so arms are
compared pairwise on identical initial states. Per-(arm, seed) results are cached under ``<out>/runs`` (re-running
resumes). Prints and writes ``<out>/decoder_study.{json,png,md}`` (the markdown holds the README's tables): per arm, success pooled over all episodes with a
Wilson 95% CI, the per-seed rates with a Student-t CI across seeds, mean expert forwards per chunk and latency; and
the paired comparisons (difference with CI, McNemar's exact test).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
from pi0_eqm_experiments.variants import EQM_TRAIN_VARIANTS  # noqa: E402

from pi0_eqm.benchmarks import metaworld as bench  # noqa: E402
from pi0_eqm.decoders.settings import DecoderSettings  # noqa: E402
from pi0_eqm.envs.stats import paired_comparison  # noqa: E402
from pi0_eqm.envs.stats import seed_mean_interval  # noqa: E402
from pi0_eqm.envs.stats import success_summary  # noqa: E402
from pi0_eqm.envs.tasks import DEFAULT_TASKS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Arm:
    decoder: str  # "eqm" | "flow"
    settings: dict  # DecoderSettings fields (executed is set from --replan-every)
    variant: str = "default"  # EqM training variant (EQM_TRAIN_VARIANTS)
    model: str = "pi0"  # "pi0" | "pi05" (π₀.5: adaRMS expert, discrete state in the prompt, quantile norm) | "pi05_ki"


# Arms spell out every solver setting they depend on, so their meaning (and cached results) never follow a change of
# the library's defaults. The default decoder settings are those of "eqm-cold-eta03-10" (README).
_FIRST = {"step_size": 0.05, "momentum": 0.5, "warm_start": "aligned"}  # this study's first candidate
_DEFAULT = {"step_size": 0.03, "momentum": 0.3, "warm_start": "off"}  # the chosen default
ARMS: dict[str, Arm] = {
    **{f"flow-{k}": Arm("flow", {"max_iters": k, "warm_start": "off"}) for k in (5, 10, 20, 300)},
    **{f"eqm-{k}": Arm("eqm", {"preset": "action", **_FIRST, "max_iters": k}) for k in (5, 10, 20)},
    "eqm-paper-300": Arm("eqm", {"preset": "paper", "warm_start": "aligned"}),
    "eqm-bb-10": Arm("eqm", {"preset": "bb", "warm_start": "aligned"}),
    "eqm-eta03-10": Arm("eqm", {"preset": "action", **_FIRST, "step_size": 0.03, "momentum": 0.3}),
    "eqm-cold-10": Arm("eqm", {"preset": "action", **_FIRST, "warm_start": "off"}),
    "eqm-cold-5": Arm("eqm", {"preset": "action", **_FIRST, "max_iters": 5, "warm_start": "off"}),
    "eqm-cold-eta03-10": Arm("eqm", {"preset": "action", **_DEFAULT, "max_iters": 10}),
    "eqm-cold-eta03-10-noguard": Arm("eqm", {"preset": "action", **_DEFAULT, "max_iters": 10, "guard": False}),
    "eqm-mix-10": Arm("eqm", {"preset": "action", **_FIRST}, "mix"),
    "eqm-real-10": Arm("eqm", {"preset": "action", **_FIRST}, "real"),
    "eqm-mix_real-10": Arm("eqm", {"preset": "action", **_FIRST}, "mix_real"),
    # π₀.5 twins of the two default arms (same data, steps, seeds, episodes)
    "pi05-flow-10": Arm("flow", {"max_iters": 10, "warm_start": "off"}, model="pi05"),
    "pi05-eqm-cold-eta03-10": Arm("eqm", {"preset": "action", **_DEFAULT, "max_iters": 10}, model="pi05"),
    # ... and with knowledge insulation (FAST loss on the backbone, stop-gradient K/V for the expert)
    "pi05-ki-flow-10": Arm("flow", {"max_iters": 10, "warm_start": "off"}, model="pi05_ki"),
    "pi05-ki-eqm-cold-eta03-10": Arm("eqm", {"preset": "action", **_DEFAULT, "max_iters": 10}, model="pi05_ki"),
}
DEFAULT_ARM = "eqm-cold-eta03-10-noguard"  # the library's default decoder settings (DecoderSettings())
DEFAULT_ARMS = ("flow-5", "flow-10", "flow-20", "flow-300", "eqm-5", "eqm-10", "eqm-20", "eqm-paper-300",
                "eqm-cold-eta03-10", DEFAULT_ARM)
# (a, b) pairs tested on the same episodes, when both arms ran.
PAIRS = (("eqm-cold-eta03-10", "eqm-paper-300"), ("eqm-cold-eta03-10", "flow-10"), ("eqm-10", "eqm-paper-300"), ("eqm-5", "flow-5"), ("eqm-10", "flow-10"), ("eqm-20", "flow-20"),
         ("eqm-paper-300", "flow-300"), ("eqm-bb-10", "eqm-10"), ("eqm-eta03-10", "eqm-10"), ("eqm-cold-10", "eqm-10"), ("eqm-cold-eta03-10", "eqm-cold-10"), ("eqm-cold-eta03-10-noguard", "eqm-cold-eta03-10"),
         ("eqm-cold-5", "eqm-cold-10"), ("eqm-mix-10", "eqm-10"), ("eqm-real-10", "eqm-10"),
         ("eqm-mix_real-10", "eqm-10"), ("pi05-eqm-cold-eta03-10", "pi05-flow-10"),
         ("pi05-flow-10", "flow-10"), ("pi05-eqm-cold-eta03-10", "eqm-cold-eta03-10"),
         ("pi05-ki-flow-10", "pi05-flow-10"), ("pi05-ki-eqm-cold-eta03-10", "pi05-eqm-cold-eta03-10"))
CONFIGS = {("pi0", "eqm"): "pi0_eqm_metaworld", ("pi0", "flow"): "pi0_metaworld",
           ("pi05", "eqm"): "pi05_eqm_metaworld", ("pi05", "flow"): "pi05_metaworld",
           ("pi05_ki", "eqm"): "pi05_eqm_ki_metaworld", ("pi05_ki", "flow"): "pi05_ki_metaworld"}


@dataclasses.dataclass
class Args:
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (42, 43, 44)
    episodes_per_task: int = 20
    eval_seed: int = 1000
    replan_every: int = 8
    max_steps: int = 200
    demos_per_task: int = 10
    tasks: tuple[str, ...] = DEFAULT_TASKS
    train_steps: int | None = None  # default: the configs' 1500
    batch_size: int | None = None  # default: the configs' 32
    out: str = "results/decoder_study"
    checkpoint_base_dir: str = "./checkpoints"
    assets_base_dir: str = "./assets"
    progress: bool = True


def exp_name(arm: Arm, seed: int, train_steps: int | None = None) -> str:
    """``main`` (seed 42, as the main job) or ``seed<N>``; ``<variant>_s<N>`` for EqM training variants; a non-default
    schedule adds ``_t<steps>``."""
    name = f"{arm.variant}_s{seed}" if arm.variant != "default" else ("main" if seed == 42 else f"seed{seed}")
    return name if train_steps is None else f"{name}_t{train_steps}"


def run_arm(args: Args, name: str, seed: int, data_path: str) -> dict:
    """Trains (if needed) and evaluates one (arm, seed); cached in ``<out>/runs/<arm>/seed<seed>.json``."""
    cache = Path(args.out) / "runs" / name / (f"seed{seed}.json" if args.train_steps is None
                                              else f"seed{seed}_t{args.train_steps}.json")
    key = {"episodes_per_task": args.episodes_per_task, "eval_seed": args.eval_seed, "tasks": list(args.tasks),
           "replan_every": args.replan_every, "max_steps": args.max_steps}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if all(cached.get(k) == v for k, v in key.items()):
            return cached
    arm = ARMS[name]
    cfg = bench.configure_run(CONFIGS[arm.model, arm.decoder], data_path, exp_name=exp_name(arm, seed, args.train_steps), seed=seed,
                              train_steps=args.train_steps, batch_size=args.batch_size,
                              checkpoint_base_dir=args.checkpoint_base_dir, assets_base_dir=args.assets_base_dir,
                              decoder_updates=EQM_TRAIN_VARIANTS[arm.variant] if arm.decoder == "eqm" else None)
    bench.train_or_reuse(cfg, False, args.progress)
    settings = DecoderSettings(**arm.settings, executed=args.replan_every)
    policy = bench.load_policy(cfg, cfg.checkpoint_dir, settings)
    res = bench.evaluate_policy(policy, episodes_per_task=args.episodes_per_task, replan_every=args.replan_every,
                                seed=args.eval_seed, max_steps=args.max_steps, tasks=args.tasks,
                                resolution=cfg.model.image_resolution[0], progress=args.progress)
    episodes = [{"task": e["task"], "episode": e["episode"], "success": bool(e["success"]), "steps": e["steps"],
                 "forwards": e["stats"].get("solver/iterations", []), "latency_s": e["latency_s"]}
                for e in res["episodes"]]
    out = {"arm": name, "seed": seed, "checkpoint": str(cfg.checkpoint_dir), "settings": dataclasses.asdict(settings),
           **key, "episodes": episodes}
    bench.save_json(cache, out)
    return out


def summarize(runs: list[dict], tasks) -> dict:
    eps = [e for r in runs for e in r["episodes"]]
    forwards = [x for e in eps for x in e["forwards"]]
    lat = [x for e in eps for x in e["latency_s"]]
    per_seed = {r["seed"]: float(np.mean([e["success"] for e in r["episodes"]])) for r in runs}
    mean, lo, hi = seed_mean_interval(list(per_seed.values()))
    per_task = {t: float(np.mean([e["success"] for e in eps if e["task"] == t])) for t in tasks}
    return {**success_summary(sum(e["success"] for e in eps), len(eps)), "per_seed": per_seed,
            "seed_mean": mean, "seed_ci95": [lo, hi], "forwards_mean": float(np.mean(forwards)),
            "latency_ms_mean": 1e3 * float(np.mean(lat)), "per_task": per_task}


def outcomes(runs: list[dict]) -> dict[tuple, bool]:
    return {(r["seed"], e["task"], e["episode"]): e["success"] for r in runs for e in r["episodes"]}


def markdown(summary: dict, pairs: dict, tasks) -> str:
    """The README tables: one row per arm, then the paired comparisons."""
    short = [t.replace("-v3", "") for t in tasks]
    lines = ["| arm | forwards/chunk | success (pooled) | Wilson 95% CI | per seed | seed mean, t 95% CI | ms/chunk | "
             + " | ".join(short) + " |", "|" + "---|" * (7 + len(tasks))]
    for a, s in summary.items():
        seeds = " / ".join(f"{v:.3f}" for v in s["per_seed"].values())
        lines.append(f"| `{a}` | {s['forwards_mean']:.1f} | **{s['success_rate']:.3f}** | [{s['ci95'][0]:.2f}, "
                     f"{s['ci95'][1]:.2f}] | {seeds} | {s['seed_mean']:.3f} [{s['seed_ci95'][0]:.2f}, "
                     f"{s['seed_ci95'][1]:.2f}] | {s['latency_ms_mean']:.0f} | "
                     + " | ".join(f"{s['per_task'][t]:.2f}" for t in tasks) + " |")
    lines += ["", "| paired (same seeds, same episodes) | n | a − b | 95% CI | a only / b only | McNemar exact p |",
              "|---|---|---|---|---|---|"]
    for k, p in pairs.items():
        a, b = k.split(" vs ")
        lines.append(f"| `{a}` − `{b}` | {p['n']} | {p['diff']:+.3f} | [{p['diff_ci95'][0]:+.3f}, "
                     f"{p['diff_ci95'][1]:+.3f}] | {p['a_only']} / {p['b_only']} | {p['mcnemar_p']:.3g} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for dec, color in (("flow", "tab:blue"), ("eqm", "tab:orange")):
        names = [n for n in summary if n.startswith(f"{dec}-") and n.split("-")[-1].isdigit()
                 and ARMS[n].variant == "default" and ("preset" not in ARMS[n].settings
                                                        or ARMS[n].settings["preset"] == "action")]
        names.sort(key=lambda n: summary[n]["forwards_mean"])
        xs = [summary[n]["forwards_mean"] for n in names]
        ys = [summary[n]["success_rate"] for n in names]
        err = np.array([[y - summary[n]["ci95"][0], summary[n]["ci95"][1] - y] for n, y in zip(names, ys, strict=True)]).T
        if names:
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=color, label=f"{dec} (Wilson 95% CI)")
    extra = (("eqm-paper-300", "s", "tab:red"), ("eqm-bb-10", "^", "tab:green"),
             (DEFAULT_ARM, "*", "black"))
    for n, marker, color in extra:
        if n in summary:
            s = summary[n]
            label = f"{n} (default)" if n == DEFAULT_ARM else n
            ax.errorbar([s["forwards_mean"]], [s["success_rate"]],
                        yerr=[[s["success_rate"] - s["ci95"][0]], [s["ci95"][1] - s["success_rate"]]],
                        marker=marker, markersize=10 if n == DEFAULT_ARM else 6, capsize=3, color=color, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("mean expert forwards per chunk")
    ax.set_ylabel("success (all seeds, all episodes)")
    ax.set_title("Meta-World, held-out configurations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    from pi0_eqm.envs.demos import generate_dataset
    from pi0_eqm.training.data_config import data_home

    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; expected some of {sorted(ARMS)}")
    if not args.seeds:
        raise ValueError("--seeds must name at least one training seed")
    vd = generate_dataset(data_home() / "metaworld", tasks=args.tasks, episodes_per_task=args.demos_per_task,
                          resolution=64, progress=args.progress)
    data_path = str(vd.parent.resolve())
    runs = {a: [run_arm(args, a, s, data_path) for s in args.seeds] for a in args.arms}
    summary = {a: summarize(rs, args.tasks) for a, rs in runs.items()}
    pairs = {}
    # The default arm against every other arm that ran, then the study's own pairs.
    default_pairs = [(DEFAULT_ARM, a) for a in args.arms if a != DEFAULT_ARM] if DEFAULT_ARM in runs else []
    for a, b in [*default_pairs, *(p for p in PAIRS if p not in default_pairs)]:
        if a in runs and b in runs:
            oa, ob = outcomes(runs[a]), outcomes(runs[b])
            keys = sorted(oa)
            pairs[f"{a} vs {b}"] = paired_comparison([oa[k] for k in keys], [ob[k] for k in keys])
    n_ep = len(args.tasks) * args.episodes_per_task
    print(f"\n{len(args.seeds)} training seeds × {n_ep} held-out episodes (seed {args.eval_seed})")
    head = f"{'arm':<18}{'success':>8}  {'Wilson 95% CI':<15}{'per seed':<20}{'seed-mean t95 CI':<19}{'fwd':>6}{'ms':>6}"
    print(head + "\n" + "-" * len(head))
    for a, s in summary.items():
        seeds = " ".join(f"{v:.2f}" for v in s["per_seed"].values())
        print(f"{a:<18}{s['success_rate']:>8.3f}  [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]   {seeds:<20}"
              f"[{s['seed_ci95'][0]:.2f}, {s['seed_ci95'][1]:.2f}]      {s['forwards_mean']:>6.1f}"
              f"{s['latency_ms_mean']:>6.0f}")
    print("\npaired (same seeds and episodes): a − b, 95% CI, discordant a-only/b-only, McNemar exact p")
    for k, p in pairs.items():
        print(f"  {k:<34}{p['diff']:+.3f} [{p['diff_ci95'][0]:+.3f}, {p['diff_ci95'][1]:+.3f}]  "
              f"{p['a_only']:>3}/{p['b_only']:<3}  p={p['mcnemar_p']:.3g}")
    out = Path(args.out)
    bench.save_json(out / "decoder_study.json", {"args": dataclasses.asdict(args), "summary": summary,
                                                 "paired": pairs})
    plot(out / "decoder_study.png", summary)
    (out / "decoder_study.md").write_text(markdown(summary, pairs, args.tasks))
    print(f"results: {out}/decoder_study.json, {out}/decoder_study.png, {out}/decoder_study.md")
    return {"summary": summary, "paired": pairs}


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
