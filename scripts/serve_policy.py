"""Serve a trained checkpoint to openpi clients (websocket + msgpack, openpi's wire format).

    uv run scripts/serve_policy.py --checkpoint checkpoints/pi0_eqm_libero/run1 [--config pi0_eqm_libero] \\
        [--port 8000] [--preset action|paper|bb] [--threshold 1e-2] [--max-iters 10] [--step-size 0.03] \\
        [--momentum 0.3] [--variant nesterov] [--warm-start off|aligned|paper_half] [--executed 5]

``--checkpoint`` is a run directory (its latest committed step), a step directory or an export; the train config is
the one the checkpoint records (``--config`` is then optional, and refused if it does not match; checkpoints saved
before configs were recorded need it). Each reply carries ``actions``, ``policy_timing``, ``server_timing`` and
``solver`` (iterations, final residual, converged, warm_started, new_episode). Per request, a ``decoder_settings``
dict overrides the decoder settings within ``--max-request-iters`` / ``--min-request-threshold``; sending
``{"__control__": "reset"}`` (or ``"__reset__": True`` in an observation) resets the session's warm-start state, and
a new episode is also detected without it (prompt change, time gap, state jump: ``--episodes.*``). The metadata frame
declares ``executed_actions_per_chunk``, ``warm_start`` and ``new_episode_detection``. The port is bound before the
checkpoint loads; ``/healthz`` answers 503 until the warm-up compile is done. The warm-up compiles the decode of each
padded batch size (with and without a real-time prefix) for ``--variant`` and each ``--warm-variants`` entry; a
request for any other solver variant gets an error frame rather than a compile that would stall every client.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

import numpy as np
import tyro

from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.policies.episodes import EpisodeDetection
from pi0_eqm.policies.policy import SERVING_CAPS
from pi0_eqm.policies.policy import padded_batch_sizes
from pi0_eqm.serving.server import MAX_CONNECTIONS
from pi0_eqm.serving.server import MAX_CONNECTIONS_PER_PEER


@dataclasses.dataclass
class Args:
    checkpoint: str  # run dir (latest committed step), step dir or exported dir
    config: str | None = None  # default: the config recorded in the checkpoint
    port: int = 8000
    host: str = "127.0.0.1"  # loopback; 0.0.0.0 serves every interface (then set --api-key)
    # Decoder settings (--preset, --threshold, --max-iters, --step-size, --momentum, --variant, --guard, --warm-start,
    # --executed: actions the client executes per chunk, openpi LIBERO: replan_steps = 5).
    decoder: Annotated[DecoderSettings, tyro.conf.OmitArgPrefixes] = DecoderSettings()
    default_prompt: str | None = None
    image_size: int | None = None  # expected camera size (default: 224 for LIBERO/ALOHA, the model's for Meta-World)
    max_workers: int = 1
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER  # per client IP address (a 64-shard evaluation host)
    idle_timeout: float = 300.0  # seconds without a request before a connection is closed
    max_batch: int = 1  # > 1: requests from different connections are decoded together (fleets, parallel eval)
    max_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_request_iters: int = SERVING_CAPS.max_iters  # per-request cap on expert forwards (the resolved max_iters)
    min_request_threshold: float = SERVING_CAPS.min_threshold  # per-request lower bound on ε (ε <= 0: never stops)
    api_key: str | None = None  # require "Authorization: Api-Key <key>" (openpi's client sends it given api_key)
    episodes: EpisodeDetection = EpisodeDetection()  # new-episode signals (--episodes.gap-s, --episodes.state-jump)
    warm_up: bool = True  # compile before /healthz says ready
    # EqM solver variants compiled at warm-up besides --variant's; a request for a variant not compiled is refused
    # (error frame) so no client waits for another's compile (--no-warm-up: any variant, compiled on first use)
    warm_variants: tuple[str, ...] = ()


def build_server(args: Args):
    from pi0_eqm.policies.policy import RequestCaps
    from pi0_eqm.policies.policy_config import create_trained_policy
    from pi0_eqm.policies.policy_config import resolve_checkpoint
    from pi0_eqm.serving.server import PolicyServer
    from pi0_eqm.serving.server import bind_socket

    cfg, step_dir = resolve_checkpoint(args.checkpoint, args.config)
    spec = cfg.data.spec()
    if spec is None:
        raise ValueError(f"config {cfg.name!r} has no robot (its data is {type(cfg.data).__name__}), so requests "
                         "could not be checked; serve a config whose data names a robot")
    size = args.image_size or spec.image_size or cfg.model.image_resolution[0]
    sock = bind_socket(args.host, args.port)  # a port in use fails here, before the checkpoint is loaded
    try:
        policy = create_trained_policy(cfg, step_dir, settings=args.decoder, default_prompt=args.default_prompt)
        policy.set_caps(RequestCaps(args.max_request_iters, args.min_request_threshold))
        policy.episodes = args.episodes
    except BaseException:
        sock.close()
        raise
    metadata = dict(cfg.policy_metadata or {})
    metadata.update({"config": cfg.name, "decoder": cfg.model.decoder.kind, **policy.serving_metadata(),
                     "max_batch": args.max_batch})
    example = spec.example(np.random.default_rng(0), size, prompt=args.default_prompt or "warm up")
    buckets = padded_batch_sizes(args.max_batch)
    if args.warm_variants and "variant" not in policy.decoder.compiled_fields:
        raise ValueError(f"--warm-variants: the {cfg.model.decoder.kind} decoder has no solver variants")
    also = [{"variant": v} for v in args.warm_variants]
    for overrides in also:
        policy.settings.updated(overrides)  # an unknown variant is refused here, before the warm-up
    warmup = (lambda: policy.warm_up(example, buckets, also=also, refuse_cold=True)) if args.warm_up else None
    return PolicyServer(policy, sock=sock, metadata=metadata, schema=spec.schema(size), max_workers=args.max_workers,
                        max_connections=args.max_connections, max_connections_per_peer=args.max_connections_per_peer,
                        idle_timeout=args.idle_timeout, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                        api_key=args.api_key, warmup=warmup)


def main(args: Args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server = build_server(args)
    logging.getLogger("pi0_eqm").info("serving %s on %s:%d (not ready until the warm-up is done)",
                                      server.metadata.get("config"), args.host, args.port)
    server.serve_forever()


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
