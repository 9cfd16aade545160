"""Build a ``Policy`` from a checkpoint: its recorded train config (or a given one), params and its own norm stats.

:func:`resolve_checkpoint` turns what a user passes (a run directory, a step directory or an export, and optionally
a config) into the directory to load and the config to load it with: the config recorded in the checkpoint by
default; a given config must agree with the recorded one on the model, decoder kind and data transforms (else a
``ValueError`` names each differing field); checkpoints written before configs were recorded need a given config.
:func:`create_trained_policy` then restores the params, checks their shapes against the config's model and
attaches the checkpoint's norm stats.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

from pi0_eqm.data.normalize import load_norm_stats
from pi0_eqm.data.pipeline import NormStatsMismatchError
from pi0_eqm.decoders.settings import DecoderSettings
from pi0_eqm.policies.policy import Policy
from pi0_eqm.training.checkpoint_dir import latest_step_dir
from pi0_eqm.training.checkpoint_integrity import params_problems
from pi0_eqm.training.checkpoint_integrity import saved_step_problems
from pi0_eqm.training.config import TrainConfig
from pi0_eqm.training.config import get_config
from pi0_eqm.training.config_record import config_differences
from pi0_eqm.training.config_record import read_config
from pi0_eqm.training.config_record import record_path
from pi0_eqm.training.params_io import restore_params

logger = logging.getLogger(__name__)

_MAX_LISTED = 10
# Largest normalized action magnitude a served chunk may have (z-score: standard deviations from the mean; quantile:
# 1 is the 1st/99th percentile). Loose on purpose: near-constant dims have their scale clamped to 1e-3, so a
# deviation of 1 robot unit there is 1000 normalized units; this bound catches garbage (1e30), not poor policies.
MAX_NORMALIZED_ACTION = 1e4


def policy_from_params(config: TrainConfig, params, norm_stats, *, settings: DecoderSettings | None = None,
                       default_prompt: str | None = None) -> Policy:
    pipeline = config.data.create(config.model, config.assets_dir, load_stats=False).pipeline
    pipeline = pipeline.with_norm_stats(norm_stats)
    spec = config.data.spec()
    return Policy(config.model, params, input_transforms=(pipeline.inference_inputs(default_prompt),),
                  output_transforms=(pipeline.inference_outputs(),),
                  action_transforms=(pipeline.warm_start_actions(config.model.action_dim),), settings=settings,
                  metadata=config.policy_metadata, state_key=spec.state_key if spec is not None else ("state",),
                  max_model_action=MAX_NORMALIZED_ACTION if norm_stats else None)


def resolve_checkpoint(checkpoint: str | Path, config: TrainConfig | str | None = None) -> tuple[TrainConfig, Path]:
    """``(config, directory to load)`` for ``checkpoint`` (run dir → its latest committed step).

    ``config`` (a ``TrainConfig`` or a registered name) is optional when the checkpoint records its config; when
    both are there they must agree (``config_differences``) and the recorded config is returned.
    """
    step_dir = latest_step_dir(checkpoint)
    given = get_config(config) if isinstance(config, str) else config
    recorded = read_config(step_dir)
    if recorded is None:
        if given is None:
            raise ValueError(f"{step_dir} records no train config ({record_path(step_dir)} is missing: it was saved "
                             "before checkpoints recorded their config); pass --config <name> with the config it was "
                             "trained with")
        return given, step_dir
    if given is not None:
        diffs = config_differences(given, recorded)
        if diffs:
            shown = "; ".join(diffs[:_MAX_LISTED]) + (f"; ... {len(diffs) - _MAX_LISTED} more"
                                                      if len(diffs) > _MAX_LISTED else "")
            raise ValueError(f"--config {given.name!r} does not match the config checkpoint {step_dir} was trained "
                             f"with ({recorded.name!r}): {shown}. Drop --config to use the checkpoint's own")
    return recorded, step_dir


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in flat}


def check_params_shapes(config: TrainConfig, params, where: Path) -> None:
    """``ValueError`` naming the params whose paths or shapes differ from ``config.model``'s."""
    expected = _flat_shapes(jax.eval_shape(lambda: config.model.init(jax.random.key(0))))
    found = _flat_shapes(params)
    diffs = [f"{k}: missing" for k in expected if k not in found]
    diffs += [f"{k}: not in the model" for k in found if k not in expected]
    diffs += [f"{k}: shape {found[k]} in the checkpoint, {expected[k]} in the model" for k in expected
              if k in found and found[k] != expected[k]]
    if diffs:
        shown = "; ".join(diffs[:_MAX_LISTED]) + (f"; ... {len(diffs) - _MAX_LISTED} more"
                                                  if len(diffs) > _MAX_LISTED else "")
        raise ValueError(f"the params in {where} do not fit config {config.name!r} (action dim "
                         f"{config.model.action_dim}, horizon {config.model.action_horizon}): {shown}")


def create_trained_policy(config: TrainConfig | str | None, checkpoint_dir: str | Path, *,
                          settings: DecoderSettings | None = None, default_prompt: str | None = None) -> Policy:
    """``checkpoint_dir`` is a run directory (latest committed step), a step directory (``<run>/<step>``) or an
    exported directory with ``params/`` and ``assets/<asset_id>/norm_stats.json``; ``config`` as for
    :func:`resolve_checkpoint`. Norm stats come from the checkpoint, not from the config's assets dir."""
    config, checkpoint_dir = resolve_checkpoint(checkpoint_dir, config)
    structure = saved_step_problems(checkpoint_dir)
    if structure:
        raise ValueError(f"checkpoint step {checkpoint_dir} is incomplete or damaged: {'; '.join(structure)}; serve "
                         "an earlier step of the run (pass its step directory)")
    params = restore_params(checkpoint_dir / "params")
    check_params_shapes(config, params, checkpoint_dir)
    damaged = params_problems(checkpoint_dir, params)
    if damaged:
        shown = "; ".join(damaged[:_MAX_LISTED]) + (f"; ... {len(damaged) - _MAX_LISTED} more"
                                                    if len(damaged) > _MAX_LISTED else "")
        raise ValueError(f"the params in {checkpoint_dir} are not the ones that step saved: {shown}; serve an "
                         "earlier step of the run (pass its step directory)")
    norm_stats = None
    asset_id = config.data.asset_id
    if asset_id is not None:
        stats_dir = checkpoint_dir / "assets" / asset_id
        if not (stats_dir / "norm_stats.json").is_file():
            raise FileNotFoundError(f"norm stats missing: expected {stats_dir / 'norm_stats.json'}")
        norm_stats = load_norm_stats(stats_dir)
        try:
            return policy_from_params(config, params, norm_stats, settings=settings, default_prompt=default_prompt)
        except NormStatsMismatchError as e:
            raise NormStatsMismatchError(f"{stats_dir / 'norm_stats.json'}: {e}") from e
    return policy_from_params(config, params, norm_stats, settings=settings, default_prompt=default_prompt)
