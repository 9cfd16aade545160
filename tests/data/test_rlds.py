"""RLDS datasets in TFDS format without TensorFlow: writer, array_record and TFRecord readers, errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pi0_eqm.data.rlds import RldsDataset
from pi0_eqm.data.rlds import find_version_dir
from pi0_eqm.data.rlds import write_rlds_dataset
from pi0_eqm.data.tfrecord import write_tfrecord

from .conftest import assert_episodes_equal
from .conftest import make_episodes


def test_round_trip(rlds_dir, episodes):
    assert rlds_dir.name == "1.0.0" and rlds_dir.parent.name == "toy_libero"
    assert sorted(os.listdir(rlds_dir.parent)) == ["1.0.0"]  # no temp dirs left behind
    ds = RldsDataset(rlds_dir)
    assert len(ds) == 3
    np.testing.assert_array_equal(ds.episode_lengths(), [12, 15, 18])
    for i, ep in enumerate(episodes):
        got = ds.episode(i)
        assert_episodes_equal(got, ep)
        assert got.metadata == ep.metadata
        low = ds.episode(i, images=False)
        assert set(low.steps) == {"observation/state", "action"}
    np.testing.assert_array_equal(ds.frame_images(1, 7)["observation/wrist_image"], episodes[1].steps["observation/wrist_image"][7])


def test_libero_rlds_structure(rlds_dir):
    """The written dataset mirrors modified_libero_rlds and is readable with plain tfds APIs."""
    import tensorflow_datasets as tfds

    features = tfds.builder_from_directory(str(rlds_dir)).info.features
    steps = features["steps"].feature
    assert set(steps.keys()) == {"observation", "action", "language_instruction", "is_first", "is_last", "is_terminal", "reward", "discount"}
    assert set(steps["observation"].keys()) == {"image", "wrist_image", "state"}
    assert isinstance(steps["observation"]["image"], tfds.features.Image)
    assert steps["observation"]["image"].shape == (32, 32, 3)
    assert steps["observation"]["state"].shape == (8,) and steps["action"].np_dtype == np.float32
    assert set(features["episode_metadata"].keys()) == {"file_path", "metadata_json"}

    src = tfds.data_source("toy_libero", data_dir=str(rlds_dir.parent.parent), split="train")
    assert len(src) == 3
    ep = src[2]
    first, last = ep["steps"][0], ep["steps"][len(ep["steps"]) - 1]
    assert first["is_first"] and not first["is_last"] and last["is_last"] and last["is_terminal"]
    assert last["reward"] == 1.0 and first["reward"] == 0.0
    assert first["language_instruction"] == b"pick up the red block"
    assert first["observation"]["image"].shape == (32, 32, 3)
    assert ep["episode_metadata"]["file_path"] == b"/demos/episode_2.hdf5"


def test_idempotent_and_overwrite(tmp_path, episodes):
    path = write_rlds_dataset(tmp_path, "demo", episodes[:2])
    mtime = (path / "dataset_info.json").stat().st_mtime_ns

    def explode():
        raise AssertionError("episodes must not be consumed when the dataset exists")
        yield

    assert write_rlds_dataset(tmp_path, "demo", explode()) == path
    assert (path / "dataset_info.json").stat().st_mtime_ns == mtime
    write_rlds_dataset(tmp_path, "demo", episodes, overwrite=True)
    assert len(RldsDataset(path)) == 3
    assert sorted(os.listdir(path.parent)) == ["1.0.0"]


def test_failed_write_leaves_nothing_visible(tmp_path, episodes):
    def failing():
        yield episodes[0]
        raise RuntimeError("simulated crash while converting")

    with pytest.raises(RuntimeError, match="simulated crash"):
        write_rlds_dataset(tmp_path, "demo", failing())
    assert not (tmp_path / "demo" / "1.0.0").exists()
    assert os.listdir(tmp_path / "demo") == []

    # A failed overwrite keeps the previous complete dataset intact.
    path = write_rlds_dataset(tmp_path, "demo", episodes[:2])
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_rlds_dataset(tmp_path, "demo", failing(), overwrite=True)
    assert len(RldsDataset(path)) == 2
    assert sorted(os.listdir(tmp_path / "demo")) == ["1.0.0"]


def test_killed_writer_leaves_no_visible_dataset(tmp_path):
    """SIGKILL in the middle of writing: no dataset appears, and a later write succeeds."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(__file__)))!r})
        from tests.data.conftest import make_episodes
        from pi0_eqm.data.rlds import write_rlds_dataset
        def episodes():
            eps = make_episodes()
            yield eps[0]
            yield eps[1]
            os.kill(os.getpid(), signal.SIGKILL)
        write_rlds_dataset({str(tmp_path)!r}, "demo", episodes())
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "demo" / "1.0.0").exists()
    assert all(name.startswith(".") for name in os.listdir(tmp_path / "demo"))  # only the hidden scratch dir
    with pytest.raises(FileNotFoundError):
        RldsDataset(tmp_path / "demo")
    path = write_rlds_dataset(tmp_path, "demo", make_episodes())
    assert len(RldsDataset(tmp_path / "demo")) == 3 and path == find_version_dir(tmp_path / "demo")


