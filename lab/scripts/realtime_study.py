"""Real-time chunking on the embedded Meta-World benchmark: which decoder and which consistency method hold up under
inference delay, with paired statistics.

    uv run lab/scripts/realtime_study.py                                   # 3 seeds, d ∈ {0, 2, 4, 8}, 6 arms
    uv run lab/scripts/realtime_study.py --seeds 42 --delays 4 --episodes-per-task 5

Conventions: ``pi0_eqm.decoders.realtime`` (H = 16 for these configs, s = ``--execute``, delay d simulated in
control steps, ``pi0_eqm.envs.realtime``). Arms: ``<decoder>-<method>`` with decoder ∈ {flow, eqm} (the default
decoder settings: 10 forwards) and method ∈ {sync (hold still while inferring), naive (execute the committed prefix,
switch at d, tell the policy nothing), prefix (also send the committed prefix and the overlap: flow → RTC guidance,
EqM → inpainting)}. Every (arm, seed, d) is evaluated on the same held-out episodes (evaluation seed 1000, episode e
of task t), so arms are compared pairwise; results are cached per (arm, seed, d) under ``<out>/runs`` (a rerun
resumes), checkpoints are the decoder study's (``main`` for seed 42, ``seed<N>`` otherwise; trained if missing).

``<decoder>-trained`` arms use checkpoints trained with committed prefixes (``TRAINED_CONFIGS``: flow = training-time
RTC, arXiv 2512.05964; EqM = committed rows clean with no loss) and send the committed prefix like ``prefix``.

Writes ``<out>/realtime_study.{json,md,png}``: per (arm, d) success pooled with a Wilson 95% CI, per seed, the
boundary discontinuity (normalized units), forwards, VJPs and ms per chunk; paired McNemar tests of every method
against naive at the same d, and of EqM-prefix against flow-prefix; success vs d per arm.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from pi0_eqm.benchmarks import metaworld as bench  # noqa: E402
from pi0_eqm.decoders.settings import DecoderSettings  # noqa: E402
from pi0_eqm.envs.demos import generate_dataset  # noqa: E402
from pi0_eqm.envs.realtime import METHODS  # noqa: E402
from pi0_eqm.envs.realtime import RealtimeConfig  # noqa: E402
from pi0_eqm.envs.stats import paired_comparison  # noqa: E402
from pi0_eqm.envs.stats import success_summary  # noqa: E402
from pi0_eqm.envs.tasks import DEFAULT_TASKS  # noqa: E402
from pi0_eqm.robots import METAWORLD  # noqa: E402
from pi0_eqm.serving.realtime import COMMITTED_KEY  # noqa: E402
from pi0_eqm.serving.realtime import OVERLAP_KEY  # noqa: E402
from pi0_eqm.training.data_config import data_home  # noqa: E402

CONFIGS = {"flow": "pi0_metaworld", "eqm": "pi0_eqm_metaworld"}
# Trained with committed prefixes of up to 8 rows (decoder max_delay): flow = training-time RTC, EqM = committed rows
# clean with no loss (both decode with the committed rows clamped).
TRAINED_CONFIGS = {"flow": "pi0_rtc_metaworld", "eqm": "pi0_eqm_prefix_metaworld"}


@dataclasses.dataclass(frozen=True)
class Arm:
    decoder: str  # flow | eqm
    method: str  # sync | naive | prefix (pi0_eqm.envs.realtime.METHODS)
    config: str  # the training config of its checkpoints
    overrides: tuple[tuple[str, object], ...] = ()  # decoder settings; the defaults otherwise (10 forwards, cold)


ARMS: dict[str, Arm] = {
    **{f"{dec}-{m}": Arm(dec, m, CONFIGS[dec]) for dec in CONFIGS for m in METHODS},
    # inpainting + a soft pull of the overlap rows toward the old plan
    "eqm-prefix-pull": Arm("eqm", "prefix", CONFIGS["eqm"], (("inpaint_pull", 0.3),)),
    **{f"{dec}-trained": Arm(dec, "prefix", TRAINED_CONFIGS[dec]) for dec in TRAINED_CONFIGS},
    # EqM trained with committed prefixes and told which rows are committed (its time input as a per-token flag)
    "eqm-trained-flag": Arm("eqm", "prefix", "pi0_eqm_prefix_flag_metaworld"),
}
DEFAULT_ARMS = tuple(ARMS)


@dataclasses.dataclass
class Args:
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (42, 43, 44)
    delays: tuple[int, ...] = (0, 2, 4, 8)
    episodes_per_task: int = 10
    execute: int = 8  # s
    eval_seed: int = 1000
    max_steps: int = 200
    demos_per_task: int = 10
    tasks: tuple[str, ...] = DEFAULT_TASKS
    train_steps: int | None = None  # default: the configs' 1500
    batch_size: int | None = None
    out: str = "results/realtime_study"
    checkpoint_base_dir: str = "./checkpoints"
    assets_base_dir: str = "./assets"
    progress: bool = True


def exp_name(seed: int, train_steps: int | None) -> str:
    name = "main" if seed == 42 else f"seed{seed}"
    return name if train_steps is None else f"{name}_t{train_steps}"


def warm_up(policy, resolution: int) -> None:
    """Compiles the decode with and without a committed prefix (one compilation serves every d), so chunk latencies
    exclude compilation."""
    obs = METAWORLD.example(np.random.default_rng(0), image_size=resolution)
    policy.infer(dict(obs))
    policy.infer({**obs, COMMITTED_KEY: np.zeros((2, METAWORLD.action_dim), np.float32),
                  OVERLAP_KEY: np.zeros((4, METAWORLD.action_dim), np.float32)})
    policy.close(None)


def run_cell(args: Args, arm: str, seed: int, delay: int, data_path: str, policies: dict) -> dict:
    """Trains (if needed) and evaluates one (arm, seed, d); cached in ``<out>/runs/<arm>/seed<seed>_d<d>.json``."""
    cache = Path(args.out) / "runs" / arm / f"seed{seed}_d{delay}.json"
    key = {"episodes_per_task": args.episodes_per_task, "eval_seed": args.eval_seed, "tasks": list(args.tasks),
           "execute": args.execute, "max_steps": args.max_steps, "train_steps": args.train_steps}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved
    spec = ARMS[arm]
    if (spec.config, seed) not in policies:
        cfg = bench.configure_run(spec.config, data_path, exp_name=exp_name(seed, args.train_steps), seed=seed,
                                  train_steps=args.train_steps, batch_size=args.batch_size,
                                  checkpoint_base_dir=args.checkpoint_base_dir, assets_base_dir=args.assets_base_dir)
        bench.train_or_reuse(cfg, False, args.progress)
        policy = bench.load_policy(cfg, cfg.checkpoint_dir, DecoderSettings(executed=args.execute))
        warm_up(policy, cfg.model.image_resolution[0])
        policies[(spec.config, seed)] = (cfg, policy)
    cfg, policy = policies[(spec.config, seed)]
    policy.settings = DecoderSettings(executed=args.execute, **dict(spec.overrides))
    policy.close(None)  # every cell starts the policy's noise stream afresh
    res = bench.evaluate_policy(policy, episodes_per_task=args.episodes_per_task, replan_every=args.execute,
                                seed=args.eval_seed, max_steps=args.max_steps, tasks=args.tasks,
                                resolution=cfg.model.image_resolution[0], progress=args.progress,
                                realtime=RealtimeConfig(method=spec.method, delay=delay))
    episodes = [{"task": e["task"], "episode": e["episode"], "success": bool(e["success"]), "steps": e["steps"],
                 "jumps": e["jumps"], "forwards": e["stats"].get("solver/iterations", []),
                 "vjps": e["stats"].get("solver/vjps", []), "latency_s": e["latency_s"]} for e in res["episodes"]]
    out = {"key": key, "arm": arm, "seed": seed, "delay": delay, "checkpoint": str(cfg.checkpoint_dir),
           "episodes": episodes}
    bench.save_json(cache, out)
    return out


def summarize(runs: list[dict]) -> dict:
    eps = [e for r in runs for e in r["episodes"]]
    flat = lambda k: [x for e in eps for x in e[k]]
    jumps, fwd, vjps, lat = flat("jumps"), flat("forwards"), flat("vjps"), flat("latency_s")
    return {**success_summary(sum(e["success"] for e in eps), len(eps)),
            "per_seed": {r["seed"]: float(np.mean([e["success"] for e in r["episodes"]])) for r in runs},
            "jump_mean": float(np.mean(jumps)) if jumps else None,
            "forwards_mean": float(np.mean(fwd)) if fwd else None, "vjps_mean": float(np.mean(vjps)) if vjps else 0.0,
            "latency_ms_mean": 1e3 * float(np.mean(lat)) if lat else None,
            "steps_mean": float(np.mean([e["steps"] for e in eps]))}


def outcomes(runs: list[dict]) -> dict[tuple, bool]:
    return {(r["seed"], e["task"], e["episode"]): e["success"] for r in runs for e in r["episodes"]}


def pairs_at(arms: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every method against naive of the same decoder, EqM against flow with the same method, and each trained-prefix
    arm against its decoder's inference-time prefix method."""
    out = [(a, f"{spec.decoder}-naive") for a, spec in ARMS.items() if spec.method != "naive"]
    out += [(f"eqm-{m}", f"flow-{m}") for m in (*METHODS, "trained")] + [("eqm-prefix-pull", "flow-prefix")]
    out += [(f"{dec}-trained", f"{dec}-prefix") for dec in TRAINED_CONFIGS] + [("eqm-trained-flag", "eqm-trained")]
    return [(a, b) for a, b in out if a in arms and b in arms]


