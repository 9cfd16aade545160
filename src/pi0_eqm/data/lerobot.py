"""Local LeRobot v2.0/v2.1 datasets (the layout of HF ``physical-intelligence/libero``), without the lerobot package.

Layout::

    meta/info.json            codebase_version, fps, features, data_path/video_path templates, totals, chunks_size
    meta/episodes.jsonl       {"episode_index", "tasks", "length"} per line
    meta/tasks.jsonl          {"task_index", "task"} per line
    meta/episodes_stats.jsonl {"episode_index", "stats": {feature: {min, max, mean, std, count}}}  (v2.1)
    data/chunk-000/episode_000000.parquet
    videos/chunk-000/<video_key>/episode_000000.mp4   (features with dtype "video")

Image features are parquet structs ``{"bytes", "path"}`` (PNG) or mp4 videos decoded with PyAV. Random access is
bounded per sample: a frame's parquet images are read from the episode's memory-mapped frame index
(:mod:`pi0_eqm.data._frame_index`, built from the parquet file the first time the episode is read) and only that
frame is decoded; video frames are decoded from the keyframe before them. The low-dimensional columns of recently
used episodes are cached. Nothing here touches the network.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
import json
from pathlib import Path
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pi0_eqm.atomic import atomic_directory
from pi0_eqm.data import _video
from pi0_eqm.data._frame_index import FrameIndex
from pi0_eqm.data._frame_index import default_directory
from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import STATE_KEY
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.episodes import check_index
from pi0_eqm.data.episodes import decode_image
from pi0_eqm.data.episodes import encode_png
from pi0_eqm.data.episodes import is_image_array
from pi0_eqm.errors import FeatureNotFoundError

LIBERO_LEROBOT_IMAGE_KEYS: Mapping[str, str] = {"observation/image": "image", "observation/wrist_image": "wrist_image"}
# Episode key -> LeRobot feature name used by the writer (physical-intelligence/libero naming).
LIBERO_LEROBOT_NAMES: Mapping[str, str] = {**LIBERO_LEROBOT_IMAGE_KEYS, STATE_KEY: "state", ACTION_KEY: "actions"}
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
_SUPPORTED_VERSIONS = ("v2.0", "v2.1")
IMAGE_ROW_GROUP_SIZE = 100  # rows per parquet row group of image datasets (as HF datasets writes them)
_LOW_DIM_CACHE = 4096  # episodes whose state/action/timestamp columns stay in memory (a few kB each)
_OBTAIN_HINT = (
    "Download it with `huggingface-cli download physical-intelligence/libero --repo-type dataset --local-dir <root>` "
    "or generate one with pi0_eqm.data.lerobot.write_lerobot_dataset(root, episodes, fps=...)."
)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"LeRobot metadata file missing: {path}. {_OBTAIN_HINT}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON line ({e})") from e
    return rows


def _column_to_numpy(column, shape: tuple[int, ...]) -> np.ndarray:
    """Arrow column of (nested, fixed or variable) lists or scalars -> ``[T, *shape]``."""

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    size = int(np.prod(shape)) if shape else 1
    if values.size != n * size:
        raise ValueError(f"column holds {values.size} values for {n} rows; expected shape {shape} per row")
    squeeze = tuple(shape) == (1,)
    return values.reshape((n,) if squeeze else (n, *shape))


class LeRobotDataset:
    """Random access to a local LeRobot v2.0/v2.1 dataset as canonical :class:`Episode` objects.

    ``image_keys`` maps output keys to LeRobot feature names (default: LIBERO's ``image``/``wrist_image``);
    ``state_key``/``action_key`` are feature names. The prompt is the task string of the episode's ``task_index``.
    ``frame_index_dir``: where the per-episode frame index goes (default ``_frame_index.default_directory(root)``).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_keys: Mapping[str, str] = LIBERO_LEROBOT_IMAGE_KEYS,
        state_key: str = "state",
        action_key: str = "actions",
        frame_index_dir: str | Path | None = None,
    ):
        self.root = Path(root).expanduser()
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"No LeRobot dataset at {self.root}: {info_path} does not exist. {_OBTAIN_HINT}")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        version = self.info.get("codebase_version")
        if version not in _SUPPORTED_VERSIONS:
            raise ValueError(
                f"{info_path}: codebase_version {version!r} is not supported; expected one of {_SUPPORTED_VERSIONS} "
                "(v3.0 datasets use a different file layout)"
            )
        self.fps = float(self.info["fps"])
        self._features: dict[str, dict] = self.info["features"]
        self._image_map, self._state_key, self._action_key = dict(image_keys), state_key, action_key
        wanted = {**{f"image_keys[{k!r}]": v for k, v in self._image_map.items()}, "state_key": state_key, "action_key": action_key}
        for arg, name in wanted.items():
            if name not in self._features:
                raise FeatureNotFoundError(f"{info_path}: {arg}={name!r} is not a feature; available features: {sorted(self._features)}")
        for out_key, name in self._image_map.items():
            if self._features[name]["dtype"] not in ("image", "video"):
                raise TypeError(f"{info_path}: image_keys[{out_key!r}]={name!r} has dtype {self._features[name]['dtype']!r}, not image/video")
        self._episodes = sorted(_read_jsonl(self.root / "meta" / "episodes.jsonl"), key=lambda r: r["episode_index"])
        if not self._episodes:
            raise ValueError(f"{self.root}/meta/episodes.jsonl lists no episodes")
        self._tasks = {int(r["task_index"]): r["task"] for r in _read_jsonl(self.root / "meta" / "tasks.jsonl")}
        self._chunks_size = int(self.info.get("chunks_size", 1000))
        self._cache: collections.OrderedDict[tuple, Any] = collections.OrderedDict()  # low-dimensional episodes
        self._lock = threading.Lock()
        self._frames = FrameIndex(Path(frame_index_dir) if frame_index_dir is not None else default_directory(self.root))

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(self._image_map)

    def __len__(self) -> int:
        return len(self._episodes)

    def episode_lengths(self) -> np.ndarray:
        return np.array([int(r["length"]) for r in self._episodes], dtype=np.int64)

    def _path(self, template_key: str, episode_index: int, **extra) -> Path:
        template = self.info.get(template_key) or (DATA_PATH if template_key == "data_path" else VIDEO_PATH)
        chunk = episode_index // self._chunks_size
        return self.root / template.format(episode_chunk=chunk, episode_index=episode_index, **extra)

    def _cached(self, key: tuple, compute):
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = compute()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > _LOW_DIM_CACHE:
                self._cache.popitem(last=False)
        return value

    def _read_table(self, episode_index: int, columns: list[str]):

        path = self._path("data_path", episode_index)
        if not path.is_file():
            raise FileNotFoundError(f"episode {episode_index}: parquet file {path} is missing (incomplete download?)")
        return pq.read_table(path, columns=columns)

    def _low_dim(self, index: int) -> tuple[dict[str, np.ndarray], str, dict]:
        row = self._episodes[check_index(index, len(self))]
        e = int(row["episode_index"])

        def compute():
            cols = [self._state_key, self._action_key]
            available = set(self._features)
            cols += [c for c in ("task_index", "timestamp") if c in available]
            table = self._read_table(e, cols)
            steps = {
                STATE_KEY: _column_to_numpy(table[self._state_key], tuple(self._features[self._state_key]["shape"])),
                ACTION_KEY: _column_to_numpy(table[self._action_key], tuple(self._features[self._action_key]["shape"])),
            }
            tasks = row.get("tasks") or [""]
            prompt = self._tasks.get(int(table["task_index"][0].as_py()), tasks[0]) if "task_index" in cols else tasks[0]
            ts = table["timestamp"].to_numpy() if "timestamp" in cols else np.arange(table.num_rows) / self.fps
            return steps, prompt, {"episode_index": e, "timestamps": ts}

        return self._cached(("low", e), compute)

    def _parquet_image_names(self) -> dict[str, str]:
        return {k: v for k, v in self._image_map.items() if self._features[v]["dtype"] == "image"}

    def _frame_bytes(self, index: int, frame: int) -> dict[str, bytes]:
        """The encoded parquet images of one frame, from the episode's frame index."""
        e = int(self._episodes[check_index(index, len(self))]["episode_index"])
        names = self._parquet_image_names()
        if not names:
            return {}
        source = self._path("data_path", e)
        if not source.is_file():
            raise FileNotFoundError(f"episode {e}: parquet file {source} is missing (incomplete download?)")

        def build() -> dict[str, list[bytes]]:
            table = self._read_table(e, list(names.values()))
            return {key: [self._image_bytes(v, name, e) for v in table[name].to_pylist()] for key, name in names.items()}

        return self._frames.frame(e, frame, source, build)

    def _image_bytes(self, value, name: str, e: int) -> bytes:
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                path = Path(value["path"])
                return (path if path.is_absolute() else self.root / path).read_bytes()
        if isinstance(value, bytes):
            return value
        raise ValueError(f"episode {e}: image column {name!r} holds {type(value).__name__}; expected a {{bytes, path}} struct")

    def _video_frames(self, index: int, key: str, frames: list[int] | None) -> np.ndarray:
        low, _, meta = self._low_dim(index)
        e = meta["episode_index"]
        path = self._path("video_path", e, video_key=self._image_map[key])
        times = None if frames is None else [float(meta["timestamps"][f]) for f in frames]
        video = _video.decode_video(path, times, tolerance_s=0.4 / self.fps)
        if frames is None:
            video = video[: len(low[STATE_KEY])]
            if len(video) != len(low[STATE_KEY]):
                raise ValueError(f"{path}: {len(video)} frames for an episode of {len(low[STATE_KEY])} steps")
        return video

    def episode(self, index: int, *, images: bool = True) -> Episode:
        low, prompt, meta = self._low_dim(index)
        steps = dict(low)
        if images:
            e = meta["episode_index"]
            names = self._parquet_image_names()
            table = self._read_table(e, list(names.values())) if names else None
            for key in self._image_map:
                if key in names:
                    steps[key] = np.stack([decode_image(self._image_bytes(v, names[key], e))
                                           for v in table[names[key]].to_pylist()])
                else:
                    steps[key] = self._video_frames(index, key, None)
        return Episode(steps=steps, prompt=prompt, metadata={"episode_index": meta["episode_index"]})

    def frame_images(self, index: int, frame: int) -> dict[str, np.ndarray]:
        """The images of one frame (only its row group is read, only this frame decoded)."""
        encoded = self._frame_bytes(index, frame)
        out = {}
        for key in self._image_map:
            if key in encoded:
                out[key] = decode_image(encoded[key])
            else:
                out[key] = self._video_frames(index, key, [frame])[0]
        return out


