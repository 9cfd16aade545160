"""openpi-compatible websocket policy server, hardened.

Wire protocol (same as openpi's ``WebsocketPolicyServer``, so the PyPI ``openpi-client`` works unchanged):

1. On connect the server sends one binary frame: the packed ``metadata`` dict.
2. Loop: one binary request (packed observation dict) -> one reply. The reply is the policy output plus
   ``server_timing = {"infer_ms", "prev_total_ms" (from the 2nd request on)}``; the policy's own ``policy_timing`` is
   passed through.
3. ``GET /healthz`` on the same port answers ``200 OK`` with body ``"OK\\n"``.

Differences from openpi (all invisible to openpi clients on valid traffic):

* Inference runs in a thread pool (``max_workers``), so the event loop keeps answering pings and other connections
  while a request (or the first JIT compile) is in flight. ``max_workers=1`` (default) serialises policy calls.
* Requests are decoded with the hardened ``wire.unpackb`` and, if a ``schema`` is given, validated before the policy
  sees them. ``prev_total_ms`` is measured from receipt of the request to the reply being sent (openpi also counts the
  time spent waiting for the client's next request).
* Sessions: each connection gets a session id. ``policy.infer(obs, session=...)`` receives it when the policy's
  ``infer`` accepts a ``session`` keyword (else ``infer(obs)`` is called, e.g. for openpi-style policies), and
  ``policy.reset(session)`` (or ``reset()``) is called when the connection closes and on a reset request.

Reset requests (an extension; openpi clients never send them):

* ``{"__control__": "reset"}`` alone: reset this connection's session; the reply is the binary frame
  ``{"__control__": "reset", "ok": True, "session": <id>}``.
* ``"__reset__": True`` inside an observation: reset the session, then infer on that observation (saves a round
  trip at the start of an episode). The key is removed before validation.

Error-frame policy:

* **Bad request** (``WireError``: undecodable bytes, disallowed dtype, size/shape limits, schema violation, a text
  frame instead of binary, a non-map top level, an unknown control message): the server replies with a **text** frame
  ``"Invalid request: <what was wrong and what was expected>"`` and the connection **stays open**; the next request
  is served normally. openpi's client raises ``RuntimeError("Error in inference server:\\n...")`` on any text frame,
  which is the right outcome for a bad observation, and it can keep using the same connection afterwards.
* **Internal error** (the policy raised, or its output could not be packed): like openpi, the traceback is sent as a
  text frame and the connection is closed with code 1011; the session is reset. Other connections are unaffected.
* A message larger than the websocket cap (``ws_max_size``, default ``2 * limits.max_message_bytes``) is refused by
  the websockets layer itself, which closes the connection with code 1009 (message too big); a message between
  ``limits.max_message_bytes`` and that cap gets the text error frame and the connection stays open.
* More than ``max_connections`` simultaneous connections: the handshake is refused with HTTP 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import http
import inspect
import itertools
import logging
import threading
import time
import traceback
from typing import Any
from typing import Protocol
import uuid

import websockets
import websockets.asyncio.server as ws_server
from websockets.frames import CloseCode

from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.serving.schema import ObservationSchema
from pi0_eqm.serving.schema import validate
from pi0_eqm.serving.wire import WireError
from pi0_eqm.serving.wire import WireLimits
from pi0_eqm.serving.wire import packb
from pi0_eqm.serving.wire import unpackb

__all__ = ["PolicyServer", "SessionPolicy", "CONTROL_KEY", "RESET_KEY"]

logger = logging.getLogger(__name__)

CONTROL_KEY = "__control__"
RESET_KEY = "__reset__"
INVALID_PREFIX = "Invalid request: "
_INTERNAL_REASON = "Internal server error. Traceback included in previous frame."


class SessionPolicy(Protocol):
    def infer(self, obs: dict, session: str | None = None) -> dict: ...


def _accepts(fn: Any, name: str, positional: bool = False) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    for p in params:
        if p.kind is p.VAR_KEYWORD or (p.kind is p.VAR_POSITIONAL and positional):
            return True
        if p.name == name or (positional and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)):
            return True
    return False


class PolicyServer:
    """Serve ``policy`` over websockets. ``port=0`` picks a free port (see ``port`` after start)."""

    def __init__(
        self,
        policy: Any,
        host: str = "0.0.0.0",
        port: int = 8000,
        metadata: dict | None = None,
        schema: ObservationSchema | None = None,
        limits: WireLimits | None = None,
        max_workers: int = 1,
        max_connections: int = 64,
        ws_max_size: int | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
    ):
        self.policy = policy
        self.host, self.port = host, port
        self.metadata = dict(metadata or {})
        self.schema = schema
        self.limits = limits or WireLimits()
        self.max_workers = max_workers
        self.max_connections = max_connections
        self.ws_max_size = ws_max_size or 2 * self.limits.max_message_bytes
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self._metadata_frame = packb(self.metadata)  # fail early if the metadata cannot be sent
        self._infer_takes_session = _accepts(policy.infer, "session")
        reset = getattr(policy, "reset", None)
        self._reset_fn = reset if callable(reset) else None
        self._reset_takes_session = self._reset_fn is not None and _accepts(reset, "session", positional=True)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._ids = itertools.count(1)
        self._active = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Serve until ``stop()``; ``self.port`` holds the bound port once listening."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="policy-infer")
        try:
            async with ws_server.serve(
                self._handler,
                self.host,
                self.port,
                compression=None,
                max_size=self.ws_max_size,
                max_queue=4,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                process_request=self._process_request,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                logger.info("Policy server listening on %s:%d", self.host, self.port)
                self._started.set()
                await self._stop.wait()
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._started.set()

    def serve_forever(self) -> None:
        asyncio.run(self.run())

    def start(self, timeout: float = 10.0) -> int:
        """Run the server in a daemon thread; return the bound port once it is listening."""

        def main():
            try:
                asyncio.run(self.run())
            except BaseException as e:  # noqa: BLE001 - surfaced to start()
                self._start_error = e
                self._started.set()

        self._thread = threading.Thread(target=main, name="policy-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"policy server did not start within {timeout} s")
        if self._start_error is not None:
            raise RuntimeError(f"policy server failed to start: {self._start_error!r}") from self._start_error
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> PolicyServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ handlers
    def _process_request(self, connection: ws_server.ServerConnection, request: ws_server.Request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._active >= self.max_connections:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
        return None

    async def _handler(self, ws: ws_server.ServerConnection) -> None:
        session = f"{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        self._active += 1
        logger.info("Connection %s from %s opened", session, ws.remote_address)
        try:
            await ws.send(self._metadata_frame)
            await self._serve_connection(ws, session)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._active -= 1
            logger.info("Connection %s closed", session)
            await self._reset(session)

    async def _serve_connection(self, ws: ws_server.ServerConnection, session: str) -> None:
        prev_total_ms: float | None = None
        while True:
            message = await ws.recv()
            start = time.monotonic()
            try:
                obs, reset_first = self._decode(message)
            except WireError as e:
                logger.info("Connection %s: invalid request: %s", session, e)
                await ws.send(INVALID_PREFIX + str(e))
                continue
            except Exception:  # a decoder bug, not the client's fault: report like any internal error
                await self._internal_error(ws, session)
                return
            if obs is None:  # control message
                try:
                    await self._reset(session, raise_errors=True)
                except Exception:
                    await self._internal_error(ws, session)
                    return
                await ws.send(packb({CONTROL_KEY: "reset", "ok": True, "session": session}))
                continue
            try:
                if reset_first:
                    await self._reset(session, raise_errors=True)
                output, infer_ms = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._infer, obs, session
                )
                output["server_timing"] = {"infer_ms": infer_ms}
                if prev_total_ms is not None:
                    output["server_timing"]["prev_total_ms"] = prev_total_ms
                reply = packb(output)
            except InvalidRequestError as e:  # e.g. an unknown per-request decoder setting: the client's fault
                logger.info("Connection %s: invalid request: %s", session, e)
                await ws.send(INVALID_PREFIX + str(e))
                continue
            except Exception:
                await self._internal_error(ws, session)
                return
            await ws.send(reply)
            prev_total_ms = (time.monotonic() - start) * 1000

    @staticmethod
    async def _internal_error(ws: ws_server.ServerConnection, session: str) -> None:
        """openpi's convention: the traceback as a text frame, then close with 1011 (the session is reset on close)."""
        logger.exception("Connection %s: internal server error", session)
        await ws.send(traceback.format_exc())
        await ws.close(code=CloseCode.INTERNAL_ERROR, reason=_INTERNAL_REASON)

    def _decode(self, message: str | bytes) -> tuple[dict | None, bool]:
        """Returns ``(observation, reset_first)``; ``(None, True)`` for a reset control message."""
        if isinstance(message, str):
            raise WireError("got a text frame; expected a binary frame holding a msgpack-encoded observation dict")
        obj = unpackb(message, self.limits)
        if not isinstance(obj, dict):
            raise WireError(
                f"message: expected a map (dict) of observation keys at top level, got {type(obj).__name__}"
            )
        if CONTROL_KEY in obj:
            if obj == {CONTROL_KEY: "reset"}:
                return None, True
            raise WireError(f"unknown control message {obj!r:.120}; expected exactly {{{CONTROL_KEY!r}: 'reset'}}")
        reset_first = obj.pop(RESET_KEY, False)
        if not isinstance(reset_first, bool):
            raise WireError(f"{RESET_KEY}: expected a bool, got {type(reset_first).__name__}")
        if self.schema is not None:
            obj = validate(obj, self.schema)
        return obj, reset_first

    def _infer(self, obs: dict, session: str) -> tuple[dict, float]:
        t0 = time.monotonic()
        output = self.policy.infer(obs, session=session) if self._infer_takes_session else self.policy.infer(obs)
        infer_ms = (time.monotonic() - t0) * 1000
        if not isinstance(output, dict):
            raise TypeError(f"policy.infer returned {type(output).__name__}; expected a dict")
        return dict(output), infer_ms

    async def _reset(self, session: str, raise_errors: bool = False) -> None:
        if self._reset_fn is None:
            return
        fn = functools.partial(self._reset_fn, session) if self._reset_takes_session else self._reset_fn
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except Exception:
            if raise_errors:
                raise
            logger.exception("policy.reset(%s) failed", session)
