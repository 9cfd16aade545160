"""Data configurations: where a config's episodes come from and which transforms turn them into model inputs.

A ``DataConfigFactory`` (frozen dataclass, part of a ``TrainConfig``) is resolved with ``create(model_config,
assets_dir)`` into a ``DataConfig`` holding the transform groups and the norm stats. ``open_source()`` opens the
episodic dataset (RLDS / TFDS ``array_record``, TFRecord RLDS, or LeRobot v2.1 on local disk) without any network.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from typing import Literal

from pi0_eqm.data import transforms as _t
from pi0_eqm.data.normalize import NormStats
from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.models.pi0 import Pi0Config
from pi0_eqm.models.tokenizer import ByteTokenizer
from pi0_eqm.models.tokenizer import PaligemmaTokenizer
from pi0_eqm.models.tokenizer import WordHashTokenizer
from pi0_eqm.policies import robots

DATA_HOME_ENV = "PI0_DATA_HOME"


def data_home() -> Path:
    return Path(os.environ.get(DATA_HOME_ENV, "data")).expanduser()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    asset_id: str | None
    norm_stats: dict[str, NormStats] | None
    repack: _t.Group
    data_transforms: _t.Group
    model_transforms: _t.Group
    use_quantile_norm: bool = False
    source: Any = None  # the factory, to open the dataset

    def train_transform(self):
        """repack → robot inputs → Normalize → model inputs (one sample dict → model-ready dict)."""
        return _t.compose(
            [*self.repack.inputs, *self.data_transforms.inputs,
             _t.Normalize(self.norm_stats, self.use_quantile_norm), *self.model_transforms.inputs]
        )

    def stats_transform(self):
        """repack → robot inputs, without images (for computing norm stats)."""
        return _t.compose([*self.repack.inputs, *self.data_transforms.inputs])


def model_transforms(model: Pi0Config, default_prompt: str | None = None) -> _t.Group:
    tokenizer = make_tokenizer(model)
    h, w = model.image_resolution
    return _t.Group(
        inputs=(
            _t.InjectDefaultPrompt(default_prompt),
            SelectImages(model.image_keys),
            _t.ResizeImages(h, w),
            _t.TokenizePrompt(tokenizer),
            _t.PadStatesAndActions(model.action_dim),
        )
    )


def make_tokenizer(model: Pi0Config):
    kind = model.tokenizer
    if kind == "auto":
        kind = "bytes" if model.vocab_size < PaligemmaTokenizer.vocab_size_needed else "paligemma"
    tokenizers = {
        "paligemma": lambda: PaligemmaTokenizer(model.max_token_len),
        "bytes": lambda: ByteTokenizer(model.max_token_len),
        "words": lambda: WordHashTokenizer(model.max_token_len, model.vocab_size),
    }
    if kind not in tokenizers:
        raise ValueError(f"unknown tokenizer {model.tokenizer!r}; expected auto, paligemma, bytes or words")
    tok = tokenizers[kind]()
    if model.vocab_size < tok.vocab_size_needed:
        raise ValueError(f"vocab_size {model.vocab_size} is too small for the {kind} tokenizer "
                         f"(needs >= {tok.vocab_size_needed})")
    return tok


@dataclasses.dataclass(frozen=True)
class SelectImages:
    keys: tuple[str, ...]

    def __call__(self, data: dict) -> dict:
        missing = [k for k in self.keys if k not in data["image"]]
        if missing:
            raise KeyError(f"model needs images {missing}; the robot transform produced {sorted(data['image'])}")
        masks = data.get("image_mask", {})
        return {**data, "image": {k: data["image"][k] for k in self.keys},
                "image_mask": {k: masks.get(k, True) for k in self.keys}}


def _load_stats(assets_dir: Path, asset_id: str) -> dict[str, NormStats] | None:
    path = assets_dir / asset_id
    if not (path / "norm_stats.json").is_file():
        return None
    return load_norm_stats(path)


_SAMPLE_REPACK = {
    "observation/image": "observation/image",
    "observation/wrist_image": "observation/wrist_image",
    "observation/state": "state",
    "actions": "actions",
    "prompt": "prompt",
}


@dataclasses.dataclass(frozen=True)
class EpisodicDataConfig:
    """Episodes on local disk + robot transforms. ``format``: ``rlds`` (TFDS array_record / TFRecord) or ``lerobot``."""

    robot: Literal["libero", "metaworld", "aloha"] = "libero"
    format: Literal["rlds", "lerobot"] = "lerobot"
    path: str = "lerobot/physical-intelligence/libero"  # relative paths are under $PI0_DATA_HOME (default ./data)
    asset_id: str = "physical-intelligence/libero"
    extra_delta_transform: bool = False  # openpi pi0_libero: DeltaActions(make_bool_mask(6, -1))
    use_quantile_norm: bool = False
    default_prompt: str | None = None
    how_to_obtain: str = (
        "convert LIBERO with openpi's examples/libero/convert_libero_data_to_lerobot.py or download the "
        "'physical-intelligence/libero' LeRobot dataset, then point --data.path at it"
    )

    def resolved_path(self) -> Path:
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else data_home() / p

    def open_source(self):
        path = self.resolved_path()
        if not path.exists():
            raise FileNotFoundError(f"dataset not found at {path} (from --data.path={self.path!r}, "
                                    f"${DATA_HOME_ENV}={data_home()}); {self.how_to_obtain}")
        if self.format == "lerobot":
            from pi0_eqm.data.lerobot import LeRobotDataset

            return LeRobotDataset(path)
        from pi0_eqm.data.rlds import RldsDataset

        return RldsDataset(path)

    def create(self, model: Pi0Config, assets_dir: Path) -> DataConfig:
        inputs, outputs = {
            "libero": (robots.LiberoInputs(), robots.LiberoOutputs()),
            "metaworld": (robots.MetaWorldInputs(), robots.MetaWorldOutputs()),
            "aloha": (robots.AlohaInputs(), robots.AlohaOutputs()),
        }[self.robot]
        data = _t.Group(inputs=(inputs,), outputs=(outputs,))
        if self.extra_delta_transform:
            mask = _t.make_bool_mask(6, -1)
            data = data.push(inputs=(_t.DeltaActions(mask),), outputs=(_t.AbsoluteActions(mask),))
        repack = _t.Group(inputs=(_t.RepackTransform(_SAMPLE_REPACK),)) if self.robot != "aloha" else _t.Group()
        return DataConfig(
            asset_id=self.asset_id,
            norm_stats=_load_stats(assets_dir, self.asset_id),
            repack=repack,
            data_transforms=data,
            model_transforms=model_transforms(model, self.default_prompt),
            use_quantile_norm=self.use_quantile_norm,
            source=self,
        )


@dataclasses.dataclass(frozen=True)
class ToyDataConfig:
    """The generated toy task (``pi0_eqm.toy``): model-ready samples, no transforms or norm stats."""

    num_samples: int = 4096
    asset_id: str | None = None

    def create(self, model: Pi0Config, assets_dir: Path) -> DataConfig:
        return DataConfig(asset_id=None, norm_stats=None, repack=_t.Group(), data_transforms=_t.Group(),
                          model_transforms=_t.Group(), source=self)

    def open_source(self):
        raise TypeError("the toy data config has no episodic source")


DataConfigFactory = EpisodicDataConfig | ToyDataConfig
