"""Named, frozen train configs (openpi-style registry), overridable from the CLI with tyro.

    uv run scripts/train.py pi0_eqm_libero --exp-name=run1 [--resume | --overwrite] [--batch-size=...]

``pi0_libero`` (flow baseline) and ``pi0_eqm_libero`` differ only in the decoder; the ``*_ki_*`` variants add
knowledge insulation (``pi0_eqm.models.ki``), which ``<config> --ki`` turns on for any config (then
``--model.ki.loss-weight`` etc. apply). ``debug*`` configs train a tiny model on generated data in seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
import sys
from typing import Any
from typing import get_args

import tyro

from pi0_eqm.envs.tasks import DEFAULT_TASKS
from pi0_eqm.envs.tasks import dataset_name
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import DecoderConfig
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.models.gemma import PALIGEMMA_VOCAB_SIZE
from pi0_eqm.models.ki import KIConfig
from pi0_eqm.models.pi0 import Pi0Config
from pi0_eqm.training import weights as _weights
from pi0_eqm.training.data_config import DataConfigFactory
from pi0_eqm.training.data_config import EpisodicDataConfig
from pi0_eqm.training.data_config import ToyDataConfig
from pi0_eqm.training.freeze import FreezeConfig
from pi0_eqm.training.optimizer import AdamW
from pi0_eqm.training.optimizer import ConstantSchedule
from pi0_eqm.training.optimizer import CosineDecaySchedule
from pi0_eqm.training.optimizer import LRScheduleConfig


def _check_run_name(field: str, value: str) -> None:
    """A config or experiment name is one path component: non-empty, no separators, not ``.``/``..``."""
    bad = not value or value.strip() != value or value in (".", "..") or "/" in value or "\\" in value \
        or "\0" in value or ".." in value
    if bad:
        raise ValueError(
            f"--{field.replace('_', '-')}={value!r} is not a valid run name: it names the directory "
            f"<checkpoint base dir>/<config>/<exp name>, so it must be non-empty, without leading/trailing spaces, "
            "path separators or '..'"
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str
    exp_name: str = "default"
    model: Pi0Config = dataclasses.field(default_factory=Pi0Config)
    data: DataConfigFactory = dataclasses.field(default_factory=ToyDataConfig)
    weight_loader: Any = dataclasses.field(default_factory=lambda: _weights.NoOpWeightLoader())
    lr_schedule: LRScheduleConfig = dataclasses.field(default_factory=CosineDecaySchedule)
    optimizer: AdamW = dataclasses.field(default_factory=AdamW)
    ema_decay: float | None = 0.99
    freeze: FreezeConfig = dataclasses.field(default_factory=FreezeConfig)
    seed: int = 42
    batch_size: int = 32  # global
    num_train_steps: int = 30_000
    log_interval: int = 100
    save_interval: int = 1000
    keep_period: int | None = 5000
    max_to_keep: int = 1
    num_workers: int = 2  # data-loading threads
    fsdp_devices: int = 1
    fsdp_min_size_mbytes: float = 4.0  # arrays smaller than this are replicated, not FSDP-sharded
    checkpoint_base_dir: str = "./checkpoints"
    assets_base_dir: str = "./assets"
    overwrite: bool = False
    resume: bool = False
    wandb_enabled: bool = False
    project_name: str = "pi0_eqm"
    async_checkpoint: bool = True
    # openpi's training-time image augmentation (pi0_eqm.training.augment); off in the CPU configs below, whose
    # README figures were measured without it
    augment_images: bool = True
    policy_metadata: dict | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume are mutually exclusive")
        _check_run_name("exp_name", self.exp_name)
        _check_run_name("name", self.name)
        if self.max_to_keep < 1:
            raise ValueError(f"--max-to-keep must be >= 1 (the latest steps kept on disk), got {self.max_to_keep}")
        if self.fsdp_min_size_mbytes < 0:
            raise ValueError(f"--fsdp-min-size-mbytes must be >= 0, got {self.fsdp_min_size_mbytes}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint_base_dir) / self.name / self.exp_name

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets_base_dir) / self.name


_LIBERO_DATA = EpisodicDataConfig(robot="libero", format="lerobot", path="lerobot/physical-intelligence/libero",
                                  asset_id="physical-intelligence/libero", extra_delta_transform=True)
_PI0_BASE = _weights.CheckpointWeightLoader("checkpoints/pi0_base/params")
_ALOHA_SIM_DATA = EpisodicDataConfig(
    robot="aloha_sim", format="lerobot", path="lerobot/aloha_sim_transfer_cube_human",
    asset_id="lerobot/aloha_sim_transfer_cube_human", default_prompt="Transfer cube",
    how_to_obtain="download the 'lerobot/aloha_sim_transfer_cube_human' LeRobot dataset (or record one in its layout) "
                  "and point --data.path at it")
# The ALOHA sim tasks' prompts (``pi0_eqm.envs.aloha_sim.PROMPTS``; a test keeps the two equal).
_ALOHA_SIM_PROMPTS = {"transfer_cube": "Transfer cube", "insertion": "Insert the peg into the socket"}
# EqM feeds t ≡ 0 through the same time path, so a π₀ base checkpoint fills every param; nothing is missing.
_PI05_BASE = _weights.CheckpointWeightLoader("checkpoints/pi05_base/params")

_DEBUG_MODEL = dict(real_action_dim=4)
# Word tokens of the longest LIBERO instruction (libero_spatial / libero_10: 19 words + BOS + newline = 21), rounded up.
_LIBERO_PROMPT_TOKENS = 24

_METAWORLD_DATA = EpisodicDataConfig(
    robot="metaworld", format="rlds", path="metaworld/" + dataset_name(DEFAULT_TASKS, 10, 0, 64), asset_id="metaworld",
    how_to_obtain="generate it with `uv run scripts/generate_demos.py --episodes-per-task 10 --resolution 64`",
)


# Knowledge insulation (FAST next-token loss on the backbone, stop-gradient K/V for the expert). LIBERO: 50 × 7
# normalised actions → ~100–150 FAST tokens (openpi's pi0_fast_libero uses 180 prompt + action tokens for H = 10).
_KI_LIBERO = KIConfig(max_fast_tokens=192)
# Embedded benchmark: the words tokenizer keeps its 512 text ids; FAST gets 512 ids and 16 skipped ones above them.
_KI_METAWORLD = KIConfig(max_fast_tokens=64, fast_vocab_size=512, skip_tokens=16)
_KI_DEBUG = KIConfig(max_fast_tokens=24, fast_vocab_size=128, skip_tokens=2)


def _cpu_recipe(name: str, model: Pi0Config, data, *, steps: int, env: str) -> TrainConfig:
    """The small-model CPU recipe shared by the embedded benchmark and LIBERO on a CPU: batch 32, cosine 100 → 1e-3
    → 1e-4 over ``steps``, EMA 0.99, a checkpoint every 500 steps (the latest kept), no image augmentation."""
    return TrainConfig(
        name=name,
        model=model,
        data=data,
        lr_schedule=CosineDecaySchedule(warmup_steps=100, peak_lr=1e-3, decay_steps=steps, decay_lr=1e-4),
        optimizer=AdamW(weight_decay=1e-10),
        ema_decay=0.99,
        batch_size=32,
        num_train_steps=steps,
        log_interval=50,
        save_interval=500,
        keep_period=None,
        max_to_keep=1,
        num_workers=2,
        policy_metadata={"env": env},
        augment_images=False,
    )


def _metaworld(name: str, decoder, preset: str = "pi0_metaworld") -> TrainConfig:
    """The embedded benchmark: flow and EqM trained identically (same data, steps, seed) on Meta-World demos.
    π₀.5 (``preset="pi05_metaworld"``) normalises with quantiles, as openpi's π₀.5 configs."""
    data = dataclasses.replace(_METAWORLD_DATA, use_quantile_norm=True) if preset.startswith("pi05") else _METAWORLD_DATA
    return _cpu_recipe(name, model_config(preset, decoder), data, steps=1500, env="metaworld")


