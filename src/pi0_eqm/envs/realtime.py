"""Closed-loop episodes under inference delay (real-time chunking), on the Meta-World env.

Conventions: ``pi0_eqm.decoders.realtime`` (``H``, execution horizon ``s``, delay ``d``, committed prefix, overlap).
``RealtimeConfig.delay`` is a *simulated* delay: inference is instantaneous in wall time but the env advances ``d``
control steps while it "runs", deterministically, so studies are reproducible. Methods:

* ``sync``: the robot holds still while inference runs (zero xyz delta, gripper command kept) for ``d`` steps, then
  executes ``A_k[0 : s]``; the hold costs episode time (the step limit counts it).
* ``naive``: the robot executes the committed prefix ``A_{k−1}[s : s+d]`` while inference runs, then switches to
  ``A_k[d : s+d]``; the policy is told nothing.
* ``prefix``: as ``naive``, and the request carries the committed prefix and the overlap
  (``committed_actions`` / ``overlap_actions``), which the decoder honours (flow: RTC guidance; EqM: inpainting).

Every method starts an episode by holding still for ``d`` steps while the first chunk is computed, then executes its
rows ``0 : s``. Per chunk boundary the record holds the discontinuity ‖A_k[j] − A_{k−1}[s+j]‖ at the switch index
``j`` (``d``; ``0`` for ``sync``) over the real action dims, in normalized units when a ``normalize`` function is
given, else robot units.

``wall_clock=True`` instead runs the env at ``control_hz`` with inference in a background thread
(``pi0_eqm.serving.realtime.AsyncChunkBroker``): the delay is whatever inference really takes, measured per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import time
from typing import Any
from typing import Literal

import numpy as np

from pi0_eqm.envs import metaworld as mw
from pi0_eqm.serving.realtime import COMMITTED_KEY
from pi0_eqm.serving.realtime import OVERLAP_KEY
from pi0_eqm.serving.realtime import AsyncChunkBroker
from pi0_eqm.serving.realtime import ChunkExhaustedError

__all__ = ["METHODS", "ChunkExhaustedError", "RealtimeConfig", "Runner", "hold_action", "simulated_episode",
           "wall_clock_episode"]
Method = Literal["sync", "naive", "prefix"]
METHODS: tuple[str, ...] = ("sync", "naive", "prefix")
Normalize = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (state, actions [n, d]) -> normalized actions [n, d]


@dataclasses.dataclass(frozen=True)
class RealtimeConfig:
    method: Method = "naive"
    delay: int = 0  # simulated d, control steps (d <= s)
    send_overlap: bool = True  # "prefix": also send the rest of the old plan (RTC's soft-masked rows)
    wall_clock: bool = False
    control_hz: float = 20.0  # wall-clock mode: control steps per second
    expected_delay: int = 1  # wall-clock mode: committed rows sent with the first asynchronous request

    def check(self, execute: int) -> None:
        if self.method not in METHODS:
            raise ValueError(f"real-time method must be one of {list(METHODS)}, got {self.method!r}")
        if not self.wall_clock and not 0 <= self.delay <= execute:
            raise ValueError(f"the simulated delay d = {self.delay} must be in [0, s = {execute}] (one chunk in flight)")
        if self.wall_clock and self.control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        if self.wall_clock and self.method == "sync":
            raise ValueError("wall-clock mode runs asynchronously: method naive or prefix (sync is the plain loop)")


def hold_action(last: np.ndarray | None) -> np.ndarray:
    """Holding still on the Sawyer: zero xyz delta, the last gripper command (0 before any)."""
    a = np.zeros(mw.ACTION_DIM, np.float32)
    if last is not None:
        a[-1] = last[-1]
    return a


class Runner:
    """One episode's bookkeeping: stepping, rendering only when needed, logging."""

    def __init__(self, env: mw.MetaWorldEnv, log: Any, frames: list | None, frame: Callable[[dict], np.ndarray]):
        self.env, self.log, self.frames, self.frame = env, log, frames, frame
        self.last: np.ndarray | None = None
        self.obs: dict | None = None

    def step(self, action: np.ndarray, render: bool) -> bool:
        t0 = time.perf_counter()
        obs, _, done = self.env.step(action, render=render or self.frames is not None)
        self.log.env_s += time.perf_counter() - t0
        self.last = np.asarray(action, np.float32)
        if obs is not None:
            self.obs = obs
            if self.frames is not None:
                self.frames.append(self.frame(obs))
        return done


