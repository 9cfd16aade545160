"""New-episode detection for clients that never say so (openpi's ``reset()`` sends nothing).

A session's warm start must not carry a chunk from one episode into the next. ``EpisodeDetection.reason`` compares a
request with the session's previous one and names the first signal that marks a new episode:

* ``"prompt"``: the prompt changed (a new task);
* ``"gap"``: more than ``gap_s`` seconds passed between the previous reply and this request (an environment reset
  takes longer than executing a few actions);
* ``"state"``: some state dim moved more than ``state_jump`` in normalized units (standard deviations of the
  training data) since the previous request (a reset teleports the robot back to its start pose).

``None`` disables a signal. Our own client can always say it explicitly (``{"__control__": "reset"}``).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EpisodeDetection:
    prompt_change: bool = True
    gap_s: float | None = 3.0
    state_jump: float | None = 3.0

    def __post_init__(self):
        for name in ("gap_s", "state_jump"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"episode detection {name} must be > 0 or None, got {v!r}")

    def describe(self) -> dict:
        """The signals in use, for the server metadata."""
        return {"prompt_change": self.prompt_change, "gap_s": self.gap_s, "state_jump": self.state_jump}

    def reason(self, *, prev_prompt, prompt, prev_state: np.ndarray | None, state: np.ndarray,
               prev_time: float | None, now: float) -> str | None:
        """The first signal that this request starts a new episode, or ``None`` (also for a session's first)."""
        if prev_time is None:
            return None
        if self.prompt_change and prev_prompt != prompt:
            return "prompt"
        if self.gap_s is not None and now - prev_time > self.gap_s:
            return "gap"
        if self.state_jump is not None and prev_state is not None:
            jump = float(np.max(np.abs(state - prev_state), initial=0.0))
            if jump > self.state_jump:
                return "state"
        return None
