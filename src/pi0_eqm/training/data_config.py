"""Data configurations: where a config's episodes come from and which transforms turn them into model inputs.

A ``DataConfigFactory`` (frozen dataclass, part of a ``TrainConfig``) is resolved with ``create(model_config,
assets_dir)`` into a ``DataConfig`` holding the transform ``Pipeline`` (with the norm stats). ``open_source()`` opens
the episodic dataset (RLDS / TFDS ``array_record``, TFRecord RLDS, or LeRobot v2.1 on local disk) without any
network; what is robot-specific comes from the config's ``RobotSpec`` (``pi0_eqm.robots``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from typing import Literal

import numpy as np

from pi0_eqm.data import transforms as _t
from pi0_eqm.data.fingerprint import content_fingerprint
from pi0_eqm.data.lerobot import LeRobotDataset
from pi0_eqm.data.lerobot_v3 import LeRobotV3Dataset
from pi0_eqm.data.lerobot_v3 import is_lerobot_v3
from pi0_eqm.data.normalize import NormStats
from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.data.pipeline import NormStatsMismatchError
from pi0_eqm.data.pipeline import Pipeline
from pi0_eqm.data.rlds import RldsDataset
from pi0_eqm.models.fast import FastTokenizer
from pi0_eqm.models.ki import FAST_TOKENIZER_DIR
from pi0_eqm.models.ki import TokenizeFastActions
from pi0_eqm.models.pi0 import Pi0Config
from pi0_eqm.models.tokenizer import ByteTokenizer
from pi0_eqm.models.tokenizer import PaligemmaTokenizer
from pi0_eqm.models.tokenizer import WordHashTokenizer
from pi0_eqm.robots import RobotSpec
from pi0_eqm.robots import get_robot
from pi0_eqm.training.toy_data import ToySource

DATA_HOME_ENV = "PI0_DATA_HOME"


def data_home() -> Path:
    return Path(os.environ.get(DATA_HOME_ENV, "data")).expanduser()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    asset_id: str | None
    pipeline: Pipeline
    source: Any = None  # the factory, to open the dataset
    fast_tokenizer: Any = None  # pi0_eqm.models.fast.FastTokenizer when the model trains with knowledge insulation

    @property
    def norm_stats(self) -> dict[str, NormStats] | None:
        return self.pipeline.norm_stats


def model_transforms(model: Pi0Config, default_prompt: str | None = None, fast_tokenizer=None) -> _t.Group:
    """Model-input transforms; with knowledge insulation and a fitted FAST tokenizer, training samples also get
    ``fast_tokens`` / ``fast_mask`` (samples without actions, i.e. inference requests, pass through)."""
    tokenizer = make_tokenizer(model)
    h, w = model.image_resolution
    fast = ()
    if model.ki is not None and fast_tokenizer is not None:
        fast = (TokenizeFastActions(fast_tokenizer, model.fast_layout, model.ki.max_fast_tokens),)
    return _t.Group(
        inputs=(
            _t.InjectDefaultPrompt(default_prompt),
            _t.SelectImages(model.image_keys),
            _t.ResizeImages(h, w),
            _t.TokenizePrompt(tokenizer, discrete_state=model.state_in_prompt),
            *fast,
            _t.PadStatesAndActions(model.action_dim),
        )
    )


def check_fast_tokenizer(model: Pi0Config, tok, where: str) -> None:
    """The FAST tokenizer at ``where`` must match the model's horizon, real action dims and FAST vocabulary."""
    real_dim = model.real_action_dim or model.action_dim
    problems = []
    if tok.action_horizon != model.action_horizon:
        problems.append(f"action_horizon {tok.action_horizon} != model's {model.action_horizon}")
    if tok.action_dim != real_dim:
        problems.append(f"action_dim {tok.action_dim} != model's real action dims {real_dim}")
    if tok.vocab_size > model.ki.fast_vocab_size:
        problems.append(f"vocab {tok.vocab_size} > ki.fast_vocab_size {model.ki.fast_vocab_size}")
    if problems:
        raise ValueError(f"FAST tokenizer at {where} does not fit the model ({'; '.join(problems)}); refit it with "
                         "`uv run scripts/compute_norm_stats.py <config>`")


