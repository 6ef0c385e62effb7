"""A JSON-RPC client for this node's bitcoind, over one persistent HTTP/1.1 connection.

Errors are typed: `BitcoindError` carries bitcoind's code and message, `RpcUnavailable`
means bitcoind could not be reached or refused our credentials, and `RpcProtocolError`
means what came back was not a JSON-RPC answer. Amounts are parsed as `Decimal`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["BitcoindError", "BitcoindRpc", "RpcProtocolError", "RpcUnavailable", "btc_to_sat"]

MAX_RESPONSE = 64 << 20


class RpcUnavailable(Exception):
    """bitcoind did not answer, or refused our credentials."""


class RpcProtocolError(Exception):
    """bitcoind's answer was not a JSON-RPC response of the expected shape."""


class BitcoindError(Exception):
    """bitcoind answered with an error."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


def btc_to_sat(value: Any) -> int:
    """BTC as bitcoind writes it (a JSON number) to satoshis, exactly."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise RpcProtocolError(f"expected an amount, got {value!r}")
    sats = Decimal(value) * 100_000_000
    if sats != sats.to_integral_value() or sats < 0:
        raise RpcProtocolError(f"amount {value} is not a whole number of satoshis")
    return int(sats)


class BitcoindRpc:
    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        cookie_file: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"bitcoind RPC URL {url!r} must be http://host:port")
        self.host = parts.hostname
        self.port = parts.port or 8332
        self.path = parts.path or "/"
        self.user = user
        self.password = password
        self.cookie_file = cookie_file
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._counter = 0

    def _authorization(self) -> str:
        if self.cookie_file is not None:
            try:
                credentials = self.cookie_file.read_text().strip()
            except FileNotFoundError as exc:  # bitcoind removes it when it stops
                raise RpcUnavailable(
                    f"bitcoind is not running: it has no cookie at {self.cookie_file}"
                ) from exc
            except OSError as exc:
                raise RpcUnavailable(
                    f"cannot read bitcoind cookie {self.cookie_file}: {exc}"
                ) from exc
        else:
            credentials = f"{self.user}:{self.password}"
        return "Basic " + base64.b64encode(credentials.encode()).decode()

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    async def call(self, method: str, *params: Any) -> Any:
        async with self._lock:
            for attempt in (1, 2):  # a kept-alive connection may have been closed meanwhile
                try:
                    return await asyncio.wait_for(self._exchange(method, params), self.timeout)
                except (asyncio.LimitOverrunError, ValueError) as exc:  # an over-long line
                    await self.close()
                    raise RpcProtocolError(f"{method}: malformed HTTP answer: {exc}") from exc
                except TimeoutError as exc:  # before OSError, of which it is a kind: a hung
                    await self.close()  # bitcoind is not asked a second time
                    raise RpcUnavailable(
                        f"bitcoind at {self.host}:{self.port} did not answer {method} "
                        f"within {self.timeout:g} s"
                    ) from exc
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                    await self.close()
                    if attempt == 2:
                        reason = str(exc) or type(exc).__name__
                        raise RpcUnavailable(
                            f"bitcoind at {self.host}:{self.port}: {reason}"
                        ) from exc
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, params: tuple[Any, ...]) -> Any:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        self._counter += 1
        body = json.dumps(
            {"jsonrpc": "1.0", "id": self._counter, "method": method, "params": list(params)},
            default=_json_default,
        ).encode()
        request = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: {self._authorization()}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode()
        writer.write(request + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError) as exc:
            raise RpcProtocolError(f"not an HTTP response: {status_line[:80]!r}") from exc
        length, close = None, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                try:
                    length = int(value.strip())
                except ValueError as exc:
                    raise RpcProtocolError(f"bad Content-Length {value.strip()[:20]!r}") from exc
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        if status == 401:
            raise RpcUnavailable("bitcoind refused the RPC credentials (HTTP 401)")
        if length is None or length > MAX_RESPONSE:
            raise RpcProtocolError(f"HTTP {status} answer without a usable Content-Length")
        payload = await reader.readexactly(length)
        if close:
            await self.close()
        try:
            answer = json.loads(payload, parse_float=Decimal)
        except ValueError as exc:
            raise RpcProtocolError(f"{method}: answer is not JSON: {payload[:80]!r}") from exc
        if not isinstance(answer, dict) or "result" not in answer or "error" not in answer:
            raise RpcProtocolError(f"{method}: answer is not a JSON-RPC response")
        error = answer["error"]
        if error is not None:
            if not isinstance(error, dict):
                raise RpcProtocolError(f"{method}: malformed error {error!r}")
            code = error.get("code")
            if not isinstance(code, int) or isinstance(code, bool):
                raise RpcProtocolError(f"{method}: error without an integer code: {error!r:.80}")
            raise BitcoindError(method, code, str(error.get("message", "")))
        return answer["result"]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot send {type(value).__name__} to bitcoind")
