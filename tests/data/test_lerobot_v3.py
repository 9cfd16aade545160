"""LeRobot v3.0: our writer makes LeRobot 0.4's layout, and the reader gives back the episodes (parquet images and
multi-episode videos), frame by frame too."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.lerobot_v3 import LeRobotV3Dataset
from pi0_eqm.data.lerobot_v3 import write_lerobot_v3_dataset
from pi0_eqm.data.validation import validate_dataset

from .conftest import assert_episodes_equal
from .conftest import make_episodes

# The episode-table columns LeRobot 0.4 writes for a dataset with these features (lerobot/datasets/lerobot_dataset.py).
_EPISODE_COLUMNS = {"episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                    "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index"}


def test_layout_is_lerobot_0_4s(tmp_path, episodes):
    root = write_lerobot_v3_dataset(tmp_path / "ds", episodes, fps=10)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/info.json",
                     "meta/stats.json", "meta/tasks.parquet"]
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == len(episodes)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["total_frames"] == sum(len(e) for e in episodes)
    table = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    assert _EPISODE_COLUMNS <= set(table.column_names)
    assert any(c.startswith("stats/actions/") for c in table.column_names)
    ends = table["dataset_to_index"].to_pylist()
    assert table["dataset_from_index"].to_pylist() == [0, *ends[:-1]]  # global frame indices, back to back
    tasks = pq.read_table(root / "meta" / "tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]  # pandas' index
    data = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet", columns=["episode_index", "index"])
    assert data["index"].to_pylist() == list(range(info["total_frames"]))


def test_round_trip_with_parquet_images(tmp_path, episodes):
    ds = LeRobotV3Dataset(write_lerobot_v3_dataset(tmp_path / "ds", episodes, fps=10))
    assert len(ds) == len(episodes) and ds.episode_lengths().tolist() == [len(e) for e in episodes]
    for i, ep in enumerate(episodes):
        assert_episodes_equal(ds.episode(i), ep)
    for i, t in ((0, 0), (2, 9), (1, len(episodes[1]) - 1)):
        for key, image in ds.frame_images(i, t).items():
            np.testing.assert_array_equal(image, episodes[i].steps[key][t])
    data = ChunkedDataset(ds, 4)
    validate_dataset(data, state_dim=episodes[0].steps["observation/state"].shape[1],
                     action_dim=episodes[0].steps["action"].shape[1], image_keys=ds.image_keys, where="v3")


@pytest.mark.slow
def test_round_trip_with_multi_episode_videos(tmp_path):
    """Every episode's frames are found at its offset in the shared video file: frame t of episode i is a flat gray
    of level 40 + 60 i + 3 t, so a wrong offset shows as a wrong level."""
    episodes = []
    for i, ep in enumerate(make_episodes()):
        levels = (40 + 60 * i + 3 * np.arange(len(ep))).astype(np.uint8)
        images = {k: np.broadcast_to(levels[:, None, None, None], v.shape).copy()
                  for k, v in ep.steps.items() if v.dtype == np.uint8}
        episodes.append(dataclasses.replace(ep, steps={**ep.steps, **images}))
    root = write_lerobot_v3_dataset(tmp_path / "ds", episodes, fps=10, video=True, codec="libx264")
    assert (root / "videos" / "image" / "chunk-000" / "file-000.mp4").is_file()
    ds = LeRobotV3Dataset(root)
    for i, ep in enumerate(episodes):
        assert_episodes_equal(ds.episode(i), ep, image_atol=2.0)  # lossy yuv420p
        for t in (0, len(ep) // 2, len(ep) - 1):
            level = float(ds.frame_images(i, t)["observation/wrist_image"].mean())
            assert abs(level - (40 + 60 * i + 3 * t)) < 1.5, (i, t, level)


def test_v2_datasets_are_refused_with_a_pointer(tmp_path, lerobot_dir):
    with pytest.raises(ValueError, match="not v3.x; read v2.x datasets with pi0_eqm.data.lerobot.LeRobotDataset"):
        LeRobotV3Dataset(lerobot_dir)


def test_the_lerobot_data_config_opens_v3_datasets(tmp_path, episodes):
    from pi0_eqm.training.config import get_config

    root = write_lerobot_v3_dataset(tmp_path / "ds", episodes, fps=10)
    data = dataclasses.replace(get_config("debug_libero").data, path=str(root))
    source = data.open_source()
    assert isinstance(source, LeRobotV3Dataset) and len(source) == len(episodes)
    assert_episodes_equal(source.episode(1), episodes[1])
