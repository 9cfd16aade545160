"""Load test: serve a policy on loopback and drive it with N concurrent clients × M requests; prints throughput and
latency percentiles (client round trip and server inference).

    uv run scripts/load_test.py --config pi0_eqm_metaworld --checkpoint checkpoints/pi0_eqm_metaworld/main \\
        --clients 4 --requests 25
    uv run scripts/load_test.py --config debug_libero --random-init        # no checkpoint needed (tiny model)

Bounded in count and time; the server binds 127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import numpy as np
import tyro

from pi0_eqm.decoders.settings import DecoderSettings


@dataclasses.dataclass
class Args:
    config: str = "debug_libero"
    checkpoint: str | None = None
    random_init: bool = False  # random params + unit norm stats (measures the serving path, not the policy quality)
    clients: int = 4
    requests: int = 25
    max_workers: int = 1
    max_seconds: float = 300.0
    decoder: Annotated[DecoderSettings, tyro.conf.OmitArgPrefixes] = DecoderSettings()  # --preset --max-iters ... as eval
    out: str | None = None


def _policy(args: Args, cfg):
    settings = args.decoder
    if args.checkpoint:
        from pi0_eqm_experiments.benchmarks.metaworld import load_policy

        return load_policy(cfg, args.checkpoint, settings)
    if not args.random_init:
        raise SystemExit("pass --checkpoint DIR or --random-init")
    import jax

    from pi0_eqm.data.normalize import NormStats
    from pi0_eqm.policies.policy_config import policy_from_params

    d = cfg.model.real_action_dim or cfg.model.action_dim
    spec = cfg.data.spec()
    sd = spec.state_dim if spec is not None else d
    stats = {"state": NormStats(np.zeros(sd), np.ones(sd)), "actions": NormStats(np.zeros(d), np.ones(d))}
    return policy_from_params(cfg, cfg.model.init(jax.random.key(0)), stats, settings=settings)


def main(args: Args) -> dict:
    from pi0_eqm.serving.load import run_load
    from pi0_eqm.serving.server import PolicyServer
    from pi0_eqm.training.config import get_config

    cfg = get_config(args.config)
    spec = cfg.data.spec()
    if spec is None:
        raise ValueError(f"config {args.config!r} has no robot (its data is {type(cfg.data).__name__}); load-test a "
                         "config whose data names a robot")
    size = spec.image_size or cfg.model.image_resolution[0]
    schema = spec.schema(size)
    server = PolicyServer(_policy(args, cfg), host="127.0.0.1", port=0, schema=schema, max_workers=args.max_workers)
    port = server.start()

    def make_obs(client: int, req: int) -> dict:
        return spec.example(np.random.default_rng([client, req]), size, prompt="open the drawer")

    try:
        report = run_load("127.0.0.1", port, make_obs, args.clients, args.requests, max_seconds=args.max_seconds)
    finally:
        server.stop()
    print(json.dumps({k: v for k, v in report.items() if k != "per_client"}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