def _libero_cpu(name: str, decoder) -> TrainConfig:
    """LIBERO sized for a CPU: the embedded benchmark's 0.7M-parameter model on the agent and wrist views at 64 px,
    H = 16, the LIBERO transform stack with absolute (un-shifted) delta-pose actions, 1000 steps of batch 32."""
    model = model_config("pi0_metaworld", decoder, real_action_dim=7, max_token_len=_LIBERO_PROMPT_TOKENS)
    data = dataclasses.replace(_LIBERO_DATA, path="lerobot/libero_object_scripted", extra_delta_transform=False)
    return _cpu_recipe(name, model, data, steps=1000, env="libero")


def _debug(name: str, model: Pi0Config, data, *, lr: float, batch_size: int = 8, ema_decay: float | None = None):
    """CPU debugging configs: tiny model, 10 steps, a checkpoint every 5."""
    return TrainConfig(name=name, model=model, data=data, lr_schedule=ConstantSchedule(lr), batch_size=batch_size,
                       num_train_steps=10, log_interval=1, save_interval=5, keep_period=None, max_to_keep=2,
                       ema_decay=ema_decay, augment_images=False)


def _pi05_libero(name: str, decoder, ki: KIConfig | None = None) -> TrainConfig:
    """openpi's ``pi05_libero``: H 10, quantile norm, no extra delta transform, batch 256, cosine 10k → 5e-5 (decaying
    over 1e6 steps, i.e. ~constant for the 30k trained), EMA 0.999, ``pi05_base`` init. The state stays out of the
    prompt (``discrete_state_input=False``, as openpi) except with knowledge insulation, where the backbone needs it."""
    model = model_config("pi05", decoder, action_horizon=10, real_action_dim=7, discrete_state_input=ki is not None,
                         ki=ki)
    return TrainConfig(
        name=name,
        model=model,
        data=dataclasses.replace(_LIBERO_DATA, extra_delta_transform=False, use_quantile_norm=True),
        weight_loader=_PI05_BASE,
        lr_schedule=CosineDecaySchedule(warmup_steps=10_000, peak_lr=5e-5, decay_steps=1_000_000, decay_lr=5e-5),
        ema_decay=0.999,
        batch_size=256,
    )