def test_rejects_inconsistent_episodes(tmp_path, episodes):
    other = make_episodes(lengths=(5,), prompts=("x",))[0]
    bad = type(other)(steps={**other.steps, "observation/state": other.steps["observation/state"][:, :6]}, prompt="x")
    with pytest.raises(ValueError, match=r"episode 1: step key 'observation/state' is float32 \(6,\) per step"):
        write_rlds_dataset(tmp_path, "demo", [episodes[0], bad])
    with pytest.raises(ValueError, match="snake_case"):
        write_rlds_dataset(tmp_path, "Bad-Name", episodes)
    with pytest.raises(ValueError, match="no episodes"):
        write_rlds_dataset(tmp_path, "demo", [])
    assert not (tmp_path / "demo" / "1.0.0").exists()


def test_missing_dataset_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*modified_libero_rlds.*write_rlds_dataset"):
        RldsDataset(tmp_path / "nowhere")
    (tmp_path / "modified_libero_rlds" / "libero_10_no_noops").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"contains the directories \['libero_10_no_noops'\]"):
        RldsDataset(tmp_path / "modified_libero_rlds")


def test_wrong_keys_error(rlds_dir):
    with pytest.raises(KeyError, match=r"state_key='observation/joint_state' is not a step feature; available step features: \["):
        RldsDataset(rlds_dir, state_key="observation/joint_state")
    with pytest.raises(TypeError, match="is a Tensor, not an Image"):
        RldsDataset(rlds_dir, image_keys={"observation/image": "observation/state"})


def test_key_mapping(rlds_dir, episodes):
    ds = RldsDataset(rlds_dir, image_keys={"cam": "observation/wrist_image"}, action_key="observation/state")
    ep = ds.episode(0)
    assert set(ep.steps) == {"cam", "observation/state", "action"}
    np.testing.assert_array_equal(ep.steps["action"], episodes[0].steps["observation/state"])
    np.testing.assert_array_equal(ep.steps["cam"], episodes[0].steps["observation/wrist_image"])


def to_tfrecord_dataset(src_dir, dst_dir, *, shard_lengths=(2, 1), keep_file_format=True):
    """Re-package an array_record TFDS dataset as TFRecord shards, as TF-built RLDS downloads are laid out."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    info = json.loads((src_dir / "dataset_info.json").read_text())
    name = info["name"]
    files = sorted(str(p) for p in src_dir.glob(f"{name}-train.array_record-*"))
    source = ArrayRecordDataSource(files)
    records = [bytes(source[i]) for i in range(len(source))]
    assert sum(shard_lengths) == len(records)
    dst_dir.mkdir(parents=True)
    start = 0
    for i, n in enumerate(shard_lengths):
        write_tfrecord(dst_dir / f"{name}-train.tfrecord-{i:05d}-of-{len(shard_lengths):05d}", records[start : start + n])
        start += n
    if keep_file_format:
        info["fileFormat"] = "tfrecord"
    else:
        info.pop("fileFormat", None)
    split = info["splits"][0]
    split["shardLengths"] = [str(n) for n in shard_lengths]
    split["numBytes"] = str(sum(os.path.getsize(p) for p in dst_dir.iterdir()))
    (dst_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    shutil.copy(src_dir / "features.json", dst_dir / "features.json")
    return dst_dir


@pytest.mark.parametrize("keep_file_format", [True, False])
def test_tfrecord_rlds_reader(tmp_path, rlds_dir, episodes, keep_file_format):
    path = to_tfrecord_dataset(rlds_dir, tmp_path / "toy_libero" / "1.0.0", keep_file_format=keep_file_format)
    ds = RldsDataset(tmp_path / "toy_libero")  # dataset dir: picks the version
    assert len(ds) == 3
    np.testing.assert_array_equal(ds.episode_lengths(), [12, 15, 18])  # no metadata.json: scanned
    for i in (2, 0, 1):
        assert_episodes_equal(ds.episode(i), episodes[i])
    np.testing.assert_array_equal(ds.frame_images(2, 17)["observation/image"], episodes[2].steps["observation/image"][17])

    shard = path / "toy_libero-train.tfrecord-00000-of-00002"
    raw = bytearray(shard.read_bytes())
    raw[12 + 100] ^= 0xFF  # inside the payload of record 0 = episode 0
    shard.write_bytes(bytes(raw))
    corrupted = RldsDataset(path)
    with pytest.raises(ValueError, match="payload CRC mismatch in record 0"):
        corrupted.episode(0)
    assert_episodes_equal(corrupted.episode(2), episodes[2])