def load_fast_tokenizer(model: Pi0Config, asset_dir: Path):
    """``<asset_dir>/fast_tokenizer`` if the model uses knowledge insulation and it exists, else ``None``."""
    if model.ki is None or not (asset_dir / FAST_TOKENIZER_DIR).exists():
        return None
    tok = FastTokenizer.load(asset_dir / FAST_TOKENIZER_DIR)
    check_fast_tokenizer(model, tok, str(asset_dir / FAST_TOKENIZER_DIR))
    return tok


def make_tokenizer(model: Pi0Config):
    kind = model.tokenizer
    if kind == "auto":
        kind = "bytes" if model.vocab_size < PaligemmaTokenizer.vocab_size_needed else "paligemma"
    tokenizers = {
        "paligemma": lambda: PaligemmaTokenizer(model.max_token_len),
        "bytes": lambda: ByteTokenizer(model.max_token_len),
        "words": lambda: WordHashTokenizer(model.max_token_len, model.text_vocab_size),
    }
    if kind not in tokenizers:
        raise ValueError(f"unknown tokenizer {model.tokenizer!r}; expected auto, paligemma, bytes or words")
    tok = tokenizers[kind]()
    if model.vocab_size < tok.vocab_size_needed:
        raise ValueError(f"vocab_size {model.vocab_size} is too small for the {kind} tokenizer "
                         f"(needs >= {tok.vocab_size_needed})")
    # Prompt ids must stay clear of the FAST tail when knowledge insulation reserves it (PaliGemma: Gemma's 256k
    # text tokens sit below the 1024 loc tokens that FAST reuses, exactly as in openpi's pi0-FAST).
    text_needed = PaligemmaTokenizer.text_vocab_size if kind == "paligemma" else tok.vocab_size_needed
    if model.text_vocab_size < text_needed:
        raise ValueError(f"with knowledge insulation only {model.text_vocab_size} ids are left for text, but the "
                         f"{kind} tokenizer needs {text_needed}; raise vocab_size or lower ki.fast_vocab_size")
    return tok


def _load_stats(assets_dir: Path, asset_id: str) -> dict[str, NormStats] | None:
    path = assets_dir / asset_id
    if not (path / "norm_stats.json").is_file():
        return None
    return load_norm_stats(path)


