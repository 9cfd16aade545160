"""Local LeRobot v3.0 datasets (LeRobot 0.4's layout), read as the same :class:`Episode` source as v2.x.

Layout (several episodes per data and video file; the episode table says where each one is)::

    meta/info.json       codebase_version "v3.0", fps, features, data_path / video_path templates, totals
    meta/tasks.parquet   one row per task: the task string (the pandas index) and "task_index"
    meta/episodes/chunk-000/file-000.parquet
                         per episode: episode_index, tasks, length, data/chunk_index, data/file_index,
                         dataset_from_index, dataset_to_index (global frame indices, end exclusive),
                         videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp},
                         meta/episodes/{chunk_index, file_index}, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet             the frames of many episodes (column "index" = global frame index)
    videos/<key>/chunk-000/file-000.mp4         many episodes' frames back to back (features of dtype "video")

An episode's rows are those of its data file whose ``index`` is in ``[dataset_from_index, dataset_to_index)``; its
video frames are at ``from_timestamp + timestamp``. Parquet images are ``{"bytes", "path"}`` structs (PNG); one
frame's images are read from the row group that holds it. :func:`write_lerobot_v3_dataset` writes this layout
(one data file, one episode file, one video file per camera) for tests and conversions.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pi0_eqm.atomic import atomic_directory
from pi0_eqm.data import _video
from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import STATE_KEY
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.episodes import check_index
from pi0_eqm.data.episodes import decode_image
from pi0_eqm.data.episodes import encode_png
from pi0_eqm.data.episodes import is_image_array
from pi0_eqm.data.lerobot import LIBERO_LEROBOT_IMAGE_KEYS
from pi0_eqm.data.lerobot import LIBERO_LEROBOT_NAMES
from pi0_eqm.errors import FeatureNotFoundError

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
_INDEX_FEATURES = (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
                   ("task_index", "int64"))
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _to_numpy(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    arr = column.combine_chunks()
    n = len(arr)
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    return values.reshape((n,) if tuple(shape) == (1,) else (n, *shape))


def _task_strings(table: pa.Table) -> dict[int, str]:
    """``{task_index: task}`` of ``meta/tasks.parquet`` (the task is pandas' index column)."""
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    names = [c for c in meta.get("index_columns", []) if isinstance(c, str)] + ["task", "__index_level_0__"]
    column = next((c for c in names if c in table.column_names), None)
    if column is None or "task_index" not in table.column_names:
        raise ValueError(f"{TASKS_PATH}: expected the task strings (pandas index) and 'task_index', got "
                         f"{table.column_names}")
    return dict(zip(table["task_index"].to_pylist(), table[column].to_pylist(), strict=True))


def is_lerobot_v3(root: str | Path) -> bool:
    """Whether ``root/meta/info.json`` declares a v3.x dataset."""
    info = Path(root).expanduser() / "meta" / "info.json"
    try:
        return str(json.loads(info.read_text()).get("codebase_version", "")).startswith("v3.")
    except (OSError, ValueError, AttributeError):
        return False


class LeRobotV3Dataset:
    """Random access to a local LeRobot v3.0 dataset as canonical :class:`Episode` objects (the arguments of
    :class:`pi0_eqm.data.lerobot.LeRobotDataset`)."""

    def __init__(self, root: str | Path, *, image_keys: Mapping[str, str] = LIBERO_LEROBOT_IMAGE_KEYS,
                 state_key: str = "state", action_key: str = "actions"):
        self.root = Path(root).expanduser()
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"No LeRobot dataset at {self.root}: {info_path} does not exist")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        if not str(self.info.get("codebase_version", "")).startswith("v3."):
            raise ValueError(f"{info_path}: codebase_version {self.info.get('codebase_version')!r} is not v3.x; "
                             "read v2.x datasets with pi0_eqm.data.lerobot.LeRobotDataset")
        self.fps = float(self.info["fps"])
        self._features: dict[str, dict] = self.info["features"]
        self._image_map, self._state_key, self._action_key = dict(image_keys), state_key, action_key
        for name in (*self._image_map.values(), state_key, action_key):
            if name not in self._features:
                raise FeatureNotFoundError(f"{info_path}: {name!r} is not a feature; available features: {sorted(self._features)}")
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{self.root}/meta/episodes/ holds no episode files")
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
        rows = table.to_pylist()
        self._episodes = sorted(rows, key=lambda r: r["episode_index"])
        self._tasks = _task_strings(pq.read_table(self.root / TASKS_PATH))

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(self._image_map)

    def __len__(self) -> int:
        return len(self._episodes)

    def episode_lengths(self) -> np.ndarray:
        return np.array([int(r["length"]) for r in self._episodes], dtype=np.int64)

    def _data_file(self, row: Mapping) -> Path:
        return self.root / self.info.get("data_path", DATA_PATH).format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"]))

    @functools.lru_cache(maxsize=8)  # noqa: B019 - one dataset object per run; the cache holds a few files' columns
    def _file_low_dim(self, path: Path) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} is missing (incomplete download?)")
        names = [self._state_key, self._action_key, "index", "timestamp", "task_index"]
        table = pq.read_table(path, columns=names)
        shape = lambda n: tuple(self._features[n]["shape"])  # noqa: E731
        return {n: _to_numpy(table[n], shape(n) if n in (self._state_key, self._action_key) else (1,)) for n in names}

    def _rows(self, index: int) -> tuple[Mapping, Path, np.ndarray]:
        """The episode's table row, its data file and the positions of its frames in that file."""
        row = self._episodes[check_index(index, len(self))]
        path = self._data_file(row)
        cols = self._file_low_dim(path)
        positions = np.flatnonzero((cols["index"] >= row["dataset_from_index"]) & (cols["index"] < row["dataset_to_index"]))
        if len(positions) != int(row["length"]):
            raise ValueError(f"episode {row['episode_index']}: {len(positions)} frames in {path}, the episode table "
                             f"says {row['length']}")
        return row, path, positions

    def _low_dim(self, index: int) -> tuple[dict[str, np.ndarray], str, Mapping, np.ndarray]:
        row, path, positions = self._rows(index)
        cols = self._file_low_dim(path)
        steps = {STATE_KEY: cols[self._state_key][positions], ACTION_KEY: cols[self._action_key][positions]}
        prompt = self._tasks.get(int(cols["task_index"][positions[0]]), (row.get("tasks") or [""])[0])
        return steps, prompt, row, cols["timestamp"][positions]

    def _parquet_image(self, path: Path, name: str, position: int) -> bytes:
        file = pq.ParquetFile(path)
        start = 0
        for group in range(file.num_row_groups):
            rows = file.metadata.row_group(group).num_rows
            if position < start + rows:
                value = file.read_row_group(group, columns=[name])[name][position - start].as_py()
                if isinstance(value, dict) and value.get("bytes"):
                    return value["bytes"]
                if isinstance(value, dict) and value.get("path"):
                    return (self.root / value["path"]).read_bytes()
                raise ValueError(f"{path}: image column {name!r} row {position} holds no image bytes")
            start += rows
        raise IndexError(f"{path}: row {position} out of range")

    def _video(self, row: Mapping, name: str, timestamps: np.ndarray) -> np.ndarray:
        path = self.root / self.info["video_path"].format(
            video_key=name, chunk_index=int(row[f"videos/{name}/chunk_index"]),
            file_index=int(row[f"videos/{name}/file_index"]))
        start = float(row[f"videos/{name}/from_timestamp"])
        return _video.decode_video(path, [start + float(t) for t in timestamps], tolerance_s=0.4 / self.fps)

    def episode(self, index: int, *, images: bool = True) -> Episode:
        low, prompt, row, timestamps = self._low_dim(index)
        steps = dict(low)
        if images:
            _, path, positions = self._rows(index)
            for key, name in self._image_map.items():
                if self._features[name]["dtype"] == "video":
                    steps[key] = self._video(row, name, timestamps)
                else:
                    column = pq.read_table(path, columns=[name])[name]
                    steps[key] = np.stack([decode_image(column[int(p)].as_py()["bytes"]) for p in positions])
        return Episode(steps=steps, prompt=prompt, metadata={"episode_index": int(row["episode_index"])})

    def frame_images(self, index: int, frame: int) -> dict[str, np.ndarray]:
        _, _, row, timestamps = self._low_dim(index)
        _, path, positions = self._rows(index)
        out = {}
        for key, name in self._image_map.items():
            if self._features[name]["dtype"] == "video":
                out[key] = self._video(row, name, timestamps[frame:frame + 1])[0]
            else:
                out[key] = decode_image(self._parquet_image(path, name, int(positions[frame])))
        return out


