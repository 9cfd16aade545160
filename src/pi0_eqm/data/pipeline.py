"""The transform order, assembled in one place for every stage (openpi's data-config groups).

A ``Pipeline`` holds the transform groups of one train config and its norm stats::

    training      repack → robot inputs → Normalize → model inputs          (a dataset sample → model-ready dict)
    statistics    repack → robot inputs                                     (for computing the norm stats)
    inference     robot inputs → Normalize → model inputs                   (a client observation)
                  model outputs → Unnormalize → robot outputs               (the model's chunk → robot actions)
    warm start    delta actions → Normalize (actions) → pad                 (a previous robot chunk → model space)

``repack`` maps dataset keys to the client's keys, ``robot`` is the robot's input/output transforms (plus delta
actions), ``model`` tokenizes, resizes and pads. ``stats_dims`` (the robot's state and action dims) is what the norm
stats must match exactly: stats of another width are refused, never sliced or padded. Training, norm stats, serving
and analysis all take their chains from here.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

from pi0_eqm.data import transforms as _t
from pi0_eqm.data.normalize import NormStats


class NormStatsMismatchError(ValueError):
    """Norm stats whose keys or widths do not fit the robot they are applied to."""


@dataclasses.dataclass(frozen=True)
class Pipeline:
    repack: _t.Group = _t.Group()
    robot: _t.Group = _t.Group()
    model: _t.Group = _t.Group()
    norm_stats: Mapping[str, NormStats] | None = None
    use_quantile_norm: bool = False
    stats_dims: Mapping[str, int] | None = None  # e.g. {"state": 8, "actions": 7}
    # The robot input transforms that act on actions (delta actions), applied again to bring a robot-space chunk back
    # into model space (warm start, real-time prefix).
    robot_actions: tuple[_t.DataTransformFn, ...] = ()

    def __post_init__(self):
        if self.norm_stats is None or self.stats_dims is None:
            return
        problems = []
        for key, dim in self.stats_dims.items():
            stats = self.norm_stats.get(key)
            if stats is None:
                problems.append(f"no {key!r} entry (it has {sorted(self.norm_stats)})")
            elif stats.mean.shape[0] != dim:
                problems.append(f"{key!r} has {stats.mean.shape[0]} dims, the robot's {key} has {dim}")
            elif self.use_quantile_norm and stats.q01 is None:
                problems.append(f"{key!r} has no q01/q99, which quantile normalization needs")
        if problems:
            raise NormStatsMismatchError(f"norm stats do not fit this config: {'; '.join(problems)}. Compute them "
                                         "for this config's robot and data (scripts/compute_norm_stats.py <config>)")

    def with_norm_stats(self, norm_stats: Mapping[str, NormStats] | None) -> Pipeline:
        return dataclasses.replace(self, norm_stats=norm_stats)

    def _normalize(self) -> _t.Normalize:
        return _t.Normalize(self.norm_stats, self.use_quantile_norm)

    def training(self, passthrough: tuple[str, ...] = ()) -> _t.DataTransformFn:
        """A dataset sample → a model-ready dict, plus the sample's ``passthrough`` keys unchanged."""
        fn = _t.compose([*self.repack.inputs, *self.robot.inputs, self._normalize(), *self.model.inputs])
        return _t.PassThrough(fn, tuple(passthrough)) if passthrough else fn

    def statistics(self) -> _t.DataTransformFn:
        return _t.compose([*self.repack.inputs, *self.robot.inputs])

    def inference_inputs(self, default_prompt: str | None = None) -> _t.DataTransformFn:
        prompt = [_t.InjectDefaultPrompt(default_prompt)] if default_prompt is not None else []
        return _t.compose([*self.robot.inputs, self._normalize(), *prompt, *self.model.inputs])

    def inference_outputs(self) -> _t.DataTransformFn:
        return _t.compose([*self.model.outputs, _t.Unnormalize(self.norm_stats, self.use_quantile_norm),
                           *self.robot.outputs])

    def warm_start_actions(self, action_dim: int) -> _t.DataTransformFn:
        """The action part of the inference inputs: ``{"state", "actions"}`` in robot space → model-space actions."""
        stats = {k: v for k, v in (self.norm_stats or {}).items() if k == "actions"} or None
        return _t.compose([*self.robot_actions, _t.Normalize(stats, self.use_quantile_norm),
                           _t.PadStatesAndActions(action_dim)])
