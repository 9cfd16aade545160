"""Serve a trained checkpoint to openpi clients (websocket + msgpack, openpi's wire format).

    uv run scripts/serve_policy.py --checkpoint checkpoints/pi0_eqm_libero/run1 [--config pi0_eqm_libero] \\
        [--port 8000] [--preset action|paper|bb] [--threshold 1e-2] [--max-iters 10] [--step-size 0.03] \\
        [--momentum 0.3] [--variant nesterov] [--warm-start off|aligned|paper_half] [--executed 5]

``--checkpoint`` is a run directory (its latest committed step), a step directory or an export; the train config is
the one the checkpoint records (``--config`` is then optional, and refused if it does not match; checkpoints saved
before configs were recorded need it). Each reply carries ``actions``, ``policy_timing``, ``server_timing`` and
``solver`` (iterations, final residual, converged, warm_started). Per request, a ``decoder_settings`` dict overrides the decoder settings; sending
``{"__control__": "reset"}`` (or ``"__reset__": True`` in an observation) resets the session's warm-start state.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

import tyro

from pi0_eqm.decoders.settings import DecoderSettings


@dataclasses.dataclass
class Args:
    checkpoint: str  # run dir (latest committed step), step dir or exported dir
    config: str | None = None  # default: the config recorded in the checkpoint
    port: int = 8000
    host: str = "0.0.0.0"
    # Decoder settings (--preset, --threshold, --max-iters, --step-size, --momentum, --variant, --guard, --warm-start,
    # --executed: actions the client executes per chunk, openpi LIBERO: replan_steps = 5).
    decoder: Annotated[DecoderSettings, tyro.conf.OmitArgPrefixes] = DecoderSettings()
    default_prompt: str | None = None
    image_size: int | None = None  # expected camera size (default: 224 for LIBERO/ALOHA, the model's for Meta-World)
    max_workers: int = 1


def build_server(args: Args):
    from pi0_eqm.policies.policy_config import create_trained_policy
    from pi0_eqm.policies.policy_config import resolve_checkpoint
    from pi0_eqm.serving.server import PolicyServer

    cfg, step_dir = resolve_checkpoint(args.checkpoint, args.config)
    policy = create_trained_policy(cfg, step_dir, settings=args.decoder, default_prompt=args.default_prompt)
    spec = cfg.data.spec()
    size = args.image_size or (spec.image_size if spec is not None else None) or cfg.model.image_resolution[0]
    schema = spec.schema(size) if spec is not None else None
    metadata = dict(cfg.policy_metadata or {})
    metadata.update({"config": cfg.name, "decoder": cfg.model.decoder.kind, "action_horizon": cfg.model.action_horizon})
    return PolicyServer(policy, host=args.host, port=args.port, metadata=metadata, schema=schema,
                        max_workers=args.max_workers)


def main(args: Args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server = build_server(args)
    logging.getLogger("pi0_eqm").info("serving %s on %s:%d", server.metadata.get("config"), args.host, args.port)
    server.serve_forever()


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