# --------------------------------------------------------------------------------------------------- writing


def _feature(arr: np.ndarray, *, image: bool, video: bool, fps: float, codec: str) -> dict:
    if not image:
        return {"dtype": str(arr.dtype), "shape": list(arr.shape[1:]) or [1], "names": None}
    spec: dict = {"dtype": "video" if video else "image", "shape": list(arr.shape[1:]),
                  "names": ["height", "width", "channels"]}
    if video:
        spec["info"] = {"video.height": int(arr.shape[1]), "video.width": int(arr.shape[2]),
                        "video.codec": _video.codec_name(codec), "video.pix_fmt": "yuv420p",
                        "video.is_depth_map": False, "video.fps": int(fps), "video.channels": int(arr.shape[3]),
                        "has_audio": False}
    return spec


def _column(arr: np.ndarray) -> pa.Array:
    values = pa.array(arr.reshape(-1))
    for size in reversed(arr.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    return values


def _stats(arr: np.ndarray) -> dict[str, list]:
    x = arr.reshape(len(arr), -1).astype(np.float64)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "count": [len(arr)]}


def _tasks_table(tasks: Mapping[str, int]) -> pa.Table:
    """``meta/tasks.parquet`` as pandas writes LeRobot's ``DataFrame({"task_index": ...}, index=tasks)``."""
    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
         "metadata": None}], "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "__index_level_0__": pa.array(list(tasks), pa.string())})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def write_lerobot_v3_dataset(root: str | Path, episodes: Iterable[Episode], *, fps: int, video: bool = False,
                             names: Mapping[str, str] | None = None, robot_type: str = "panda",
                             codec: str = _video.DEFAULT_CODEC) -> Path:
    """Write ``episodes`` as a LeRobot v3.0 dataset at ``root`` (atomically; returns ``root``): one data file, one
    episode file and, with ``video``, one mp4 per camera holding every episode back to back. ``names`` maps episode
    keys to feature names (default: LIBERO's); images are every uint8 ``[T, H, W, C]`` step array."""
    root, episodes = Path(root), list(episodes)
    if not episodes:
        raise ValueError("write_lerobot_v3_dataset needs at least one episode")
    names = {**LIBERO_LEROBOT_NAMES, **(names or {})}
    first = episodes[0]
    keys = tuple(k for k, v in first.steps.items() if is_image_array(v))
    columns = {k: names.get(k, k.replace("/", ".")) for k in first.steps}
    features = {columns[k]: _feature(v, image=k in keys, video=video, fps=fps, codec=codec)
                for k, v in first.steps.items()}
    features |= {n: {"dtype": d, "shape": [1], "names": None} for n, d in _INDEX_FEATURES}
    tasks: dict[str, int] = {}
    data: dict[str, list] = {c: [] for c in features if not (video and features[c]["dtype"] == "video")}
    ep_rows, offset = [], 0
    for e, ep in enumerate(episodes):
        T, task = len(ep), tasks.setdefault(ep.prompt, len(tasks))
        row: dict[str, Any] = {"episode_index": e, "tasks": [ep.prompt], "length": T, "data/chunk_index": 0,
                               "data/file_index": 0, "dataset_from_index": offset, "dataset_to_index": offset + T}
        for key, arr in ep.steps.items():
            if key in keys and video:
                row |= {f"videos/{columns[key]}/chunk_index": 0, f"videos/{columns[key]}/file_index": 0,
                        f"videos/{columns[key]}/from_timestamp": offset / fps,
                        f"videos/{columns[key]}/to_timestamp": (offset + T) / fps}
            elif key in keys:
                data[columns[key]] += [{"bytes": encode_png(img), "path": None} for img in arr]
            else:
                data[columns[key]].append(arr)
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        row |= {f"stats/{columns[k]}/{s}": v for k in ep.steps if k not in keys
                for s, v in _stats(ep.steps[k]).items()}
        data["timestamp"].append((np.arange(T) / fps).astype(np.float32))
        data["frame_index"].append(np.arange(T, dtype=np.int64))
        data["episode_index"].append(np.full(T, e, dtype=np.int64))
        data["index"].append(np.arange(offset, offset + T, dtype=np.int64))
        data["task_index"].append(np.full(T, task, dtype=np.int64))
        ep_rows.append(row)
        offset += T
    with atomic_directory(root, overwrite=True) as tmp:
        table = {c: pa.array(v, _IMAGE) if features[c]["dtype"] == "image" else _column(np.concatenate(v))
                 for c, v in data.items()}
        for path, t in ((DATA_PATH, pa.table(table)), (EPISODES_PATH, pa.Table.from_pylist(ep_rows))):
            out = tmp / path.format(chunk_index=0, file_index=0)
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(t, out, row_group_size=100 if keys and not video else None)
        if video:
            for key in keys:
                _video.encode_video(tmp / VIDEO_PATH.format(video_key=columns[key], chunk_index=0, file_index=0),
                                    np.concatenate([ep.steps[key] for ep in episodes]), fps, codec=codec)
        pq.write_table(_tasks_table(tasks), tmp / TASKS_PATH)
        stats = {columns[k]: _stats(np.concatenate([ep.steps[k] for ep in episodes])) for k in first.steps
                 if k not in keys}
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
        info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(episodes),
                "total_frames": offset, "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
                "video_files_size_in_mb": 200, "fps": int(fps), "splits": {"train": f"0:{len(episodes)}"},
                "data_path": DATA_PATH, "video_path": VIDEO_PATH if video else None, "features": features}
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return root
