"""The API's way to the engine: its owner-only control socket, newline-delimited JSON, one
request at a time on a connection kept per worker. The engine checks the caller's Unix
credentials; the API tells it on whose behalf it asks (`actor`, `role`), and for the
commands the engine authorizes itself passes the operator's proof (username and fresh TOTP
code), which the engine checks against its own registry."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

__all__ = ["EngineLink", "EngineRefused", "EngineUnavailable"]

MAX_ANSWER = 64 << 20


class EngineUnavailable(Exception):
    """The engine could not be reached or did not answer in time."""


class EngineRefused(Exception):
    """The engine answered with an error: `code` is its stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EngineLink:
    def __init__(self, path: Path, timeout: float = 300.0) -> None:
        self.path = path
        self.timeout = timeout
        self._socket: socket.socket | None = None
        self._reader: Any = None
        self._ids = itertools.count(1)

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise EngineUnavailable(f"the engine's socket {self.path}: {exc.strerror}") from exc
        self._socket = sock
        self._reader = sock.makefile("rb")

    def close(self) -> None:
        if self._socket is not None:
            self._reader.close()
            self._socket.close()
            self._socket = None

    def call(
        self,
        method: str,
        params: dict[str, Any],
        actor: str,
        role: str,
        within: float | None = None,
        proof: dict[str, str] | None = None,
    ) -> Any:
        request: dict[str, Any] = {
            "id": next(self._ids),
            "method": method,
            "params": params,
            "actor": actor,
            "role": role,
        }
        if proof is not None:
            request["proof"] = proof
        line = json.dumps(request).encode() + b"\n"
        for attempt in (1, 2):
            # Only a kept connection is retried (the engine may have restarted since it was
            # opened); a request that failed on a fresh one is not sent twice.
            reused = self._socket is not None
            if not reused:
                self._connect()
            assert self._socket is not None
            try:
                self._socket.settimeout(within or self.timeout)
                self._socket.sendall(line)
                answer = self._reader.readline(MAX_ANSWER)
            except TimeoutError as exc:
                self.close()
                raise EngineUnavailable(f"the engine did not answer {method} in time") from exc
            except OSError as exc:
                self.close()
                if not reused or attempt == 2:
                    raise EngineUnavailable(f"the engine's socket: {exc}") from exc
                continue
            if answer:
                break
            self.close()
            if not reused or attempt == 2:
                raise EngineUnavailable("the engine closed the connection without answering")
        reply = json.loads(answer)
        if "error" in reply:
            raise EngineRefused(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]
