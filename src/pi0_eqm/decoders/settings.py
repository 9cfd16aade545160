"""``DecoderSettings``: the evaluation-time decoder options a user or a client sets, declared and validated once.

Every CLI takes them as one nested field (``decoder: Annotated[DecoderSettings, tyro.conf.OmitArgPrefixes]``), the
``Policy`` holds one as its defaults, and a request overrides fields with a ``"decoder_settings"`` map
(``updated``). ``None`` keeps the value of the preset, else of the model's decoder config; the decoder resolves
them into its own resolved settings (``Decoder.resolve`` → ``Decoder.Settings``).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import numpy as np

from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.models.decoder_config import SolverPreset
from pi0_eqm.models.decoder_config import SolverVariant
from pi0_eqm.models.decoder_config import WarmStartMode
from pi0_eqm.models.decoder_config import check_choice
from pi0_eqm.models.decoder_config import check_solver_values

SETTINGS_KEY = "decoder_settings"
MAX_CHUNK_STEPS = 10_000  # bound on ``executed`` / ``max_reuse`` (a chunk is far shorter)


@dataclasses.dataclass(frozen=True)
class DecoderSettings:
    preset: SolverPreset | None = None  # EqM solver preset (action | paper | bb): fills the fields left unset
    max_iters: int | None = None  # EqM iteration cap / flow Euler steps (None: the preset's, else the config's)
    threshold: float | None = None  # EqM ε (None: the config's; <= 0: never stop early)
    step_size: float | None = None  # η
    momentum: float | None = None  # μ
    variant: SolverVariant | None = None
    guard: bool | None = None  # EqM step guard (restart momentum / halve η when the residual grows)
    warm_start: WarmStartMode = "off"  # EqM only; "aligned" cost success on the embedded benchmark (README)
    executed: int = 5  # actions executed from a chunk before the next request (openpi LIBERO: replan every 5)
    max_reuse: int | None = None
    # Real-time chunking (requests that carry committed actions; decoders.realtime):
    rtc_guidance: float = 5.0  # flow: RTC's guidance clip β
    inpaint_pull: float = 0.0  # EqM: per-iteration pull of the overlap rows toward the old plan, in [0, 1]

    def __post_init__(self):
        check_choice("warm_start", self.warm_start, WarmStartMode)
        if self.preset is not None:
            check_choice("solver preset", self.preset, SolverPreset)
        for name in ("executed", "max_reuse"):
            v = getattr(self, name)
            if (v is not None or name == "executed") and (isinstance(v, bool) or not isinstance(v, int)
                                                          or not 0 <= v <= MAX_CHUNK_STEPS):
                raise ValueError(f"{name} must be an int in [0, {MAX_CHUNK_STEPS}], got {v!r:.40}")
        if self.guard is not None and not isinstance(self.guard, bool):
            raise ValueError(f"guard must be true or false, got {self.guard!r}")
        for name, hi in (("rtc_guidance", 1e3), ("inpaint_pull", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= hi:
                raise ValueError(f"{name} must be a number in [0, {hi:g}], got {v!r:.40}")
        check_solver_values(variant=self.variant, step_size=self.step_size, momentum=self.momentum,
                            max_iters=self.max_iters, threshold=self.threshold)

    def updated(self, overrides: Mapping[str, Any] | None) -> DecoderSettings:
        """These settings with a request's overrides; a bad map is an ``InvalidRequestError`` naming the problem."""
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise InvalidRequestError(f"{SETTINGS_KEY} must be a map of setting → value, got {type(overrides).__name__}")
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise InvalidRequestError(f"unknown decoder settings {unknown}; allowed: {sorted(fields)}")
        values = {}
        for k, v in overrides.items():
            if isinstance(v, np.ndarray) and v.size != 1:
                raise InvalidRequestError(f"{SETTINGS_KEY}/{k}: expected one value, got an array of shape {v.shape}")
            if isinstance(v, dict | list):
                raise InvalidRequestError(f"{SETTINGS_KEY}/{k}: expected one value, got a {type(v).__name__}")
            values[k] = v.item() if isinstance(v, np.ndarray | np.generic) else v
        try:
            return dataclasses.replace(self, **values)
        except (TypeError, ValueError) as e:
            raise InvalidRequestError(f"bad {SETTINGS_KEY}: {e}") from e