def _aloha_sim(name: str, decoder) -> TrainConfig:
    """openpi's ``pi0_aloha_sim``: π₀ on ``lerobot/aloha_sim_transfer_cube_human``, π units (``adapt_to_pi``),
    absolute joint actions (no delta), prompt "Transfer cube", π₀ base init, 20k steps."""
    return TrainConfig(name=name, model=model_config("pi0", decoder, real_action_dim=14), data=_ALOHA_SIM_DATA,
                       weight_loader=_PI0_BASE, num_train_steps=20_000)


def _aloha_sim_cpu(name: str, decoder, preset: str = "pi0_metaworld", task: str = "transfer_cube") -> TrainConfig:
    """An ALOHA sim task on a CPU: the embedded benchmark's 0.7M-parameter model on the top camera at 64 px, 14-d
    joints in π units, H 16 (0.32 s at 50 Hz), the scripted demos of ``scripts/generate_aloha_demos.py --task <task>``
    (30 kept episodes, seed 0), batch 32, 1500 steps. π₀.5 (``preset="pi05_metaworld"``) normalises with quantiles,
    as openpi's π₀.5 configs. ``scripts/eval.py`` evaluates it on ``task`` (``policy_metadata["tasks"]``)."""
    # π₀.5's prompt holds the 14 state bins: "Task: insert the peg into the socket, State: …;\nAction: " is 29 words.
    tokens = {"max_token_len": 32} if preset.startswith("pi05") else {}
    model = model_config(preset, decoder, real_action_dim=14, image_keys=("base_0_rgb",), **tokens)
    flag = "" if task == "transfer_cube" else f" --task {task}"
    data = dataclasses.replace(_ALOHA_SIM_DATA, path=f"lerobot/aloha_sim_{task}_scripted_e30_s0_r64",
                               asset_id=f"aloha_sim_{task}_scripted", default_prompt=_ALOHA_SIM_PROMPTS[task],
                               how_to_obtain=f"uv run scripts/generate_aloha_demos.py{flag} --episodes 30 --resolution 64",
                               use_quantile_norm=preset.startswith("pi05"))
    config = _cpu_recipe(name, model, data, steps=1500, env="aloha_sim")
    return dataclasses.replace(config, policy_metadata={**config.policy_metadata, "tasks": [task]})


