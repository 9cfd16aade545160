"""Generate Meta-World scripted-expert demonstrations as an RLDS dataset (idempotent: reuses a complete one).

    uv run scripts/generate_demos.py --episodes-per-task 10 --resolution 64
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import tyro  # noqa: E402

from pi0_eqm.envs import demos  # noqa: E402
from pi0_eqm.envs.metaworld import DEFAULT_TASKS  # noqa: E402
from pi0_eqm.training.data_config import data_home  # noqa: E402


@dataclasses.dataclass
class Args:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    episodes_per_task: int = 10
    seed: int = 0  # demo seed; evaluation uses a different seed (held-out configurations)
    resolution: int = 64
    max_steps: int = 200
    root: str | None = None  # default: $PI0_DATA_HOME/metaworld (./data/metaworld)
    name: str | None = None
    overwrite: bool = False


def main(args: Args) -> None:
    root = args.root or str(data_home() / "metaworld")
    path = demos.generate_dataset(root, tasks=args.tasks, episodes_per_task=args.episodes_per_task, seed=args.seed,
                                  resolution=args.resolution, max_steps=args.max_steps, name=args.name,
                                  overwrite=args.overwrite)
    print(f"dataset ready at {path}")


if __name__ == "__main__":
    main(tyro.cli(Args))
