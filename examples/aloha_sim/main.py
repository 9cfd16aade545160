"""openpi's ALOHA-sim client loop against a pi0_eqm server: gym-aloha + openpi-client's runtime, unchanged.

The loop is the one of openpi's ``examples/aloha_sim`` (``Runtime`` + ``PolicyAgent`` + ``ActionChunkBroker`` +
``WebsocketClientPolicy``, 50 Hz, the top camera resized with padding to 224 × 224 and sent CHW as ``cam_high``, the
14-d ``agent_pos`` as ``state``); it runs in openpi-client's own environment (numpy < 2), which
``scripts/openpi_client_env.sh`` builds with gym-aloha::

    uv run scripts/serve_policy.py --checkpoint checkpoints/pi0_eqm_aloha_sim_cpu/s42 --port 8000
    $(bash scripts/openpi_client_env.sh) examples/aloha_sim/main.py --port 8000 --episodes 2

It prints one JSON line per episode (steps, the best reward, success = reward 4) and a summary line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from env import AlohaSimEnvironment
from openpi_client import action_chunk_broker
from openpi_client import websocket_client_policy
from openpi_client.runtime import runtime as _runtime
from openpi_client.runtime import subscriber as _subscriber
from openpi_client.runtime.agents import policy_agent


class EpisodeReport(_subscriber.Subscriber):
    """Prints each episode's steps, best reward and success as a JSON line."""

    def __init__(self, env: AlohaSimEnvironment):
        self.env, self.episodes = env, []

    def on_episode_start(self) -> None:
        self.steps, self.t0 = 0, time.monotonic()

    def on_step(self, observation: dict, action: dict) -> None:
        self.steps += 1

    def on_episode_end(self) -> None:
        record = {"episode": len(self.episodes), "steps": self.steps, "reward": self.env.episode_reward,
                  "success": self.env.episode_reward >= 4, "seconds": round(time.monotonic() - self.t0, 2)}
        self.episodes.append(record)
        print(json.dumps(record), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="gym_aloha/AlohaTransferCube-v0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--action-horizon", type=int, default=10, help="actions executed per chunk (openpi: 10)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--max-episode-steps", type=int, default=0, help="0: the task's own limit (gym-aloha: 300)")
    p.add_argument("--max-hz", type=float, default=50, help="openpi's loop runs at 50 Hz; 0: as fast as possible")
    args = p.parse_args()
    env = AlohaSimEnvironment(task=args.task, seed=args.seed)
    report = EpisodeReport(env)
    runtime = _runtime.Runtime(
        environment=env,
        agent=policy_agent.PolicyAgent(policy=action_chunk_broker.ActionChunkBroker(
            policy=websocket_client_policy.WebsocketClientPolicy(host=args.host, port=args.port),
            action_horizon=args.action_horizon)),
        subscribers=[report], max_hz=args.max_hz, num_episodes=args.episodes,
        max_episode_steps=args.max_episode_steps)
    runtime.run()
    wins = sum(e["success"] for e in report.episodes)
    print(json.dumps({"episodes": len(report.episodes), "successes": wins}), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)
    main()
