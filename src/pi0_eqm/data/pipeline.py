"""The transform order, assembled in one place for every stage (openpi's data-config groups).

A ``Pipeline`` holds the transform groups of one train config and its norm stats::

    training      repack → robot inputs → Normalize → model inputs          (a dataset sample → model-ready dict)
    statistics    repack → robot inputs                                     (for computing the norm stats)
    inference     robot inputs → Normalize → model inputs                   (a client observation)
                  model outputs → Unnormalize → robot outputs               (the model's chunk → robot actions)
    warm start    delta actions → Normalize (actions) → pad                 (a previous robot chunk → model space)

``repack`` maps dataset keys to the client's keys, ``robot`` is the robot's input/output transforms (plus delta
actions), ``model`` tokenizes, resizes and pads. Training, norm stats, serving and analysis all take their chains
from here.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

from pi0_eqm.data import transforms as _t
from pi0_eqm.data.normalize import NormStats


@dataclasses.dataclass(frozen=True)
class Pipeline:
    repack: _t.Group = _t.Group()
    robot: _t.Group = _t.Group()
    model: _t.Group = _t.Group()
    norm_stats: Mapping[str, NormStats] | None = None
    use_quantile_norm: bool = False

    def with_norm_stats(self, norm_stats: Mapping[str, NormStats] | None) -> Pipeline:
        return dataclasses.replace(self, norm_stats=norm_stats)

    def _normalize(self) -> _t.Normalize:
        return _t.Normalize(self.norm_stats, self.use_quantile_norm)

    def training(self) -> _t.DataTransformFn:
        return _t.compose([*self.repack.inputs, *self.robot.inputs, self._normalize(), *self.model.inputs])

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
        deltas = [t for t in self.robot.inputs if isinstance(t, _t.DeltaActions)]
        stats = {k: v for k, v in (self.norm_stats or {}).items() if k == "actions"} or None
        return _t.compose([*deltas, _t.Normalize(stats, self.use_quantile_norm), _t.PadStatesAndActions(action_dim)])