@dataclasses.dataclass(frozen=True)
class EpisodicDataConfig:
    """Episodes on local disk + robot transforms. ``format``: ``rlds`` (TFDS array_record / TFRecord) or ``lerobot``."""

    robot: str = "libero"  # a name in pi0_eqm.robots.ROBOTS
    format: Literal["rlds", "lerobot"] = "lerobot"
    path: str = "lerobot/physical-intelligence/libero"  # relative paths are under $PI0_DATA_HOME (default ./data)
    asset_id: str = "physical-intelligence/libero"
    extra_delta_transform: bool = False  # actions relative to the state on the robot's delta mask (openpi pi0_libero)
    use_quantile_norm: bool = False
    default_prompt: str | None = None
    how_to_obtain: str = (
        "convert LIBERO with openpi's examples/libero/convert_libero_data_to_lerobot.py or download the "
        "'physical-intelligence/libero' LeRobot dataset, then point --data.path at it"
    )

    def __post_init__(self):
        get_robot(self.robot)

    def resolved_path(self) -> Path:
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else data_home() / p

    def fingerprint(self) -> str | None:
        """The dataset's content fingerprint (``pi0_eqm.data.fingerprint``), recorded with every step."""
        return content_fingerprint(self.resolved_path())

    def open_source(self):
        path = self.resolved_path()
        if not path.exists():
            raise FileNotFoundError(f"dataset not found at {path} (from --data.path={self.path!r}, "
                                    f"${DATA_HOME_ENV}={data_home()}); {self.how_to_obtain}")
        if self.format == "lerobot":
            reader = LeRobotV3Dataset if is_lerobot_v3(path) else LeRobotDataset  # v3.0 or v2.0/v2.1
            return reader(path, **self.spec().lerobot_keys())
        return RldsDataset(path, **self.spec().rlds_keys())

    def spec(self) -> RobotSpec:
        return get_robot(self.robot)

    def create(self, model: Pi0Config, assets_dir: Path, *, load_stats: bool = True) -> DataConfig:
        """The data config; ``load_stats``: read ``<assets_dir>/<asset_id>/norm_stats.json`` (when present) and
        check it against the robot's dims."""
        spec = self.spec()
        real = model.real_action_dim or model.action_dim
        if real != spec.action_dim:
            raise ValueError(f"robot {spec.name!r} has {spec.action_dim}-d actions but the model's real_action_dim is "
                             f"{real}; set --model.real-action-dim={spec.action_dim}")
        robot, robot_actions = _t.Group(inputs=(spec.inputs(),), outputs=(spec.outputs(),)), spec.action_inputs()
        if self.extra_delta_transform:
            if spec.delta_mask is None:
                raise ValueError(f"robot {spec.name!r} declares no delta mask; it cannot train with delta actions")
            delta = _t.DeltaActions(spec.delta_mask)
            robot_actions = (*robot_actions, delta)
            robot = robot.push(inputs=(delta,), outputs=(_t.AbsoluteActions(spec.delta_mask),))
        fast = load_fast_tokenizer(model, assets_dir / self.asset_id)
        try:
            pipeline = Pipeline(repack=_t.Group(inputs=(spec.repack(),)), robot=robot,
                                model=model_transforms(model, self.default_prompt, fast),
                                norm_stats=_load_stats(assets_dir, self.asset_id) if load_stats else None,
                                use_quantile_norm=self.use_quantile_norm,
                                stats_dims={"state": spec.state_dim, "actions": spec.action_dim},
                                robot_actions=robot_actions)
        except NormStatsMismatchError as e:
            raise NormStatsMismatchError(f"{assets_dir / self.asset_id / 'norm_stats.json'}: {e}") from e
        return DataConfig(asset_id=self.asset_id, pipeline=pipeline, source=self, fast_tokenizer=fast)


@dataclasses.dataclass(frozen=True)
class ToyDataConfig:
    """The generated toy task (``pi0_eqm.training.toy_data``): model-ready samples, no transforms or norm stats."""

    num_samples: int = 4096
    asset_id: str | None = None

    def create(self, model: Pi0Config, assets_dir: Path, *, load_stats: bool = True) -> DataConfig:
        fast, transforms = None, _t.Group()
        if model.ki is not None:  # no assets: fit FAST on 1024 generated chunks (deterministic, well under a second)
            source = ToySource(model, 1024, seed=0)
            real = model.real_action_dim or model.action_dim
            chunks = np.stack([source[i]["actions"][:, :real] for i in range(len(source))])
            fast = FastTokenizer.fit(chunks, scale=model.ki.fast_scale, vocab_size=model.ki.fast_vocab_size)
            transforms = _t.Group(inputs=(TokenizeFastActions(fast, model.fast_layout, model.ki.max_fast_tokens),))
        return DataConfig(asset_id=None, pipeline=Pipeline(model=transforms), source=self, fast_tokenizer=fast)

    def fingerprint(self) -> None:
        """Generated samples: no files to fingerprint."""
        return None

    def open_source(self):
        raise TypeError("the toy data config has no episodic source")

    def spec(self) -> None:
        """No robot: the toy samples are model-ready."""
        return None


DataConfigFactory = EpisodicDataConfig | ToyDataConfig
