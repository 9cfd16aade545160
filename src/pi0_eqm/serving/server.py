"""openpi-compatible websocket policy server, hardened for real robots and fleets.

Wire protocol (same as openpi's ``WebsocketPolicyServer``, so the PyPI ``openpi-client`` works unchanged):

1. On connect the server sends one binary frame: the packed ``metadata`` dict.
2. Loop: one binary request (packed observation dict) -> one reply. The reply is the policy output plus
   ``server_timing = {"infer_ms", "prev_total_ms" (from the 2nd request on)}``; the policy's own ``policy_timing`` is
   passed through.
3. ``GET /healthz`` on the same port answers ``200 OK`` (``"OK\\n"``) when the server is ready and has room for
   another connection, else ``503`` with ``"warming up\\n"`` or ``"at capacity\\n"``.

Differences from openpi (all invisible to openpi clients on valid traffic):

* Binds loopback by default; ``api_key`` (optional) requires the ``Authorization: Api-Key <key>`` header openpi's
  client sends when given an ``api_key`` (HTTP 401 otherwise).
* ``warmup`` (optional) runs in the inference worker before the server is ready (e.g. the first JIT compile);
  until it finishes ``/healthz`` and websocket handshakes get 503.
* Requests are decoded with the hardened ``wire.unpackb`` and, if a ``schema`` is given, validated, in a thread
  pool of their own (``decode_workers``), never on the event loop. Inference runs in another pool
  (``max_workers``, default 1), so the event loop keeps answering pings, health checks and other connections.
* Micro-batching (``max_batch`` > 1, for a policy with ``infer_batch``): requests from different connections are
  decoded together (``batcher.Batcher``, waiting at most ``max_wait_ms`` for more).
* Sessions: each connection gets a session id. ``policy.infer(obs, session=...)`` receives it when the policy's
  ``infer`` accepts a ``session`` keyword (else ``infer(obs)`` is called, e.g. for openpi-style policies).
  ``policy.reset(session)`` (or ``reset()``) is called on a reset request; ``policy.close(session)`` (else
  ``reset``) when the connection closes.
* Capacity: at most ``max_connections`` connections, ``max_connections_per_peer`` from one IP address (HTTP 503
  beyond either), and a connection that sends no observation for ``idle_timeout`` seconds is closed (code 1001;
  resets and invalid frames do not keep it open).
* ``prev_total_ms`` is measured from receipt of the request to the reply being sent.

Reset requests (an extension; openpi clients never send them):

* ``{"__control__": "reset"}`` alone: reset this connection's session; the reply is the binary frame
  ``{"__control__": "reset", "ok": True, "session": <id>}``.
* ``"__reset__": True`` inside an observation: reset the session, then infer on that observation (saves a round
  trip at the start of an episode). The key is removed before validation.

Error-frame policy:

* **Bad request** (``InvalidRequestError``: undecodable bytes, disallowed dtype, size/shape limits, schema violation,
  a text frame instead of binary, a non-map top level, an unknown control message, a bad decoder setting, a
  non-finite action chunk): the server replies with a **text** frame ``"Invalid request: <what was wrong>"`` and the
  connection **stays open**. openpi's client raises ``RuntimeError("Error in inference server:\\n...")`` on any text
  frame and can keep using the connection.
* **Internal error** (the policy raised anything else, or its output could not be packed): a text frame
  ``"Internal server error (<exception type>, reference <id>) ..."`` (no traceback or source path reaches the
  client; the server log has the traceback under that reference), then close code 1011; the session is closed.
  Other connections are unaffected.
* A message larger than the websocket cap (``ws_max_size``, default ``2 * limits.max_message_bytes``) is refused by
  the websockets layer itself, which closes the connection with code 1009 (message too big); a message between
  ``limits.max_message_bytes`` and that cap gets the text error frame and the connection stays open.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
import concurrent.futures
import functools
import hmac
import http
import inspect
import itertools
import logging
import socket
import threading
import time
from typing import Any
from typing import Protocol
import uuid

import websockets
import websockets.asyncio.server as ws_server
from websockets.frames import CloseCode

from pi0_eqm.errors import InvalidRequestError
from pi0_eqm.serving.batcher import Batcher
from pi0_eqm.serving.schema import ObservationSchema
from pi0_eqm.serving.schema import validate
from pi0_eqm.serving.wire import WireError
from pi0_eqm.serving.wire import WireLimits
from pi0_eqm.serving.wire import packb
from pi0_eqm.serving.wire import unpackb

__all__ = ["PolicyServer", "SessionPolicy", "CONTROL_KEY", "RESET_KEY", "bind_socket"]

logger = logging.getLogger(__name__)

CONTROL_KEY = "__control__"
# One evaluation host runs up to 64 openpi clients (vla-eval shards); one peer never holds more than half the slots.
MAX_CONNECTIONS = 128
MAX_CONNECTIONS_PER_PEER = 64
RESET_KEY = "__reset__"
INVALID_PREFIX = "Invalid request: "
_INTERNAL_REASON = "Internal server error; see the previous frame"


class SessionPolicy(Protocol):
    def infer(self, obs: dict, session: str | None = None) -> dict: ...


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a port in use or a bad host is a one-line ``ValueError``."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}; stop the process using it or pass "
                         "another --port / --host") from None


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
    """Serve ``policy`` over websockets. ``port=0`` picks a free port (see ``port`` after start); ``sock``, a socket
    from ``bind_socket``, replaces ``host``/``port``."""

    def __init__(
        self,
        policy: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        metadata: dict | None = None,
        schema: ObservationSchema | None = None,
        limits: WireLimits | None = None,
        max_workers: int = 1,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER,
        idle_timeout: float | None = 300.0,
        max_batch: int = 1,
        max_wait_ms: float = 5.0,
        api_key: str | None = None,
        warmup: Callable[[], Any] | None = None,
        sock: socket.socket | None = None,
        decode_workers: int = 2,
        ws_max_size: int | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
    ):
        if min(max_workers, max_connections, max_connections_per_peer, max_batch, decode_workers) < 1:
            raise ValueError("max_workers, max_connections, max_connections_per_peer, max_batch and decode_workers "
                             "must be >= 1")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0 seconds (or None), got {idle_timeout}")
        self.policy = policy
        self.host, self.port, self._sock = host, port, sock
        self.metadata = dict(metadata or {})
        self.schema = schema
        self.limits = limits or WireLimits()
        self.max_workers, self.decode_workers = max_workers, decode_workers
        self.max_connections, self.max_connections_per_peer = max_connections, max_connections_per_peer
        self.idle_timeout = idle_timeout
        self.api_key = api_key
        self.warmup = warmup
        self.ws_max_size = ws_max_size or 2 * self.limits.max_message_bytes
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self._metadata_frame = packb(self.metadata)  # fail early if the metadata cannot be sent
        self._infer_takes_session = _accepts(policy.infer, "session")
        reset = getattr(policy, "reset", None)
        self._reset_fn = reset if callable(reset) else None
        self._reset_takes_session = self._reset_fn is not None and _accepts(reset, "session", positional=True)
        close = getattr(policy, "close", None)
        self._close_fn = close if callable(close) and _accepts(close, "session", positional=True) else None
        batch_fn = getattr(policy, "infer_batch", None)
        self.max_batch = max_batch if callable(batch_fn) else 1
        self.max_wait_s = max_wait_ms / 1e3
        self.batcher: Batcher | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._decode_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._ids = itertools.count(1)
        self._active = 0
        self._peers: collections.Counter[str] = collections.Counter()
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Serve until ``stop()``; ``self.port`` holds the bound port once listening, ``ready`` is set after the
        warm-up. A failing warm-up ends the server with its exception."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="policy-infer")
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(self.decode_workers, thread_name_prefix="decode")
        if self.max_batch > 1:
            self.batcher = Batcher(self.policy.infer_batch, self._executor, self.max_batch, self.max_wait_s,
                                   lambda: self._active)
            self.batcher.start()
        where = {"sock": self._sock} if self._sock is not None else {"host": self.host, "port": self.port}
        try:
            async with ws_server.serve(
                self._handler,
                compression=None,
                max_size=self.ws_max_size,
                max_queue=4,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                process_request=self._process_request,
                **where,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                logger.info("Policy server listening on %s:%d", self.host, self.port)
                self._started.set()
                if self.warmup is not None:
                    t0 = time.monotonic()
                    await self._loop.run_in_executor(self._executor, self.warmup)
                    logger.info("warm-up done in %.1f s", time.monotonic() - t0)
                self.ready.set()
                await self._stop.wait()
        finally:
            if self.batcher is not None:
                await self.batcher.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
            self._started.set()

    def serve_forever(self) -> None:
        asyncio.run(self.run())

    def start(self, timeout: float = 600.0) -> int:
        """Run the server in a daemon thread; return the bound port once it is ready (warm-up done)."""

        def main():
            try:
                asyncio.run(self.run())
            except BaseException as e:  # noqa: BLE001 - surfaced to start()
                self._start_error = e
                self._started.set()
                self.ready.set()

        self._thread = threading.Thread(target=main, name="policy-server", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout):
            raise TimeoutError(f"policy server was not ready within {timeout} s")
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
    def _refusal(self, request: ws_server.Request, peer: str) -> tuple[http.HTTPStatus, str] | None:
        if not self.ready.is_set():
            return http.HTTPStatus.SERVICE_UNAVAILABLE, "warming up\n"
        if self._active >= self.max_connections:
            return http.HTTPStatus.SERVICE_UNAVAILABLE, "at capacity\n"
        if request.path == "/healthz":
            return None
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.api_key}".encode()):
                return http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key (header 'Authorization: Api-Key ...')\n"
        if self._peers[peer] >= self.max_connections_per_peer:
            return http.HTTPStatus.SERVICE_UNAVAILABLE, f"too many connections from {peer}\n"
        return None

    def _process_request(self, connection: ws_server.ServerConnection, request: ws_server.Request):
        refusal = self._refusal(request, _peer(connection))
        if refusal is not None:
            return connection.respond(*refusal)
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def _handler(self, ws: ws_server.ServerConnection) -> None:
        session = f"{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        peer = _peer(ws)
        self._active += 1
        self._peers[peer] += 1
        logger.info("Connection %s from %s opened", session, ws.remote_address)
        try:
            if self._active > self.max_connections or self._peers[peer] > self.max_connections_per_peer:
                await ws.close(code=CloseCode.TRY_AGAIN_LATER, reason="at capacity")  # raced past the handshake check
                return
            await ws.send(self._metadata_frame)
            await self._serve_connection(ws, session)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._active -= 1
            self._peers[peer] -= 1
            if self._peers[peer] <= 0:
                del self._peers[peer]
            logger.info("Connection %s closed", session)
            await self._reset(session, closing=True)

    async def _serve_connection(self, ws: ws_server.ServerConnection, session: str) -> None:
        loop = asyncio.get_running_loop()
        prev_total_ms: float | None = None
        last_obs = time.monotonic()  # only observations keep a connection alive (not resets or invalid frames)
        while True:
            left = None if self.idle_timeout is None else max(0.0, self.idle_timeout - (time.monotonic() - last_obs))
            try:
                message = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                logger.info("Connection %s idle for %s s: closing", session, self.idle_timeout)
                await ws.close(code=CloseCode.GOING_AWAY, reason=f"idle for {self.idle_timeout} s")
                return
            start = time.monotonic()
            try:
                obs, reset_first = await loop.run_in_executor(self._decode_pool, self._decode, message)
            except InvalidRequestError as e:
                logger.info("Connection %s: invalid request: %s", session, e)
                await ws.send(INVALID_PREFIX + str(e))
                continue
            except Exception as e:  # a decoder bug, not the client's fault: report like any internal error
                await self._internal_error(ws, session, e)
                return
            try:
                if reset_first:
                    await self._reset(session, raise_errors=True)
                if obs is None:  # control message
                    await ws.send(packb({CONTROL_KEY: "reset", "ok": True, "session": session}))
                    continue
                last_obs = time.monotonic()
                output = await self._run_infer(obs, session)
                output["server_timing"] = {"infer_ms": (time.monotonic() - start) * 1000}
                if prev_total_ms is not None:
                    output["server_timing"]["prev_total_ms"] = prev_total_ms
                reply = packb(output)
            except InvalidRequestError as e:  # e.g. a bad decoder setting or a non-finite chunk: the client's turn
                logger.info("Connection %s: invalid request: %s", session, e)
                await ws.send(INVALID_PREFIX + str(e))
                continue
            except Exception as e:
                await self._internal_error(ws, session, e)
                return
            await ws.send(reply)
            prev_total_ms = (time.monotonic() - start) * 1000

    async def _run_infer(self, obs: dict, session: str) -> dict:
        if self.batcher is not None:
            output = await self.batcher.submit(obs, session)
        else:
            output = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, obs, session)
        if not isinstance(output, dict):
            raise TypeError(f"policy.infer returned {type(output).__name__}; expected a dict")
        return dict(output)

    @staticmethod
    async def _internal_error(ws: ws_server.ServerConnection, session: str, error: BaseException) -> None:
        """A text frame naming the exception type and a log reference (no traceback), then close 1011."""
        ref = uuid.uuid4().hex[:12]
        logger.error("Connection %s: internal server error (reference %s)", session, ref, exc_info=error)
        await ws.send(f"Internal server error ({type(error).__name__}, reference {ref}); the server log has the "
                      "details. This connection is closed; reconnect to continue.")
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
            value = obj[CONTROL_KEY]
            if len(obj) == 1 and isinstance(value, str) and value == "reset":
                return None, True
            shown = f"{value!r:.80}" if isinstance(value, str | int | float | bool) else type(value).__name__
            raise WireError(f"unknown control message ({CONTROL_KEY} = {shown}, {len(obj)} key(s)); expected "
                            f"exactly {{{CONTROL_KEY!r}: 'reset'}}")
        reset_first = obj.pop(RESET_KEY, False)
        if not isinstance(reset_first, bool):
            raise WireError(f"{RESET_KEY}: expected a bool, got {type(reset_first).__name__}")
        if self.schema is not None:
            obj = validate(obj, self.schema)
        return obj, reset_first

    def _infer(self, obs: dict, session: str) -> dict:
        return self.policy.infer(obs, session=session) if self._infer_takes_session else self.policy.infer(obs)

    async def _reset(self, session: str, raise_errors: bool = False, closing: bool = False) -> None:
        if closing and self._close_fn is not None:
            fn = functools.partial(self._close_fn, session)
        elif self._reset_fn is None:
            return
        else:
            fn = functools.partial(self._reset_fn, session) if self._reset_takes_session else self._reset_fn
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except Exception:
            if raise_errors:
                raise
            logger.exception("policy.reset(%s) failed", session)


def _peer(connection: ws_server.ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if isinstance(address, tuple) and address else str(address)
