"""New-episode detection for clients that never say so (openpi's ``reset()`` sends nothing).

A session's warm start must not carry a chunk from one episode into the next. ``EpisodeDetection.reason`` compares a
request with the session's previous one and names the first signal that marks a new episode:

* ``"prompt"``: the prompt changed (a new task);
* ``"gap"``: the time between the previous reply and this request is more than ``gap_s`` seconds, or more than
  ``gap_min_s`` and ``gap_factor`` times the median of the session's last 8 gaps inside episodes (once it has 3; the
  policy keeps them across episodes, so after the session's first episode a start is seen even after an episode of
  one or two requests): an environment reset takes longer than executing a few actions, on any machine. Limits: the
  first episode's first 3 requests have only the absolute bound ``gap_s``, and a reset faster than ``gap_min_s``
  is never a gap;
* ``"state"``: some state dim moved more than ``state_jump`` in normalized units (standard deviations of the
  training data) since the previous request (a reset teleports the robot back to its start pose). Off by default: on
  openpi's LIBERO loop with a random-action policy it did not separate episode starts (2.75–3.92 std) from steps
  inside an episode (up to 3.24 std), while the gap did (starts 3.9–34× the session's median gap, steps at most
  2.0×; three runs of ``lab/scripts/episode_detection_study.py``).

``None`` disables a signal. Our own client can always say it explicitly (``{"__control__": "reset"}``).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EpisodeDetection:
    prompt_change: bool = True
    gap_s: float | None = 10.0
    gap_factor: float | None = 2.5
    gap_min_s: float = 0.25
    state_jump: float | None = None

    def __post_init__(self):
        for name in ("gap_s", "gap_factor", "state_jump"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"episode detection {name} must be > 0 or None, got {v!r}")

    def describe(self) -> dict:
        """The signals in use, for the server metadata."""
        return {"prompt_change": self.prompt_change, "gap_s": self.gap_s, "gap_factor": self.gap_factor,
                "gap_min_s": self.gap_min_s, "state_jump": self.state_jump}

    def reason(self, *, prev_prompt, prompt, prev_state: np.ndarray | None, state: np.ndarray,
               prev_time: float | None, now: float, recent_gaps: Sequence[float] = ()) -> str | None:
        """The first signal that this request starts a new episode, or ``None`` (also for a session's first).
        ``recent_gaps``: the session's previous gaps inside episodes, oldest first."""
        if prev_time is None:
            return None
        if self.prompt_change and prev_prompt != prompt:
            return "prompt"
        gap = now - prev_time
        if self.gap_s is not None and gap > self.gap_s:
            return "gap"
        if (self.gap_factor is not None and len(recent_gaps) >= 3 and gap > self.gap_min_s
                and gap > self.gap_factor * float(np.median(recent_gaps[-8:]))):
            return "gap"
        if self.state_jump is not None and prev_state is not None:
            jump = float(np.max(np.abs(state - prev_state), initial=0.0))
            if jump > self.state_jump:
                return "state"
        return None
