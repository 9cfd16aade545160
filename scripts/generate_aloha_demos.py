"""Generate scripted bimanual demonstrations for the ALOHA simulator (gym-aloha) as a LeRobot dataset in the layout of
``lerobot/aloha_sim_*_scripted`` (idempotent: reuses a complete one). Prints the expert's success rate.

    uv run scripts/generate_aloha_demos.py --task transfer_cube --episodes 50 --resolution 64

Train on it with ``uv run scripts/train.py pi0_eqm_aloha_sim --data.path <printed path>`` (after
``scripts/compute_norm_stats.py`` with the same flags).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal

os.environ.setdefault("MUJOCO_GL", "egl")

from pi0_eqm import cli  # noqa: E402
from pi0_eqm.envs import aloha_scripted  # noqa: E402
from pi0_eqm.training.data_config import data_home  # noqa: E402


@dataclasses.dataclass
class Args:
    task: Literal["transfer_cube", "insertion"] = "transfer_cube"
    episodes: int = 50  # successful episodes to keep
    seed: int = 0  # demo configurations; evaluation uses another seed (held-out poses)
    resolution: int = 64  # the top camera, rendered at the size the model uses
    max_tries: int | None = None  # configurations to try (default 5 × episodes)
    root: str | None = None  # default: $PI0_DATA_HOME/lerobot (./data/lerobot)
    overwrite: bool = False


def main(args: Args) -> None:
    if args.episodes < 1 or not 8 <= args.resolution <= 480:
        raise ValueError(f"need --episodes >= 1 and --resolution in [8, 480], got {args.episodes}, {args.resolution}")
    root = args.root or str(data_home() / "lerobot")
    path = aloha_scripted.generate_aloha_dataset(root, args.task, episodes=args.episodes, seed=args.seed,
                                                 resolution=args.resolution, max_tries=args.max_tries,
                                                 overwrite=args.overwrite)
    expert = json.loads((path / "meta" / "expert.json").read_text())
    print(f"dataset ready at {path}; the expert succeeded on {expert['succeeded']} of "
          f"{expert['configurations_tried']} configurations ({expert['success_rate']:.0%})")


if __name__ == "__main__":
    cli.run(main, Args, user_errors=(RuntimeError,))
