"""LeRobot reader benchmark: random-access samples/s (shuffled frames, images decoded) on a generated dataset in
``physical-intelligence/libero``'s layout.

    uv run lab/scripts/benchmark_reader.py [--episodes 24 --frames 200 --size 256] [--samples 800] [--threads 2]

The dataset (PNG images in parquet, as the LIBERO dataset stores them: smooth scenes with sensor noise, about the
LIBERO PNG size) is generated once under ``--root`` and reused; ``--dataset`` measures an existing one instead.
Each measured sample is what training reads: a
16-step action chunk, the state and both camera images of a uniformly drawn frame, from ``--threads`` threads
(the loader's ``num_workers``), after every episode's frame index exists (its one-time build is timed
separately). Prints the figures and writes ``--out`` (JSON).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import dataclasses
import json
from pathlib import Path
import time

import numpy as np


@dataclasses.dataclass
class Args:
    root: str | None = None  # default: data/lerobot/benchmark_libero_layout_<episodes>x<frames>_<size>px_noise<noise>
    dataset: str | None = None  # benchmark this LIBERO-layout dataset instead of a generated one
    episodes: int = 24
    frames: int = 200
    size: int = 256
    noise: float = 1.0  # sensor-noise std (gray levels): 1.0 gives ~40 kB PNGs at 256², LIBERO's size
    samples: int = 800
    threads: int = 2
    frame_index_dir: str | None = None  # default: the reader's (~/.cache/pi0_eqm/lerobot_frames/...)
    seed: int = 0
    out: str = "results/benchmark_reader.json"


def _scene(rng: np.random.Generator, frames: int, size: int, noise: float) -> np.ndarray:
    """uint8 [T, size, size, 3]: a slowly drifting low-frequency image plus per-frame noise."""
    coarse = rng.integers(0, 255, (8, 8, 3)).astype(np.float32)
    base = np.kron(coarse, np.ones((size // 8, size // 8, 1), np.float32))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        shifted = np.roll(base, shift=t, axis=1)
        out[t] = np.clip(shifted + rng.normal(0, noise, shifted.shape), 0, 255).astype(np.uint8)
    return out


def make_dataset(args: Args):
    from pi0_eqm.data.episodes import Episode
    from pi0_eqm.data.lerobot import write_lerobot_dataset

    rng = np.random.default_rng(args.seed)

    def episodes():
        for e in range(args.episodes):
            yield Episode({
                "observation/image": _scene(rng, args.frames, args.size, args.noise),
                "observation/wrist_image": _scene(rng, args.frames, args.size, args.noise),
                "observation/state": rng.normal(size=(args.frames, 8)).astype(np.float32),
                "action": rng.uniform(-1, 1, (args.frames, 7)).astype(np.float32),
            }, prompt=f"pick up object {e % 10} and place it in the basket")

    root = args.root or (f"data/lerobot/benchmark_libero_layout_{args.episodes}x{args.frames}_{args.size}px_"
                         f"noise{args.noise:g}")
    return write_lerobot_dataset(root, episodes(), fps=20)


def main(args: Args) -> dict:
    from pi0_eqm.atomic import atomic_write_bytes
    from pi0_eqm.data.chunking import ChunkedDataset
    from pi0_eqm.data.lerobot import LeRobotDataset
    from pi0_eqm.robots import LIBERO

    if args.samples < 1 or args.threads < 1:
        raise ValueError("--samples and --threads must be >= 1")
    root = Path(args.dataset) if args.dataset else make_dataset(args)
    reader = LeRobotDataset(root, frame_index_dir=args.frame_index_dir, **LIBERO.lerobot_keys())
    data = ChunkedDataset(reader, 16)
    start = time.perf_counter()
    for e in range(len(reader)):  # the first read of an episode builds its frame index (once, kept on disk)
        reader.frame_images(e, 0)
    index_s = time.perf_counter() - start
    order = np.random.default_rng(args.seed + 1).permutation(len(data))[: args.samples]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        shapes = {s["observation/image"].shape for s in pool.map(lambda i: data[int(i)], order)}
    wall = time.perf_counter() - start
    episode_mb = sum(p.stat().st_size for p in root.rglob("*.parquet")) / len(reader) / 1e6
    result = {"index_s": index_s, "samples": len(order), "threads": args.threads, "wall_s": wall, "samples_per_s": len(order) / wall,
              "frames": len(data), "episodes": len(reader), "episode_mb": episode_mb, "dataset": str(root),
              "image_shapes": [list(x) for x in sorted(shapes)]}
    atomic_write_bytes(Path(args.out), json.dumps(result, indent=2).encode())
    print(f"frame index: {index_s:.1f} s for {len(reader)} episodes (built once, or found on disk)")
    print(f"{len(order)} shuffled samples from {len(data)} frames ({len(reader)} episodes, {episode_mb:.1f} MB of "
          f"parquet each) with {args.threads} threads: {result['samples_per_s']:.0f} samples/s")
    return result


if __name__ == "__main__":
    from pi0_eqm.cli import run

    run(main, Args)
