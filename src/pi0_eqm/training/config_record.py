"""The train config a checkpoint was made with, as JSON: written into every step and export, read back to serve it.

``<step>/train_config/train_config.json`` (an orbax JSON item, committed with the step) and the same path in an
exported directory hold ``{"format": 1, "config": <TrainConfig as JSON>}``. Dataclasses are written as
``{"__class__": "<module>.<QualName>", <fields>}`` and rebuilt only from ``pi0_eqm`` modules; tuples are written as
lists and rebuilt as tuples where the field's annotation says ``tuple``. The weight loader is written for the record
but read back as the no-op loader (a served checkpoint loads no other weights).

:func:`config_differences` lists the fields that decide whether a checkpoint can be served under another config
(model structure, decoder kind, robot and normalization), so a mismatched ``--config`` is refused by name.
:func:`resume_differences` lists every field a ``--resume`` may not change: all of them but the run length, the
checkpointing/logging cadence, where files live and how many devices or loader threads run it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any

from pi0_eqm.training.checkpoint_layout import TRAIN_CONFIG_FILE
from pi0_eqm.training.checkpoint_layout import TRAIN_CONFIG_ITEM
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.weights import NoOpWeightLoader

FORMAT = 1
DATA_FINGERPRINT = "data_fingerprint"  # the record's key for the training data's content fingerprint
_CLASS = "__class__"
_TRUSTED_PREFIX = "pi0_eqm."

# Fields compared by ``config_differences`` (dotted paths into the JSON form). Everything under ``model`` except
# the decoder's training and solver options (evaluation settings override those), plus the data transforms.
_IGNORED_MODEL = ("model.remat",)
_DATA_FIELDS = ("robot", "format", "asset_id", "extra_delta_transform", "use_quantile_norm")


def record_path(directory: str | os.PathLike) -> Path:
    """Where a step or exported directory keeps its train config."""
    return Path(directory) / TRAIN_CONFIG_ITEM / TRAIN_CONFIG_FILE


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        out = {_CLASS: f"{cls.__module__}.{cls.__qualname__}"}
        out.update({f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return out
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot record a {type(value).__name__} in a train config: {value!r}")


def _class(name: str) -> type:
    module, _, qualname = name.rpartition(".")
    if not module.startswith(_TRUSTED_PREFIX):
        raise ValueError(f"train config record names class {name!r} outside pi0_eqm; refusing to build it")
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"train config record names class {name!r}, which this version does not have ({e})") from e
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"train config record names {name!r}, which is not a dataclass")
    return cls


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and _CLASS in value:
        cls = _class(value[_CLASS])
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(fields) - {_CLASS})
        if unknown:
            raise ValueError(f"train config record has fields {unknown} that {cls.__name__} does not have "
                             "(written by a newer version?)")
        kwargs = {}
        for name, v in value.items():
            if name == _CLASS:
                continue
            v = _from_json(v)
            if isinstance(v, list) and "tuple" in str(fields[name].type):
                v = tuple(v)
            kwargs[name] = v
        return cls(**kwargs)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def config_to_record(config: TrainConfig, data_fingerprint: str | None = None) -> dict:
    """The JSON-ready record of ``config``, with the training data's content fingerprint
    (``pi0_eqm.data.fingerprint``) when it has files."""
    record = {"format": FORMAT, "config": _to_json(config)}
    if data_fingerprint is not None:
        record[DATA_FINGERPRINT] = data_fingerprint
    return record


def config_from_record(record: dict) -> TrainConfig:
    """The ``TrainConfig`` of a record written by :func:`config_to_record` (weight loader: no-op)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT or "config" not in record:
        raise ValueError(f"not a train config record of format {FORMAT}")
    data = dict(record["config"])
    data["weight_loader"] = _to_json(NoOpWeightLoader())
    config = _from_json(data)
    if not isinstance(config, TrainConfig):
        raise ValueError(f"train config record holds a {type(config).__name__}, not a TrainConfig")
    return config


def _read_record(directory: str | os.PathLike) -> Any:
    """The raw record of a step or exported directory, or ``None`` if it has none (older checkpoints)."""
    path = record_path(directory)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e})") from e


def _config_of(record: dict | None, directory: str | os.PathLike) -> TrainConfig | None:
    if record is None:
        return None
    try:
        return config_from_record(record)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{record_path(directory)}: {e}") from e


def read_config(directory: str | os.PathLike) -> TrainConfig | None:
    """The train config recorded in a step or exported directory, or ``None`` if it has none (older checkpoints)."""
    return _config_of(_read_record(directory), directory)


def read_config_and_data(directory: str | os.PathLike) -> tuple[TrainConfig | None, str | None]:
    """The recorded train config and data fingerprint of a step (``None`` for what it does not record)."""
    record = _read_record(directory)
    return _config_of(record, directory), record.get(DATA_FINGERPRINT) if isinstance(record, dict) else None


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k != _CLASS:
                out.update(_flatten(v, f"{prefix}.{k}"))
        if _CLASS in value:
            out[f"{prefix}.type"] = value[_CLASS].rpartition(".")[2]
        return out
    return {prefix: value}


def _compared(config: TrainConfig) -> dict[str, Any]:
    model = _flatten(_to_json(config.model), "model")
    model = {k: v for k, v in model.items()
             if k not in _IGNORED_MODEL and (not k.startswith("model.decoder.") or k == "model.decoder.kind")}
    data = _to_json(config.data)
    model["data.type"] = data[_CLASS].rpartition(".")[2]
    model.update({f"data.{f}": data[f] for f in _DATA_FIELDS if f in data})
    return model


# Fields a resumed run may change (top-level TrainConfig names; everything under them is ignored too).
RESUMABLE_FIELDS = ("resume", "overwrite", "num_train_steps", "log_interval", "save_interval", "keep_period",
                    "max_to_keep", "num_workers", "fsdp_devices", "fsdp_min_size_mbytes", "checkpoint_base_dir",
                    "assets_base_dir", "wandb_enabled", "project_name", "async_checkpoint", "weight_loader")


def resume_differences(given: TrainConfig, recorded: TrainConfig, given_data: str | None = None,
                       recorded_data: str | None = None) -> list[str]:
    """``"<field>: <recorded> in the checkpoint, <given> now"`` for each field outside :data:`RESUMABLE_FIELDS`
    that differs between the recorded config of the step being resumed and the new config; and the data's content
    when both fingerprints are known and differ (same path, other files)."""
    a, b = _flatten(_to_json(given), "config"), _flatten(_to_json(recorded), "config")
    skip = tuple(f"config.{f}" for f in RESUMABLE_FIELDS)
    keys = [k for k in sorted(set(a) | set(b)) if not any(k == p or k.startswith(p + ".") for p in skip)]
    out = [f"{k.removeprefix('config.')}: {b.get(k)!r} in the checkpoint, {a.get(k)!r} now"
           for k in keys if a.get(k) != b.get(k)]
    if given_data is not None and recorded_data is not None and given_data != recorded_data:
        out.append(f"the data's content (sizes and first/last bytes of its files, pi0_eqm.data.fingerprint): "
                   f"{recorded_data[:19]}… in the checkpoint, {given_data[:19]}… now")
    return out


def config_differences(given: TrainConfig, recorded: TrainConfig) -> list[str]:
    """``"<field>: <given> in --config, <recorded> in the checkpoint"`` for each field that differs."""
    a, b = _compared(given), _compared(recorded)
    return [f"{k}: {a.get(k)!r} in --config, {b.get(k)!r} in the checkpoint"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