def _low_mem(name: str, decoder) -> TrainConfig:
    """openpi's ``pi0_libero_low_mem_finetune``: ``gemma_2b_lora`` + ``gemma_300m_lora``, π₀ base init, no EMA."""
    return TrainConfig(
        name=name,
        model=model_config("pi0", decoder, paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora",
                           real_action_dim=7),
        data=_LIBERO_DATA,
        weight_loader=_PI0_BASE,
        ema_decay=None,
    )


def with_ki(config: TrainConfig, ki: KIConfig | None = None, name: str | None = None) -> TrainConfig:
    """``config`` trained with knowledge insulation (``name`` defaults to ``<name>_ki``).

    PaliGemma-vocab models map FAST onto the vocab tail (openpi's pi0-FAST layout, ``KIConfig()``); small-vocab CPU
    models keep their text ids and grow the vocab by the FAST ids + skipped ids (512 + 16 by default).
    """
    model = config.model
    if model.ki is not None:
        return config
    paligemma = model.vocab_size >= PALIGEMMA_VOCAB_SIZE
    ki = ki or (KIConfig() if paligemma else _KI_METAWORLD)
    vocab = model.vocab_size if paligemma else model.vocab_size + ki.fast_vocab_size + ki.skip_tokens
    return dataclasses.replace(config, name=name or f"{config.name}_ki",
                               model=dataclasses.replace(model, ki=ki, vocab_size=vocab))


