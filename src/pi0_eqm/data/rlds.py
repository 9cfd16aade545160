"""RLDS episodic datasets in TFDS format, written and read without TensorFlow.

Writing (:func:`write_rlds_dataset`) produces a TFDS ``array_record`` dataset shaped like LIBERO's
``modified_libero_rlds``: one example per episode with ``steps`` = ``tfds.features.Dataset`` of
``{observation: {<images as PNG>, <state>, ...}, action, language_instruction, is_first, is_last, is_terminal,
reward, discount}`` and ``episode_metadata`` = ``{file_path, metadata_json}``. The dataset lives in
``<root>/<name>/<version>/`` and appears there atomically.

Reading (:class:`RldsDataset`) handles ``array_record`` datasets through ``tfds`` data sources and TFRecord datasets
(e.g. downloads of ``openvla/modified_libero_rlds``, built with TensorFlow) through the TF-free framing reader of
:mod:`pi0_eqm.data.tfrecord`; both parse examples with ``info.features.deserialize_example_np``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from collections.abc import Mapping
import json
from pathlib import Path
import re
import shutil
import threading
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pi0_eqm.atomic import atomic_directory
from pi0_eqm.data.episodes import ACTION_KEY
from pi0_eqm.data.episodes import LIBERO_IMAGE_KEYS
from pi0_eqm.data.episodes import STATE_KEY
from pi0_eqm.data.episodes import Episode
from pi0_eqm.data.episodes import check_index
from pi0_eqm.data.episodes import decode_image
from pi0_eqm.data.episodes import encode_png
from pi0_eqm.data.episodes import is_image_array
from pi0_eqm.data.tfrecord import TFRecordSplit
from pi0_eqm.errors import FeatureNotFoundError

LIBERO_RLDS_IMAGE_KEYS: Mapping[str, str] = {k: k for k in LIBERO_IMAGE_KEYS}
_STEP_DEFAULTS = ("is_first", "is_last", "is_terminal", "reward", "discount")
_FORMAT_TAG = "pi0_eqm.rlds/1"
_OBTAIN_HINT = (
    "Download LIBERO's RLDS data (e.g. `huggingface-cli download openvla/modified_libero_rlds --repo-type dataset "
    "--local-dir <dir>`, then pass <dir>/libero_10_no_noops/1.0.0) or generate a dataset with "
    "pi0_eqm.data.rlds.write_rlds_dataset(root, name, episodes)."
)


def _tfds():
    import tensorflow_datasets as tfds  # lazy: importing TFDS takes seconds; only RLDS datasets need it

    return tfds


# --------------------------------------------------------------------------------------------------- writing


def _nest_set(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split("/")
    node = tree
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"step key {key!r} nests under {'/'.join(parents[: i + 1])!r}, which is itself a value")
    if leaf in node:
        raise ValueError(f"step key {key!r} collides with another key of the same path")
    node[leaf] = value


def _step_features(first: Episode, image_keys: tuple[str, ...]):
    tfds = _tfds()
    tree: dict = {}
    for key, arr in first.steps.items():
        if key in image_keys:
            if not is_image_array(arr):
                raise ValueError(f"image key {key!r} must hold uint8 [T, H, W, C] (C in 1, 3, 4), got {arr.dtype} {arr.shape}")
            feature = tfds.features.Image(shape=arr.shape[1:], dtype=np.uint8, encoding_format="png")
        elif key in ("is_first", "is_last", "is_terminal"):
            feature = np.bool_
        elif key in ("reward", "discount"):
            feature = tfds.features.Scalar(dtype=np.float32)
        elif key == "language_instruction":
            raise ValueError("'language_instruction' is written from Episode.prompt; remove it from Episode.steps")
        else:
            feature = tfds.features.Tensor(shape=arr.shape[1:], dtype=arr.dtype)
        _nest_set(tree, key, feature)
    tree["language_instruction"] = tfds.features.Text()
    for key in _STEP_DEFAULTS:
        if key not in first.steps:
            tree[key] = np.bool_ if key.startswith("is_") else tfds.features.Scalar(dtype=np.float32)
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(tree),
            "episode_metadata": {"file_path": tfds.features.Text(), "metadata_json": tfds.features.Text()},
        }
    )


def _check_like_first(index: int, ep: Episode, first: Episode) -> None:
    if set(ep.steps) != set(first.steps):
        raise ValueError(f"episode {index} has step keys {sorted(ep.steps)}, but episode 0 has {sorted(first.steps)}")
    for key, arr in ep.steps.items():
        ref = first.steps[key]
        if arr.shape[1:] != ref.shape[1:] or arr.dtype != ref.dtype:
            raise ValueError(
                f"episode {index}: step key {key!r} is {arr.dtype} {arr.shape[1:]} per step, "
                f"but episode 0 has {ref.dtype} {ref.shape[1:]}; all episodes must match"
            )


def _encode_episode(index: int, ep: Episode, image_keys: tuple[str, ...]) -> dict:
    T = len(ep)
    pngs = {k: [encode_png(img) for img in ep.steps[k]] for k in image_keys}
    steps = []
    for t in range(T):
        step: dict = {}
        for key, arr in ep.steps.items():
            _nest_set(step, key, pngs[key][t] if key in pngs else arr[t])
        step["language_instruction"] = ep.prompt
        defaults = {"is_first": t == 0, "is_last": t == T - 1, "is_terminal": t == T - 1}
        defaults |= {"reward": float(t == T - 1), "discount": 1.0}
        for key, value in defaults.items():
            step.setdefault(key, value)
        steps.append(step)
    try:
        metadata_json = json.dumps(dict(ep.metadata), sort_keys=True)
    except TypeError as e:
        raise TypeError(f"episode {index}: Episode.metadata must be JSON-serializable to be stored in RLDS ({e})") from e
    file_path = str(ep.metadata.get("file_path", f"episode_{index:06d}"))
    return {"steps": steps, "episode_metadata": {"file_path": file_path, "metadata_json": metadata_json}}


def _make_builder(name: str, version: str, features, examples: Iterable, data_dir: Path, metadata: dict):
    tfds = _tfds()

    class _EpisodeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        # No source module to look up README/checksums next to (that lookup needs the absent importlib_resources).
        code_path = None

        def __init__(self):
            self.name = name
            self.VERSION = tfds.core.Version(version)
            self.RELEASE_NOTES = {version: "Written by pi0_eqm.data.rlds.write_rlds_dataset."}
            super().__init__(data_dir=str(data_dir), file_format="array_record")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="RLDS episodes written by pi0_eqm.data.rlds.write_rlds_dataset.",
                features=features,
                disable_shuffling=True,  # keep episode order
                metadata=tfds.core.MetadataDict(metadata),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield from examples

        def _log_download_bytes(self):  # silence tfds' "Downloading and preparing" banner
            pass

        def _log_download_done(self):
            pass

    return _EpisodeBuilder()


def is_complete_rlds(version_dir: Path) -> bool:
    return all((Path(version_dir) / f).is_file() for f in ("dataset_info.json", "features.json"))


def write_rlds_dataset(
    root: str | Path,
    name: str,
    episodes: Iterable[Episode],
    *,
    version: str = "1.0.0",
    image_keys: Iterable[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``episodes`` as the TFDS array_record dataset ``<root>/<name>/<version>`` and return that directory.

    ``image_keys`` are stored as PNG images; by default every ``uint8 [T, H, W, C]`` array is treated as an image.
    Idempotent: an existing complete dataset is returned untouched unless ``overwrite``; the output appears with a
    single rename, so an interrupted write leaves nothing visible.
    """
    tfds = _tfds()
    from tensorflow_datasets.core.utils import tqdm_utils  # lazy: importing TFDS takes seconds (see _tfds)

    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"dataset name {name!r} must be snake_case (lowercase letters, digits, '_'), as TFDS requires")
    tfds.core.Version(version)  # validates
    final = Path(root) / name / version
    if final.exists() and not overwrite:
        if is_complete_rlds(final):
            return final
        raise FileExistsError(f"{final} exists but is not a complete TFDS dataset; pass overwrite=True to replace it")

    iterator = iter(episodes)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_rlds_dataset got no episodes; expected at least one Episode")
    if not isinstance(first, Episode):
        raise TypeError(f"episode 0 is a {type(first).__name__}; expected pi0_eqm.data.episodes.Episode")
    keys = tuple(image_keys) if image_keys is not None else tuple(k for k, v in first.steps.items() if is_image_array(v))
    missing = [k for k in keys if k not in first.steps]
    if missing:
        raise KeyError(f"image_keys {missing} are not step keys of the first episode ({sorted(first.steps)})")
    features = _step_features(first, keys)
    metadata: dict = {"format": _FORMAT_TAG, "image_keys": list(keys), "episode_lengths": []}
    total = len(episodes) if hasattr(episodes, "__len__") else None  # type: ignore[arg-type]

    def examples():
        bar = tqdm(desc=f"Writing RLDS {name}", total=total, unit="episode")
        with bar:
            for i, ep in enumerate(_chain_first(first, iterator)):
                if not isinstance(ep, Episode):
                    raise TypeError(f"episode {i} is a {type(ep).__name__}; expected pi0_eqm.data.episodes.Episode")
                _check_like_first(i, ep, first)
                metadata["episode_lengths"].append(len(ep))
                yield f"{i:09d}", _encode_episode(i, ep, keys)
                bar.update(1)

    shown = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        with atomic_directory(final, overwrite=overwrite) as tmp:
            scratch = tmp / "_build"
            builder = _make_builder(name, version, features, examples(), scratch, metadata)
            builder.download_and_prepare()
            for item in (scratch / name / version).iterdir():
                item.rename(tmp / item.name)
            shutil.rmtree(scratch)
    finally:
        tfds.display_progress_bar(shown)
    return final