# --------------------------------------------------------------------------------------------------- writing


def _feature_spec(arr: np.ndarray, *, image: bool, video: bool, fps: float, codec: str) -> dict:
    if image:
        spec: dict = {"dtype": "video" if video else "image", "shape": list(arr.shape[1:]), "names": ["height", "width", "channel"]}
        if video:
            spec["info"] = {
                "video.fps": float(fps), "video.height": int(arr.shape[1]), "video.width": int(arr.shape[2]),
                "video.channels": int(arr.shape[3]), "video.codec": _video.codec_name(codec), "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False, "has_audio": False,
            }  # fmt: skip
        return spec
    shape = list(arr.shape[1:]) or [1]
    return {"dtype": str(arr.dtype), "shape": shape, "names": None}


def _arrow_column(arr: np.ndarray):

    if arr.ndim == 1:
        return pa.array(arr)
    values = pa.array(arr.reshape(-1))
    for size in reversed(arr.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    return values


def _stats(arr: np.ndarray, *, image: bool, max_image_frames: int = 32) -> dict:
    """LeRobot per-episode stats; images: per channel in [0, 1], shape [C, 1, 1], from evenly spaced frames."""
    if image:
        frames = arr[np.unique(np.linspace(0, len(arr) - 1, min(len(arr), max_image_frames)).astype(int))]
        x = np.ascontiguousarray(frames.reshape(-1, frames.shape[-1]).T, dtype=np.float64) / 255.0  # [C, N]
        fmt = lambda v: v.reshape(-1, 1, 1).tolist()
    else:
        x = np.ascontiguousarray(arr.reshape(len(arr), -1).T, dtype=np.float64)  # [D, T]
        fmt = lambda v: v.tolist()
    return {"min": fmt(x.min(1)), "max": fmt(x.max(1)), "mean": fmt(x.mean(1)), "std": fmt(x.std(1)), "count": [len(arr)]}


_INDEX_FEATURES = (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"), ("task_index", "int64"))


def _layout(first: Episode, names: Mapping[str, str], image_keys, *, video: bool, fps: float, codec: str):
    """Column names, image keys and the info.json features, from the first episode."""
    keys = tuple(image_keys) if image_keys is not None else tuple(k for k, v in first.steps.items() if is_image_array(v))
    for key in keys:
        if key not in first.steps or not is_image_array(first.steps[key]):
            raise ValueError(f"image key {key!r} must be a uint8 [T, H, W, C] step array of the first episode ({sorted(first.steps)})")
    columns = {k: names.get(k, k.replace("/", ".")) for k in first.steps}
    features = {columns[k]: _feature_spec(v, image=k in keys, video=video, fps=fps, codec=codec) for k, v in first.steps.items()}
    features |= {name: {"dtype": dtype, "shape": [1], "names": None} for name, dtype in _INDEX_FEATURES}
    return columns, keys, features


def _write_episode(tmp: Path, e: int, ep: Episode, *, task_index: int, offset: int, fps: float, columns: Mapping[str, str],
                   keys: tuple[str, ...], video: bool, codec: str, chunks_size: int) -> None:  # fmt: skip

    T, chunk = len(ep), e // chunks_size
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table: dict[str, Any] = {}
    for key, arr in ep.steps.items():
        if key in keys and video:
            _video.encode_video(tmp / VIDEO_PATH.format(episode_chunk=chunk, video_key=columns[key], episode_index=e), arr, fps, codec=codec)
        elif key in keys:
            table[columns[key]] = pa.array([{"bytes": encode_png(img), "path": None} for img in arr], type=image_type)
        else:
            table[columns[key]] = _arrow_column(arr)
    table["timestamp"] = pa.array((np.arange(T) / fps).astype(np.float32))
    table["frame_index"] = pa.array(np.arange(T, dtype=np.int64))
    table["episode_index"] = pa.array(np.full(T, e, dtype=np.int64))
    table["index"] = pa.array(np.arange(offset, offset + T, dtype=np.int64))
    table["task_index"] = pa.array(np.full(T, task_index, dtype=np.int64))
    path = tmp / DATA_PATH.format(episode_chunk=chunk, episode_index=e)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), path, row_group_size=IMAGE_ROW_GROUP_SIZE if keys and not video else None)