_CONFIGS: list[TrainConfig] = [
    # ---------------------------------------------------------------------------------------------- LIBERO
    TrainConfig(
        name="pi0_libero",
        model=model_config("pi0", FlowConfig(), real_action_dim=7),
        data=_LIBERO_DATA,
        weight_loader=_PI0_BASE,
    ),
    TrainConfig(
        name="pi0_eqm_libero",
        model=model_config("pi0", EqmConfig(), real_action_dim=7),
        data=_LIBERO_DATA,
        weight_loader=_PI0_BASE,
    ),
    # LIBERO with knowledge insulation (π₀.5-KI recipe) for either decoder
    TrainConfig(
        name="pi0_ki_libero",
        model=model_config("pi0", FlowConfig(), real_action_dim=7, ki=_KI_LIBERO),
        data=_LIBERO_DATA,
        weight_loader=_PI0_BASE,
    ),
    TrainConfig(
        name="pi0_eqm_ki_libero",
        model=model_config("pi0", EqmConfig(), real_action_dim=7, ki=_KI_LIBERO),
        data=_LIBERO_DATA,
        weight_loader=_PI0_BASE,
    ),
    # ALOHA simulator (openpi's pi0_aloha_sim) for both decoders
    _aloha_sim("pi0_aloha_sim", FlowConfig()),
    _aloha_sim("pi0_eqm_aloha_sim", EqmConfig()),
    _aloha_sim_cpu("pi0_aloha_sim_cpu", FlowConfig()),
    _aloha_sim_cpu("pi0_eqm_aloha_sim_cpu", EqmConfig()),
    _aloha_sim_cpu("pi05_aloha_sim_cpu", FlowConfig(), "pi05_metaworld"),
    _aloha_sim_cpu("pi05_eqm_aloha_sim_cpu", EqmConfig(), "pi05_metaworld"),
    _aloha_sim_cpu("pi0_aloha_sim_insertion_cpu", FlowConfig(), task="insertion"),
    _aloha_sim_cpu("pi0_eqm_aloha_sim_insertion_cpu", EqmConfig(), task="insertion"),
    # LIBERO LoRA fine-tuning (openpi's pi0_libero_low_mem_finetune): LoRA on both Gemmas, their base weights frozen
    # (and stored in bf16), SigLIP and the projections trained, no EMA.
    _low_mem("pi0_libero_low_mem_finetune", FlowConfig()),
    _low_mem("pi0_eqm_libero_low_mem_finetune", EqmConfig()),
    # π₀.5 on LIBERO (openpi's recipe) for both decoders, and with knowledge insulation (discrete state in the prompt)
    _pi05_libero("pi05_libero", FlowConfig()),
    _pi05_libero("pi05_eqm_libero", EqmConfig()),
    _pi05_libero("pi05_ki_libero", FlowConfig(), ki=_KI_LIBERO),
    _pi05_libero("pi05_eqm_ki_libero", EqmConfig(), ki=_KI_LIBERO),
    # ------------------------------------------------------------------------- embedded benchmark (Meta-World)
    _metaworld("pi0_metaworld", FlowConfig()),
    _metaworld("pi0_eqm_metaworld", EqmConfig()),
    with_ki(_metaworld("pi0_metaworld", FlowConfig()), _KI_METAWORLD, name="pi0_ki_metaworld"),
    with_ki(_metaworld("pi0_eqm_metaworld", EqmConfig()), _KI_METAWORLD, name="pi0_eqm_ki_metaworld"),
    _metaworld("pi05_metaworld", FlowConfig(), "pi05_metaworld"),
    _metaworld("pi05_eqm_metaworld", EqmConfig(), "pi05_metaworld"),
    with_ki(_metaworld("pi05_metaworld", FlowConfig(), "pi05_metaworld"), _KI_METAWORLD, name="pi05_ki_metaworld"),
    with_ki(_metaworld("pi05_eqm_metaworld", EqmConfig(), "pi05_metaworld"), _KI_METAWORLD,
            name="pi05_eqm_ki_metaworld"),
    # real-time chunking trained in (docs/realtime.md): up to 8 committed rows per training chunk (s = 8 of H = 16)
    _metaworld("pi0_rtc_metaworld", FlowConfig(max_delay=8)),
    _metaworld("pi0_eqm_prefix_metaworld", EqmConfig(max_delay=8)),
    _metaworld("pi0_eqm_prefix_flag_metaworld", EqmConfig(max_delay=8, prefix_flag=True)),
    # LIBERO on a CPU, both decoders trained identically (README, "LIBERO on a CPU")
    _libero_cpu("pi0_libero_cpu", FlowConfig()),
    _libero_cpu("pi0_eqm_libero_cpu", EqmConfig()),
    # --------------------------------------------------------------------------------------- CPU debugging
    _debug("debug", model_config("pi0_tiny", FlowConfig(), **_DEBUG_MODEL), ToyDataConfig(), lr=3e-3),
    _debug("debug_eqm", model_config("pi0_tiny", EqmConfig(), **_DEBUG_MODEL), ToyDataConfig(), lr=3e-3,
           ema_decay=0.9),
    _debug("debug_ki", model_config("pi0_tiny", FlowConfig(), ki=_KI_DEBUG, **_DEBUG_MODEL), ToyDataConfig(), lr=3e-3),
    _debug("debug_eqm_ki", model_config("pi0_tiny", EqmConfig(), ki=_KI_DEBUG, **_DEBUG_MODEL), ToyDataConfig(),
           lr=3e-3, ema_decay=0.9),
    _debug("debug_pi05", model_config("pi05_tiny", FlowConfig(), **_DEBUG_MODEL), ToyDataConfig(), lr=3e-3),
    _debug("debug_pi05_eqm", model_config("pi05_tiny", EqmConfig(), **_DEBUG_MODEL), ToyDataConfig(), lr=3e-3,
           ema_decay=0.9),
    _debug("debug_pi05_ki", model_config("pi05_tiny", FlowConfig(), ki=_KI_DEBUG, **_DEBUG_MODEL), ToyDataConfig(),
           lr=3e-3),
    # tiny LoRA configs (the low-mem recipe on the tiny model)
    _debug("debug_lora", model_config("pi0_tiny", FlowConfig(), paligemma_variant="gemma_tiny_lora",
                                      action_expert_variant="gemma_tiny_expert_lora", **_DEBUG_MODEL),
           ToyDataConfig(), lr=3e-3),
    _debug("debug_eqm_lora", model_config("pi0_tiny", EqmConfig(), paligemma_variant="gemma_tiny_lora",
                                          action_expert_variant="gemma_tiny_expert_lora", **_DEBUG_MODEL),
           ToyDataConfig(), lr=3e-3),
    # tiny π₀-EqM with the full LIBERO transform stack (LeRobot data under --data.path)
    _debug("debug_libero", model_config("pi0_tiny", EqmConfig(), real_action_dim=7, tokenizer="words",
                                        max_token_len=_LIBERO_PROMPT_TOKENS),
           dataclasses.replace(_LIBERO_DATA, path="lerobot/debug_libero"), lr=1e-3, batch_size=4),
    # tiny π₀-EqM with the ALOHA layout (3 cameras, 14-d joints) in openpi's π units (adapt_to_pi=True)
    _debug("debug_aloha", model_config("pi0_tiny", EqmConfig(), real_action_dim=14, tokenizer="words",
                                       max_token_len=12),
           EpisodicDataConfig(robot="aloha", format="lerobot", path="lerobot/debug_aloha", asset_id="aloha"),
           lr=1e-3, batch_size=4),
    # the same in ALOHA units throughout (adapt_to_pi=False), as RoboTwin's π₀ adapter sends them
    _debug("debug_robotwin", model_config("pi0_tiny", EqmConfig(), real_action_dim=14, tokenizer="words",
                                          max_token_len=12),
           EpisodicDataConfig(robot="robotwin", format="lerobot", path="lerobot/debug_robotwin", asset_id="robotwin"),
           lr=1e-3, batch_size=4),
]