def _chain_first(first, rest):
    yield first
    yield from rest


# --------------------------------------------------------------------------------------------------- reading


def find_version_dir(path: str | Path) -> Path:
    """Resolve ``path`` (a TFDS version dir, or a dataset dir holding version dirs) to the version directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No RLDS dataset at {path}: the path does not exist. {_OBTAIN_HINT}")
    if (path / "dataset_info.json").is_file():
        return path
    versions = []
    if path.is_dir():
        for child in path.iterdir():
            m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", child.name)
            if m and (child / "dataset_info.json").is_file():
                versions.append((tuple(int(g) for g in m.groups()), child))
    if versions:
        return max(versions)[1]
    children = sorted(c.name for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")) if path.is_dir() else []
    hint = f" It contains the directories {children[:10]}; point to one of them." if children else ""
    raise FileNotFoundError(
        f"No RLDS dataset at {path}: expected dataset_info.json there or in a version subdirectory like "
        f"{path}/1.0.0.{hint} {_OBTAIN_HINT}"
    )


def _leaves(feature, prefix: str = "") -> dict[str, Any]:
    tfds = _tfds()
    out = {}
    for key, sub in feature.items():
        path = f"{prefix}{key}"
        if isinstance(sub, tfds.features.FeaturesDict):
            out |= _leaves(sub, f"{path}/")
        else:
            out[path] = sub
    return out


def _get(tree: Mapping, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


class RldsDataset:
    """Random access to the episodes of an RLDS dataset (array_record or TFRecord), as canonical :class:`Episode`.

    ``image_keys`` maps output keys to step paths (defaults to LIBERO: ``observation/image``,
    ``observation/wrist_image``); ``state_key``/``action_key``/``instruction_key`` are step paths. Output episodes hold
    the image keys plus ``observation/state`` and ``action``; the prompt comes from the first step's instruction.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image_keys: Mapping[str, str] = LIBERO_RLDS_IMAGE_KEYS,
        state_key: str = "observation/state",
        action_key: str = "action",
        instruction_key: str = "language_instruction",
        split: str = "train",
        verify_checksums: bool = True,
        cache_size: int = 4,
    ):
        tfds = _tfds()
        self.path = find_version_dir(path)
        builder = tfds.builder_from_directory(str(self.path))
        info = builder.info
        top = info.features
        if "steps" not in top.keys() or not isinstance(top["steps"], tfds.features.Dataset):
            raise ValueError(f"{self.path} is not an RLDS dataset: expected a top-level 'steps' Dataset feature, got {list(top.keys())}")
        leaves = _leaves(top["steps"].feature)
        self._image_map = dict(image_keys)
        self._state_key, self._action_key, self._instruction_key = state_key, action_key, instruction_key
        wanted = {**{f"image_keys[{k!r}]": v for k, v in self._image_map.items()}, "state_key": state_key,
                  "action_key": action_key, "instruction_key": instruction_key}  # fmt: skip
        for arg, key in wanted.items():
            if key not in leaves:
                raise FeatureNotFoundError(f"{self.path}: {arg}={key!r} is not a step feature; available step features: {sorted(leaves)}")
        for out_key, key in self._image_map.items():
            if not isinstance(leaves[key], tfds.features.Image):
                raise TypeError(f"{self.path}: image_keys[{out_key!r}]={key!r} is a {type(leaves[key]).__name__}, not an Image")
        self._channels = {k: leaves[v].shape[-1] for k, v in self._image_map.items()}
        decoders: dict = {}
        for key in self._image_map.values():
            _nest_set(decoders, key, tfds.decode.SkipDecoding())
        decoders = {"steps": decoders}
        fmt = info.file_format.value if info.file_format is not None else "tfrecord"
        if fmt == "array_record":
            self._source = builder.as_data_source(split=split, decoders=decoders)
        elif fmt == "tfrecord":
            self._source = TFRecordSplit(self.path, info, split, decoders=decoders, verify_checksums=verify_checksums)
        else:
            raise ValueError(f"{self.path}: unsupported file format {fmt!r}; expected array_record or tfrecord")
        self._metadata = self._read_metadata()
        self._cache: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()

    def _read_metadata(self) -> dict:
        file = self.path / "metadata.json"
        if file.is_file():
            meta = json.loads(file.read_text())
            if meta.get("format") == _FORMAT_TAG and len(meta.get("episode_lengths", [])) == len(self._source):
                return meta
        return {}

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(self._image_map)

    def __len__(self) -> int:
        return len(self._source)

    def episode_lengths(self) -> np.ndarray:
        if "episode_lengths" not in self._metadata:
            lengths = [len(self._source[i]["steps"]) for i in tqdm(range(len(self)), desc="Indexing RLDS episodes")]
            self._metadata["episode_lengths"] = lengths
        return np.asarray(self._metadata["episode_lengths"], dtype=np.int64)

    def _example(self, index: int) -> dict:
        """The parsed example of episode ``index`` (steps decode lazily, images stay encoded); LRU-cached."""
        index = check_index(index, len(self))
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        example = self._source[index]
        with self._lock:
            self._cache[index] = example
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return example

    def _images(self, step: Mapping) -> dict[str, np.ndarray]:
        return {k: decode_image(_get(step, path), channels=self._channels[k]) for k, path in self._image_map.items()}

    def episode(self, index: int, *, images: bool = True) -> Episode:
        example = self._example(index)
        steps = example["steps"]
        state, action, frames = [], [], []
        prompt = None
        for t in range(len(steps)):
            step = steps[t]
            state.append(_get(step, self._state_key))
            action.append(_get(step, self._action_key))
            if images:
                frames.append(self._images(step))
            if prompt is None:
                prompt = _get(step, self._instruction_key)
        out = {STATE_KEY: np.stack(state), ACTION_KEY: np.stack(action)}
        if images:
            out |= {k: np.stack([f[k] for f in frames]) for k in self._image_map}
        meta = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in example.get("episode_metadata", {}).items()}
        metadata = json.loads(meta["metadata_json"]) if "metadata_json" in meta else meta
        prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt or "")
        return Episode(steps=out, prompt=prompt, metadata=metadata)

    def frame_images(self, index: int, frame: int) -> dict[str, np.ndarray]:
        steps = self._example(index)["steps"]
        if not 0 <= frame < len(steps):
            raise IndexError(f"frame {frame} out of range for RLDS episode {index} of {len(steps)} steps")
        return self._images(steps[frame])
