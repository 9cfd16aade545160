"""Random access to a LeRobot dataset's parquet images is bounded per sample: after an episode's first read its
frames come from the memory-mapped frame index, never from the parquet file again."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pi0_eqm.data import lerobot as lerobot_module
from pi0_eqm.data.lerobot import IMAGE_ROW_GROUP_SIZE
from pi0_eqm.data.lerobot import LeRobotDataset
from pi0_eqm.data.lerobot import write_lerobot_dataset

from .conftest import make_episodes


def test_frames_after_the_first_read_do_not_touch_the_parquet_file(lerobot_dir, episodes, tmp_path, monkeypatch):
    ds = LeRobotDataset(lerobot_dir, frame_index_dir=tmp_path / "index")
    first = ds.frame_images(1, 0)  # builds episode 1's index
    np.testing.assert_array_equal(first["observation/image"], episodes[1].steps["observation/image"][0])
    assert len(list((tmp_path / "index").glob("episode_000001-*.arrow"))) == 1

    def no_parquet(*a, **k):
        raise AssertionError("parquet read on a frame-index hit")

    monkeypatch.setattr(lerobot_module.pq, "read_table", no_parquet)
    for frame in np.random.default_rng(0).permutation(15):
        out = ds.frame_images(1, int(frame))
        for key in ("observation/image", "observation/wrist_image"):
            np.testing.assert_array_equal(out[key], episodes[1].steps[key][frame])
    # a second reader (a later run) reuses the index on disk
    again = LeRobotDataset(lerobot_dir, frame_index_dir=tmp_path / "index")
    np.testing.assert_array_equal(again.frame_images(1, 14)["observation/image"],
                                  episodes[1].steps["observation/image"][14])
    with pytest.raises(IndexError, match="out of range"):
        again.frame_images(1, 15)


def test_a_rewritten_episode_gets_a_fresh_index(tmp_path):
    root = write_lerobot_dataset(tmp_path / "ds", make_episodes(), fps=10)
    ds = LeRobotDataset(root, frame_index_dir=tmp_path / "index")
    ds.frame_images(0, 3)
    # replace episode 0's parquet file by one holding episode 2's first 12 frames (other images, same length)
    ep2 = make_episodes()[2]
    steps = {k: v[:12] for k, v in ep2.steps.items()}
    other = write_lerobot_dataset(tmp_path / "other", [type(ep2)(steps, prompt=ep2.prompt)], fps=10)
    parquet = "data/chunk-000/episode_000000.parquet"
    os.replace(other / parquet, root / parquet)
    fresh = LeRobotDataset(root, frame_index_dir=tmp_path / "index")
    np.testing.assert_array_equal(fresh.frame_images(0, 3)["observation/image"], steps["observation/image"][3])
    assert len(list((tmp_path / "index").glob("episode_000000-*.arrow"))) == 2


def test_the_writer_keeps_image_row_groups_small(tmp_path):
    eps = make_episodes(lengths=(IMAGE_ROW_GROUP_SIZE + 30,), prompts=("a task",))
    root = write_lerobot_dataset(tmp_path / "ds", eps, fps=10)
    meta = pq.read_metadata(root / "data" / "chunk-000" / "episode_000000.parquet")
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [IMAGE_ROW_GROUP_SIZE, 30]