def write_lerobot_dataset(
    root: str | Path,
    episodes: Iterable[Episode],
    *,
    fps: float,
    video: bool = False,
    names: Mapping[str, str] | None = None,
    image_keys: Iterable[str] | None = None,
    robot_type: str = "panda",
    codec: str = _video.DEFAULT_CODEC,
    chunks_size: int = 1000,
    overwrite: bool = False,
    extra_meta: Callable[[], Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``episodes`` as a LeRobot v2.1 dataset at ``root`` (atomically; returns ``root``).

    ``names`` maps episode keys to feature names (default: LIBERO's ``image``, ``wrist_image``, ``state``,
    ``actions``; other keys get ``/`` replaced by ``.``). Images (``image_keys``, default: every uint8 [T, H, W, C]
    array) are PNG structs in the parquet files, or mp4 videos (``codec``, yuv420p, keyframe every 2 frames) when
    ``video``. An existing complete dataset is returned untouched unless ``overwrite``. ``extra_meta``, called once
    every episode is written, returns ``{file name: JSON-able}`` written under ``meta/`` with the rest.
    """
    root = Path(root)
    if (root / "meta" / "info.json").is_file() and not overwrite:
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise FileExistsError(f"{root} exists but is not a complete LeRobot dataset; pass overwrite=True to replace it")
    names = {**LIBERO_LEROBOT_NAMES, **(names or {})}
    total = len(episodes) if hasattr(episodes, "__len__") else None  # type: ignore[arg-type]
    tasks: dict[str, int] = {}
    ep_rows: list[dict] = []
    stat_rows: list[dict] = []
    first: Episode | None = None
    frames = 0
    with atomic_directory(root, overwrite=overwrite) as tmp:
        for e, ep in enumerate(tqdm(episodes, desc=f"Writing LeRobot {root.name}", total=total, unit="episode")):
            if not isinstance(ep, Episode):
                raise TypeError(f"episode {e} is a {type(ep).__name__}; expected pi0_eqm.data.episodes.Episode")
            if first is None:
                first = ep
                columns, keys, features = _layout(ep, names, image_keys, video=video, fps=fps, codec=codec)
            shapes = {k: (v.dtype, v.shape[1:]) for k, v in ep.steps.items()}
            if shapes != {k: (v.dtype, v.shape[1:]) for k, v in first.steps.items()}:
                raise ValueError(f"episode {e} has step dtypes/shapes {shapes}, unlike episode 0; all episodes must match")
            task_index = tasks.setdefault(ep.prompt, len(tasks))
            _write_episode(tmp, e, ep, task_index=task_index, offset=frames, fps=fps, columns=columns, keys=keys,
                           video=video, codec=codec, chunks_size=chunks_size)  # fmt: skip
            ep_rows.append({"episode_index": e, "tasks": [ep.prompt], "length": len(ep)})
            stat_rows.append({"episode_index": e, "stats": {columns[k]: _stats(v, image=k in keys) for k, v in ep.steps.items()}})
            frames += len(ep)
        if first is None:
            raise ValueError("write_lerobot_dataset got no episodes; expected at least one Episode")
        n = len(ep_rows)
        info = {
            "codebase_version": "v2.1", "robot_type": robot_type, "total_episodes": n, "total_frames": frames,
            "total_tasks": len(tasks), "total_videos": n * len(keys) if video else 0,
            "total_chunks": (n - 1) // chunks_size + 1, "chunks_size": chunks_size, "fps": fps,
            "splits": {"train": f"0:{n}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH if video else None,
            "features": features,
        }  # fmt: skip
        meta = tmp / "meta"
        meta.mkdir()
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        (meta / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ep_rows))
        (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for t, i in tasks.items()))
        (meta / "episodes_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stat_rows))
        for name, value in (extra_meta() if extra_meta is not None else {}).items():
            (meta / name).write_text(json.dumps(value, indent=2) + "\n")
    return root
