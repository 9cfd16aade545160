"""The client side of real-time chunking: request keys and ``AsyncChunkBroker``.

Conventions are those of ``pi0_eqm.decoders.realtime`` (``H``, ``s``, ``d``, committed prefix, overlap). A request may
carry ``committed_actions`` ``[d, action_dim]`` (robot units: the actions the robot executes while this request is
served) and ``overlap_actions`` ``[m, action_dim]`` (the rest of the old plan); an unmodified openpi client sends
neither and gets a plain chunk.

``AsyncChunkBroker`` is the asynchronous counterpart of openpi's synchronous ``ActionChunkBroker``: ``infer(obs)``
is called once per control step and returns one action. After ``s`` actions of the current chunk it sends the next
request in a background thread (with the committed prefix for the delay it expects) and keeps returning the current
chunk's actions; when the reply arrives ``d`` steps later (``d`` measured), it switches to the new chunk at index
``d``. The first chunk of an episode is awaited (the caller holds the robot still). A reply that belongs to an
episode that has ended (``reset``) is dropped. If the current chunk runs out while the reply is still in flight,
``infer`` waits for it (counted in ``late``; the delay then exceeds ``H − s``). If a request fails, the broker keeps
executing the current chunk's remaining actions and reports the error (``errors``); when those run out it raises
``ChunkExhaustedError`` rather than invent or repeat actions.
"""

from __future__ import annotations

from collections.abc import Callable
import concurrent.futures
import dataclasses
import threading
import time
from typing import Any

import numpy as np

COMMITTED_KEY = "committed_actions"
OVERLAP_KEY = "overlap_actions"


class ChunkExhaustedError(RuntimeError):
    """The current chunk ran out while no newer chunk could be had (the server failed or is too slow)."""


@dataclasses.dataclass
class ChunkRecord:
    """One chunk switch: the measured delay (control steps: when the control loop took the reply), the committed rows
    sent, the request's round trip (until the reply arrived, in the broker's thread), and the row of the old chunk the
    switch replaced (``None`` for an episode's first chunk or an old chunk that ran out)."""

    delay: int
    committed_sent: int
    round_trip_ms: float
    reply: dict
    replaced: np.ndarray | None = None


