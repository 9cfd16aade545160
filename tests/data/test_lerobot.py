"""LeRobot v2.1 local datasets: writer layout, parquet-image and mp4-video readers, errors."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pi0_eqm.data.lerobot import LeRobotDataset
from pi0_eqm.data.lerobot import write_lerobot_dataset

from .conftest import assert_episodes_equal
from .conftest import make_episodes


def test_layout_and_metadata(lerobot_dir):
    info = json.loads((lerobot_dir / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1"
    assert (info["fps"], info["total_episodes"], info["total_frames"], info["total_tasks"]) == (10, 3, 45, 2)
    assert info["chunks_size"] == 1000 and info["total_chunks"] == 1 and info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert info["video_path"] is None and info["total_videos"] == 0
    feats = info["features"]
    assert feats["image"] == {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channel"]}
    assert feats["state"]["dtype"] == "float32" and feats["state"]["shape"] == [8]
    assert feats["actions"]["shape"] == [7]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[key]["shape"] == [1]

    lines = lambda f: [json.loads(x) for x in (lerobot_dir / "meta" / f).read_text().splitlines()]
    assert lines("episodes.jsonl")[1] == {"episode_index": 1, "tasks": ["open the drawer"], "length": 15}
    assert lines("tasks.jsonl") == [{"task_index": 0, "task": "pick up the red block"}, {"task_index": 1, "task": "open the drawer"}]
    stats = lines("episodes_stats.jsonl")[0]["stats"]
    assert np.array(stats["image"]["mean"]).shape == (3, 1, 1) and stats["actions"]["count"] == [12]

    table = pq.read_table(lerobot_dir / "data" / "chunk-000" / "episode_000002.parquet")
    assert table.num_rows == 18
    assert table.column("index").to_pylist()[0] == 27  # global frame index continues across episodes
    assert table.column("task_index").to_pylist() == [0] * 18
    assert table.schema.field("image").type.names == ["bytes", "path"]
    np.testing.assert_allclose(table.column("timestamp").to_numpy(), np.arange(18) / 10, rtol=1e-6)


def test_parquet_image_round_trip(lerobot_dir, episodes):
    ds = LeRobotDataset(lerobot_dir)
    assert len(ds) == 3 and ds.image_keys == ("observation/image", "observation/wrist_image")
    np.testing.assert_array_equal(ds.episode_lengths(), [12, 15, 18])
    for i, ep in enumerate(episodes):
        assert_episodes_equal(ds.episode(i), ep)
    np.testing.assert_array_equal(ds.frame_images(2, 9)["observation/image"], episodes[2].steps["observation/image"][9])
    assert set(ds.episode(0, images=False).steps) == {"observation/state", "action"}


@pytest.mark.parametrize("codec", ["libsvtav1", "libx264"])
def test_video_round_trip(tmp_path, lerobot_video_dir, episodes, codec):
    root = lerobot_video_dir if codec == "libsvtav1" else write_lerobot_dataset(tmp_path / "ds", episodes, fps=10, video=True, codec=codec)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"]["image"]["dtype"] == "video"
    assert info["features"]["image"]["info"]["video.codec"] == {"libsvtav1": "av1", "libx264": "h264"}[codec]
    assert info["total_videos"] == 6
    assert (root / "videos" / "chunk-000" / "wrist_image" / "episode_000001.mp4").is_file()
    ds = LeRobotDataset(root)
    for i, ep in enumerate(episodes):
        assert_episodes_equal(ds.episode(i), ep, image_atol=3.0)  # lossy yuv420p
    # Random access (seek + decode) yields exactly the frame sequential decoding yields at that index, and the
    # decoded brightness follows the originals (frames differ by 4 gray levels).
    full = ds.episode(2).steps["observation/image"]
    for t in (0, 7, 17, 3, 16):
        np.testing.assert_array_equal(ds.frame_images(2, t)["observation/image"], full[t])
    deviation = full.reshape(18, -1).mean(axis=1) - episodes[2].steps["observation/image"].reshape(18, -1).mean(axis=1)
    assert np.all(np.abs(deviation - np.median(deviation)) < 2.0), deviation  # an off-by-one frame would be off by 4


def test_idempotent_and_atomic(tmp_path, episodes):
    root = write_lerobot_dataset(tmp_path / "ds", episodes[:2], fps=10)
    assert write_lerobot_dataset(tmp_path / "ds", iter(()), fps=10) == root  # existing complete dataset is reused
    assert LeRobotDataset(root).episode_lengths().tolist() == [12, 15]

    def failing():
        yield episodes[0]
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        write_lerobot_dataset(tmp_path / "ds", failing(), fps=10, overwrite=True)
    assert LeRobotDataset(root).episode_lengths().tolist() == [12, 15]  # old dataset intact
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_lerobot_dataset(tmp_path / "new", failing(), fps=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing half-written, no temp dirs

    write_lerobot_dataset(tmp_path / "ds", episodes, fps=10, overwrite=True)
    assert len(LeRobotDataset(root)) == 3


def test_custom_names(tmp_path, episodes):
    root = write_lerobot_dataset(
        tmp_path / "ds", episodes, fps=10,
        names={"observation/image": "observation.images.base", "observation/wrist_image": "observation.images.wrist",
               "observation/state": "observation.state", "action": "action"},
    )  # fmt: skip
    ds = LeRobotDataset(
        root, image_keys={"observation/image": "observation.images.base"}, state_key="observation.state", action_key="action"
    )
    ep = ds.episode(1)
    assert set(ep.steps) == {"observation/image", "observation/state", "action"}
    np.testing.assert_array_equal(ep.steps["action"], episodes[1].steps["action"])


def test_errors(tmp_path, lerobot_dir):
    with pytest.raises(FileNotFoundError, match=r"No LeRobot dataset at .*info.json does not exist.*physical-intelligence/libero"):
        LeRobotDataset(tmp_path / "missing")
    with pytest.raises(KeyError, match=r"state_key='observation.state' is not a feature; available features: \["):
        LeRobotDataset(lerobot_dir, state_key="observation.state")
    with pytest.raises(TypeError, match="has dtype 'float32', not image/video"):
        LeRobotDataset(lerobot_dir, image_keys={"observation/image": "state"})

    root = write_lerobot_dataset(tmp_path / "v3", make_episodes(lengths=(4,), prompts=("p",)), fps=10)
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v3.0"}))
    with pytest.raises(ValueError, match="codebase_version 'v3.0' is not supported"):
        LeRobotDataset(root)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "data" / "chunk-000" / "episode_000000.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="episode 0: parquet file .* is missing"):
        LeRobotDataset(root).episode(0)


def test_chunked_layout_and_inconsistent_episodes(tmp_path, episodes):
    root = write_lerobot_dataset(tmp_path / "ds", episodes, fps=10, chunks_size=2)
    assert (root / "data" / "chunk-001" / "episode_000002.parquet").is_file()
    assert json.loads((root / "meta" / "info.json").read_text())["total_chunks"] == 2
    assert_episodes_equal(LeRobotDataset(root).episode(2), episodes[2])

    short = make_episodes(lengths=(4,), prompts=("p",))[0]
    bad = type(short)(steps={**short.steps, "action": short.steps["action"][:, :6]}, prompt="p")
    with pytest.raises(ValueError, match="episode 1 has step dtypes/shapes .* unlike episode 0"):
        write_lerobot_dataset(tmp_path / "bad", [episodes[0], bad], fps=10)
    assert not (tmp_path / "bad").exists()