def simulated_episode(runner: Runner, infer: Callable[[dict], np.ndarray], execute: int,
                      rt: RealtimeConfig, normalize: Normalize | None, jumps: list[float]) -> None:
    """The simulated-delay loop (module docstring); ``infer(request) -> actions [H, d]``."""
    s, d = execute, rt.delay
    chunk = infer(dict(runner.obs))
    for i in range(d):  # the first chunk: hold still while it is computed
        if runner.step(hold_action(runner.last), render=i == d - 1):
            return
    p = 0
    while True:
        while p < s:
            if runner.step(chunk[p], render=p == s - 1):
                return
            p += 1
        request = dict(runner.obs)
        h = len(chunk)
        if rt.method == "prefix" and d > 0:
            request[COMMITTED_KEY] = chunk[s:s + d]
            if rt.send_overlap and s + d < h:
                request[OVERLAP_KEY] = chunk[s + d:]
        state = np.asarray(runner.obs[mw.STATE_KEY], np.float32)
        new = infer(request)
        for i in range(d):  # inference "runs" for d steps
            action = hold_action(runner.last) if rt.method == "sync" else chunk[s + i]
            if runner.step(action, render=i == d - 1):
                return
        j = 0 if rt.method == "sync" else d
        if s + j < h:
            jumps.append(_jump(new[j:j + 1], chunk[s + j:s + j + 1], state, normalize))
        chunk, p = new, j


def _jump(new_row: np.ndarray, old_row: np.ndarray, state: np.ndarray, normalize: Normalize | None) -> float:
    """‖new − old‖ over the real action dims of two ``[1, action_dim]`` rows, normalized when ``normalize`` is given."""
    if normalize is not None:
        old_row, new_row = normalize(state, old_row), normalize(state, new_row)
    return float(np.linalg.norm(np.asarray(new_row)[0, :mw.ACTION_DIM] - np.asarray(old_row)[0, :mw.ACTION_DIM]))


def wall_clock_episode(policy: Any, runner: Runner, execute: int, rt: RealtimeConfig,
                       on_reply: Callable[[dict, float, int], None], log: Any,
                       normalize: Normalize | None = None) -> None:
    """The env at ``rt.control_hz``; inference in the background through ``AsyncChunkBroker``;
    ``on_reply(reply, seconds, measured delay)`` per chunk. Appends to ``log.jumps`` the discontinuity at each switch
    (the new chunk's row at the measured delay against the old chunk's row it replaced) and sets ``log.late`` and
    ``log.broker_errors``."""

    def on_chunk(rec) -> None:
        on_reply(rec.reply, rec.round_trip_ms / 1e3, rec.delay)
        if rec.replaced is not None:
            state = np.asarray(runner.obs[mw.STATE_KEY], np.float32)
            log.jumps.append(_jump(np.asarray(rec.reply["actions"])[rec.delay:rec.delay + 1],
                                   np.asarray(rec.replaced)[None], state, normalize))

    broker = AsyncChunkBroker(policy, execute=execute, expected_delay=rt.expected_delay,
                              send_prefix=rt.method == "prefix", send_overlap=rt.send_overlap, on_chunk=on_chunk)
    period = 1.0 / rt.control_hz
    try:
        next_tick = time.perf_counter()
        while True:
            action = np.asarray(broker.infer(dict(runner.obs))["actions"], np.float32)
            next_tick += period
            if runner.step(action, render=True):
                return
            wait = next_tick - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
    finally:
        log.broker_errors = list(broker.errors)
        log.late = broker.late
        broker.close()