def register(config: TrainConfig) -> None:
    if any(c.name == config.name for c in _CONFIGS):
        raise ValueError(f"config {config.name!r} is already registered")
    _CONFIGS.append(config)


def configs() -> dict[str, TrainConfig]:
    names = [c.name for c in _CONFIGS]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate config names: {sorted(dup)}")
    return {c.name: c for c in _CONFIGS}


def get_config(name: str) -> TrainConfig:
    all_configs = configs()
    if name not in all_configs:
        close = difflib.get_close_matches(name, all_configs, n=1, cutoff=0.0)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown config {name!r}.{hint} Available: {sorted(all_configs)}")
    return all_configs[name]


# Decoder kind → its default config ("flow" → FlowConfig(), "eqm" → EqmConfig()).
_DECODER_DEFAULTS = {cls().kind: cls for cls in get_args(DecoderConfig)}


def _decoder_kind(args: list[str]) -> tuple[str | None, list[str]]:
    """The value of ``--model.decoder.kind`` (``X`` or ``=X`` form) and the remaining args."""
    for i, a in enumerate(args):
        if a.startswith("--model.decoder.kind="):
            return a.split("=", 1)[1], args[:i] + args[i + 1:]
        if a == "--model.decoder.kind" and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2:]
    return None, args


def with_decoder_kind(config: TrainConfig, kind: str) -> TrainConfig:
    """``config`` with the default decoder of ``kind`` (unchanged if it already has that kind)."""
    if kind not in _DECODER_DEFAULTS:
        raise ValueError(f"unknown decoder kind {kind!r}; expected one of {sorted(_DECODER_DEFAULTS)}")
    if config.model.decoder.kind == kind:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, decoder=_DECODER_DEFAULTS[kind]()))


def cli(args: list[str] | None = None) -> TrainConfig:
    """``<config name> [--ki] [--model.decoder.kind flow|eqm] [--field=value ...]`` → the config with overrides
    applied (tyro).

    ``--ki`` turns knowledge insulation on for any config (``with_ki``); its ``--model.ki.*`` fields then apply.
    ``--model.decoder.kind`` swaps in that decoder's default config before the other overrides, so its own
    ``--model.decoder.*`` fields apply (tyro itself offers only the config's current kind).
    """
    args = list(sys.argv[1:] if args is None else args)
    ki = "--ki" in args
    args = [a for a in args if a != "--ki"]
    kind, args = _decoder_kind(args)

    def variant(c: TrainConfig) -> TrainConfig:
        c = with_ki(c) if ki else c
        return with_decoder_kind(c, kind) if kind is not None else c

    return tyro.extras.overridable_config_cli(
        {c.name: (f"{c.name}{' with knowledge insulation' if ki else ''} ({variant(c).model.decoder.kind} decoder; "
                  f"--model.decoder.kind {'|'.join(sorted(_DECODER_DEFAULTS))} selects it)", variant(c))
         for c in _CONFIGS},
        args=args)
