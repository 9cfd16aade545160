"""A vla-eval model server (allenai's ``vla-eval`` harness, PyPI, Apache-2.0) running a pi0_eqm checkpoint.

    uv sync --extra vla-eval   # the optional extra (vla-eval 0.8.0, locked beside the project's deps)
    uv run --extra vla-eval examples/vla_eval/pi0_eqm_server.py --args.checkpoint checkpoints/<config>/<run> --port 8001

The harness's simulator shards connect over its own websocket protocol (HELLO / EPISODE_START / OBSERVATION /
ACTION); its ``PredictModelServer`` collects observations from concurrent shards into batches (``max_batch_size``,
``max_wait_time``) and calls ``predict_batch``, which runs the policy's four stages once for the whole batch
(``Policy.infer_batch``, one session per shard connection). ``EPISODE_START`` is the only new-episode signal: the
first observation of each episode resets its session's warm start, and the policy's guesses (prompt change, time
gap, state jump) are off. An observation becomes the openpi request of the
checkpoint's robot: the harness's images in order fill the robot's cameras (resized with padding to the served
size), ``states`` (or ``state``) the state, ``task_description`` the prompt. The harness executes ``chunk_size``
actions of each chunk, which is also the policy's ``executed`` setting. Before the runner listens, the decode is
compiled for every padded batch size up to ``max_batch_size`` (``warm_up=False`` skips it). A sharded LIBERO
evaluation against it: ``examples/vla_eval/run_libero.py``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

try:
    from vla_eval.model_servers.predict import PredictModelServer
    from vla_eval.specs import IMAGE_RGB
    from vla_eval.specs import LANGUAGE
    from vla_eval.specs import RAW
except ModuleNotFoundError as e:
    if __name__ != "__main__" or e.name is None or not e.name.startswith("vla_eval"):
        raise
    print(f"error: this server needs allenai's vla-eval harness ({e.name} is not installed); install the optional "
          "extra with `uv sync --extra vla-eval` and run it with `uv run --extra vla-eval "
          "examples/vla_eval/pi0_eqm_server.py ...`", file=sys.stderr)
    sys.exit(2)

from pi0_eqm.data.transforms import resize_with_pad
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.policies.episodes import EpisodeDetection
from pi0_eqm.policies.policy import padded_batch_sizes
from pi0_eqm.policies.policy_config import create_trained_policy
from pi0_eqm.policies.policy_config import resolve_checkpoint


class Pi0EqmModelServer(PredictModelServer):
    def __init__(self, checkpoint: str, config: str | None = None, *, chunk_size: int = 5, max_batch_size: int = 8,
                 max_wait_time: float = 0.01, warm_start: str = "off", image_size: int | None = None,
                 warm_up: bool = True, **kwargs: Any) -> None:
        super().__init__(chunk_size=chunk_size, max_batch_size=max_batch_size, max_wait_time=max_wait_time, **kwargs)
        cfg, step_dir = resolve_checkpoint(checkpoint, config)
        self.spec = cfg.data.spec()
        if self.spec is None:
            raise ValueError(f"config {cfg.name!r} has no robot; serve a config whose data names a robot")
        self.size = image_size or self.spec.image_size or cfg.model.image_resolution[0]
        settings = DecoderSettings(warm_start=warm_start, executed=chunk_size)
        self.policy = create_trained_policy(cfg, step_dir, settings=settings)
        # The harness says when an episode starts (EPISODE_START): no guessing from prompts, time gaps (a slow
        # simulator's 11-16 s steps each looked like a new episode) or state jumps.
        self.policy.episodes = EpisodeDetection(prompt_change=False, gap_s=None, gap_factor=None, state_jump=None)
        if warm_up:  # the harness's runner listens only after this: no shard's first step waits for a compile
            example = self.spec.example(np.random.default_rng(0), self.size, prompt="warm up")
            self.policy.warm_up(example, padded_batch_sizes(max_batch_size))

    def get_observation_params(self) -> dict[str, Any]:
        return {"send_wrist_image": len(self.spec.cameras) > 1, "send_state": True}

    def get_action_spec(self):
        return {"actions": RAW}

    def get_observation_spec(self):
        return {"image": IMAGE_RGB, "state": RAW, "language": LANGUAGE}

    def request(self, obs: dict) -> dict:
        """The openpi request of the served robot for one harness observation."""
        images = obs.get("images") or {}
        frames = list(images.values()) if isinstance(images, dict) else list(images)
        out: dict[str, Any] = {}
        for i, cam in enumerate(self.spec.cameras):
            img = np.asarray(frames[i], np.uint8) if i < len(frames) else None
            if img is None:
                if cam.required:
                    raise ValueError(f"the harness sent {len(frames)} image(s); camera {cam.sample_key!r} needs one")
                continue
            node = out
            for part in cam.key[:-1]:
                node = node.setdefault(part, {})
            node[cam.key[-1]] = resize_with_pad(img, self.size, self.size)
        state = np.asarray(obs.get("states", obs.get("state", np.zeros(self.spec.state_dim))), np.float32)
        node = out
        for part in self.spec.state_key[:-1]:
            node = node.setdefault(part, {})
        node[self.spec.state_key[-1]] = state.reshape(-1)[: self.spec.state_dim]
        out["prompt"] = str(obs.get("task_description", ""))
        return out

    def predict_batch(self, obs_batch, ctx_batch):
        for ctx in ctx_batch:
            if ctx.is_first:
                self.policy.reset(ctx.session_id)
        results = self.policy.infer_batch([(self.request(o), c.session_id) for o, c in zip(obs_batch, ctx_batch,
                                                                                         strict=True)])
        for r in results:
            if isinstance(r, Exception):
                raise r
        return [{"actions": r["actions"]} for r in results]


if __name__ == "__main__":
    from vla_eval.model_servers.serve import run_server

    run_server(Pi0EqmModelServer)
