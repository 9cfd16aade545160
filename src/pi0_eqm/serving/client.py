"""A websocket client for the openpi wire protocol that lives in this project's environment (numpy 2).

Same surface as openpi-client's ``WebsocketClientPolicy`` (``get_server_metadata``, ``infer``, ``reset``) for code that
runs beside our stack (the LIBERO runner, the RoboTwin adapter); the PyPI ``openpi-client`` still works unchanged.
``reset()`` also sends our optional reset control message so the server drops this session's warm-start state.
"""

from __future__ import annotations

import time
from typing import Any

from websockets.sync.client import connect

from pi0_eqm.serving.wire import WireLimits
from pi0_eqm.serving.wire import packb
from pi0_eqm.serving.wire import unpackb


class WebsocketClientPolicy:
    def __init__(self, host: str = "127.0.0.1", port: int | None = 8000, *, connect_timeout: float = 300.0,
                 limits: WireLimits | None = None):
        uri = host if host.startswith(("ws://", "wss://")) else f"ws://{host}"
        if port is not None and not host.startswith(("ws://", "wss://")):
            uri += f":{port}"
        self._limits = limits or WireLimits()
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._ws = connect(uri, compression=None, max_size=None, open_timeout=30)
                break
            except (ConnectionRefusedError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        self._metadata = unpackb(self._ws.recv(), self._limits)

    def get_server_metadata(self) -> dict:
        return self._metadata

    def infer(self, obs: dict) -> dict[str, Any]:
        self._ws.send(packb(obs))
        reply = self._ws.recv()
        if isinstance(reply, str):
            raise RuntimeError(f"Error in inference server:\n{reply}")
        return unpackb(reply, self._limits)

    def reset(self) -> None:
        self._ws.send(packb({"__control__": "reset"}))
        reply = self._ws.recv()
        if isinstance(reply, str):
            raise RuntimeError(f"Error in inference server:\n{reply}")

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> WebsocketClientPolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