def markdown(summary: dict, pairs: dict, delays) -> str:
    lines = ["| arm | d | success (pooled) | Wilson 95% CI | per seed | jump (normalized) | forwards | VJPs | ms/chunk "
             "| steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (arm, d), s in summary.items():
        seeds = " / ".join(f"{v:.3f}" for v in s["per_seed"].values())
        jump = "—" if s["jump_mean"] is None else f"{s['jump_mean']:.3f}"
        lines.append(f"| `{arm}` | {d} | **{s['success_rate']:.3f}** | [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] | "
                     f"{seeds} | {jump} | {s['forwards_mean']:.1f} | {s['vjps_mean']:.1f} | "
                     f"{s['latency_ms_mean']:.1f} | {s['steps_mean']:.0f} |")
    lines += ["", "| paired (same seeds, same episodes) | d | n | a − b | 95% CI | a only / b only | McNemar exact p |",
              "|---|---|---|---|---|---|---|"]
    for (a, b, d), p in pairs.items():
        lines.append(f"| `{a}` − `{b}` | {d} | {p['n']} | {p['diff']:+.3f} | [{p['diff_ci95'][0]:+.3f}, "
                     f"{p['diff_ci95'][1]:+.3f}] | {p['a_only']} / {p['b_only']} | {p['mcnemar_p']:.3g} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict, arms, delays) -> None:
    import matplotlib  # lazy: plotting only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = {"flow": ("tab:blue", "--"), "eqm": ("tab:orange", "-")}
    markers = {"sync": "s", "naive": "o", "prefix": "^", "trained": "D"}
    for i, arm in enumerate(arms):
        spec = ARMS[arm]
        dec, m, overrides = spec.decoder, arm.split("-")[1], spec.overrides
        ds = [d for d in delays if (arm, d) in summary]
        ys = [summary[(arm, d)]["success_rate"] for d in ds]
        err = np.array([[y - summary[(arm, d)]["ci95"][0], summary[(arm, d)]["ci95"][1] - y]
                        for d, y in zip(ds, ys, strict=True)]).T
        color, line = styles[dec]
        shift = 0.06 * (i - len(arms) / 2)
        style = ":" if overrides else ("-." if m == "trained" else line)
        ax.errorbar(np.array(ds) + shift, ys, yerr=err, color=color, linestyle=style,
                    marker=markers[m], capsize=3, label=arm)
    ax.set_xlabel("inference delay d (control steps)")
    ax.set_ylabel("success (pooled, Wilson 95% CI)")
    ax.set_title("Meta-World under inference delay (H 16, s 8)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; expected some of {list(ARMS)}")
    if not args.seeds or not args.delays:
        raise ValueError("--seeds and --delays must name at least one value each")
    bad = [d for d in args.delays if not 0 <= d <= args.execute]
    if bad:
        raise ValueError(f"delays {bad} outside [0, s = {args.execute}]")
    vd = generate_dataset(data_home() / "metaworld", tasks=args.tasks, episodes_per_task=args.demos_per_task,
                          resolution=64, progress=args.progress)
    data_path = str(vd.parent.resolve())
    policies: dict = {}
    runs = {(a, d): [run_cell(args, a, s, d, data_path, policies) for s in args.seeds]
            for d in args.delays for a in args.arms}
    summary = {k: summarize(v) for k, v in runs.items()}
    pairs = {}
    for d in args.delays:
        for a, b in pairs_at(args.arms):
            oa, ob = outcomes(runs[(a, d)]), outcomes(runs[(b, d)])
            keys = sorted(oa)
            pairs[(a, b, d)] = paired_comparison([oa[k] for k in keys], [ob[k] for k in keys])
    text = markdown(summary, pairs, args.delays)
    print(text)
    out = Path(args.out)
    bench.save_json(out / "realtime_study.json", {
        "args": dataclasses.asdict(args),
        "summary": [{"arm": a, "delay": d, **s} for (a, d), s in summary.items()],
        "paired": [{"a": a, "b": b, "delay": d, **p} for (a, b, d), p in pairs.items()]})
    (out / "realtime_study.md").write_text(text)
    plot(out / "realtime_study.png", summary, args.arms, args.delays)
    print(f"results: {out}/realtime_study.json, .md, .png")
    return {"summary": summary, "paired": pairs}


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