class AsyncChunkBroker:
    def __init__(self, policy: Any, *, execute: int, expected_delay: int = 0, send_prefix: bool = True,
                 send_overlap: bool = True, on_chunk: Callable[[ChunkRecord], None] | None = None,
                 max_committed: int | None = None):
        """``policy``: anything with ``infer(obs) -> {"actions": [H, d], ...}`` (our websocket client, openpi's, or a
        ``Policy``). ``execute``: s. ``expected_delay``: the committed rows to send with the next request (then the
        largest delay measured so far in this episode). ``send_prefix`` False gives the "naive" method (switch at the
        measured delay, nothing sent). ``max_committed``: the most committed rows the server takes (default: the
        ``realtime.max_delay`` of ``policy.get_server_metadata()`` when it has one); a longer delay sends that many."""
        if execute < 1:
            raise ValueError(f"execute (s) must be >= 1, got {execute}")
        if max_committed is None and send_prefix and hasattr(policy, "get_server_metadata"):
            realtime = (policy.get_server_metadata() or {}).get("realtime") or {}
            max_committed = realtime.get("max_delay")
        self.max_committed = max_committed
        self.policy, self.s = policy, execute
        self.expected_delay, self.send_prefix, self.send_overlap = expected_delay, send_prefix, send_overlap
        self.on_chunk = on_chunk
        self.errors: list[str] = []
        self.late = 0  # chunks that ran out before their successor arrived (the caller waited)
        self.records: list[ChunkRecord] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chunk-broker")
        self._lock = threading.Lock()
        self._episode = 0
        self.reset()

    def reset(self) -> None:
        """A new episode: forget the chunk; a reply still in flight for the old episode is dropped when it lands."""
        with self._lock:
            self._episode += 1
            self._chunk: np.ndarray | None = None
            self._index = 0
            self._pending: concurrent.futures.Future | None = None
            self._pending_meta: tuple[int, int, int, float] | None = None  # episode, start index, committed, t0
            self._max_delay = self.expected_delay
            self._launched_for = -1  # the chunk (index into records) whose successor was requested
        if hasattr(self.policy, "reset"):
            self.policy.reset()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _request(self, obs: dict, committed: np.ndarray | None, overlap: np.ndarray | None) -> dict:
        req = dict(obs)
        if committed is not None and len(committed):
            req[COMMITTED_KEY] = committed
            if overlap is not None and len(overlap):
                req[OVERLAP_KEY] = overlap
        return self.policy.infer(req)

    def _launch(self, obs: dict) -> None:
        chunk, i = self._chunk, self._index
        d = min(self._max_delay, len(chunk) - i - 1) if self.send_prefix else 0
        if self.max_committed is not None:
            d = min(d, self.max_committed)
        committed = chunk[i:i + d] if d > 0 else None
        overlap = chunk[i + d:] if d > 0 and self.send_overlap else None
        self._pending = self._pool.submit(self._timed_request, obs, committed, overlap)
        self._pending_meta = (self._episode, self._index, d, time.perf_counter())

    def _timed_request(self, obs: dict, committed: np.ndarray | None, overlap: np.ndarray | None):
        reply = self._request(obs, committed, overlap)
        return reply, time.perf_counter()

    def _switch(self, result: tuple[dict, float]) -> None:
        reply, t_done = result
        episode, start, committed, t0 = self._pending_meta
        self._pending, self._pending_meta = None, None
        if episode != self._episode:
            return  # an old episode's reply
        delay = self._index - start
        self._max_delay = max(self._max_delay, delay)
        replaced = self._chunk[self._index] if self._index < len(self._chunk) else None
        rec = ChunkRecord(delay, committed, (t_done - t0) * 1e3, reply, replaced)
        self.records.append(rec)
        if self.on_chunk is not None:
            self.on_chunk(rec)
        self._chunk, self._index = np.asarray(reply["actions"]), delay

    def infer(self, obs: dict) -> dict:
        """The action to execute now ``{"actions": [action_dim]}``."""
        if self._chunk is None:  # first chunk of the episode: wait for it
            t0 = time.perf_counter()
            reply = self._request(obs, None, None)
            self._chunk, self._index = np.asarray(reply["actions"]), 0
            rec = ChunkRecord(0, 0, (time.perf_counter() - t0) * 1e3, reply)
            self.records.append(rec)
            if self.on_chunk is not None:
                self.on_chunk(rec)
        if self._pending is not None and self._pending.done():
            try:
                self._switch(self._pending.result())
            except Exception as e:  # noqa: BLE001 - reported; the current chunk continues
                self.errors.append(f"{type(e).__name__}: {e}")
                self._pending, self._pending_meta = None, None
        if self._pending is None and self._index >= self.s and self._launched_for != len(self.records):
            self._launched_for = len(self.records)  # once per chunk: a failed request is not retried
            self._launch(obs)
        if self._index >= len(self._chunk) and self._pending is not None:  # ran out while waiting: wait (the robot
            self.late += 1  # is not moving between control steps meanwhile), then switch at the delay so far
            try:
                self._switch(self._pending.result())
            except Exception as e:  # noqa: BLE001 - reported below
                self.errors.append(f"{type(e).__name__}: {e}")
                self._pending, self._pending_meta = None, None
        if self._index >= len(self._chunk):
            raise ChunkExhaustedError(f"chunk of {len(self._chunk)} actions exhausted with no newer chunk "
                                      f"({len(self.errors)} failed request(s): {self.errors[-1:]})")
        action = self._chunk[self._index]
        self._index += 1
        return {"actions": action}
