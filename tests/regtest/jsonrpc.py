"""bitcoind's HTTP JSON-RPC front: basic auth (user and password, or the cookie), envelopes and
batches with bitcoind's HTTP statuses, amounts as BTC with 8 decimals; methods are passed in."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import rpc_errors as codes
from .rpc_errors import RpcError

__all__ = ["Amount", "Dispatcher", "RpcServer", "encode_json", "json_type_name"]

log = logging.getLogger(__name__)

Dispatcher = Callable[[str, "list[Any] | dict[str, Any]"], Any]
MAX_BODY = 64 * 1024 * 1024  # bitcoind accepts 32 MiB of block hex plus envelope


class Amount(int):
    """Satoshis (or satoshis per kvB), written in JSON as BTC with eight decimals."""


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, Amount):
        sign = "-" if value < 0 else ""
        whole, fraction = divmod(abs(int(value)), 100_000_000)
        out.append(f"{sign}{whole}.{fraction:08d}")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        # UniValue writes doubles with 16 significant digits ("1", not "1.0").
        out.append(format(value, ".16g"))
    elif isinstance(value, Decimal):
        out.append(str(value))
    elif isinstance(value, str):
        out.append(json.dumps(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(json.dumps(key))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode_json(value: Any) -> str:
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def json_type_name(value: Any) -> str:
    """UniValue's names for JSON types, as bitcoind's type errors use them."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _error_object(error: RpcError) -> dict[str, Any]:
    return {"code": error.code, "message": error.message}


class RpcServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        dispatch: Dispatcher,
        credentials: list[tuple[str, str]],
    ) -> None:
        self.dispatch = dispatch
        self._in_flight = 0
        self._idle = threading.Condition()
        self.authorizations = [
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            for user, password in credentials
        ]
        super().__init__(address, _RequestHandler)

    def request_started(self) -> None:
        with self._idle:
            self._in_flight += 1

    def request_finished(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no request is being answered (so `stop` gets its reply out)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def authorized(self, header: str | None) -> bool:
        if header is None:
            return False
        # Compare every credential (no early exit) in constant time per comparison.
        matches = [hmac.compare_digest(header.encode(), a.encode()) for a in self.authorizations]
        return any(matches)

    def execute(self, request: Any) -> tuple[dict[str, Any] | None, int]:
        """One JSON-RPC request object → (reply or None for a 2.0 notification, status)."""
        if not isinstance(request, dict):
            error = RpcError(codes.INVALID_REQUEST, "Invalid Request object")
            return {"result": None, "error": _error_object(error), "id": None}, 400
        request_id = request.get("id")
        version_2 = request.get("jsonrpc") == "2.0"
        try:
            method = request.get("method")
            if method is None:
                raise RpcError(codes.INVALID_REQUEST, "Missing method")
            if not isinstance(method, str):
                raise RpcError(codes.INVALID_REQUEST, "Method must be a string")
            params = request.get("params")
            if params is None:
                params = []
            if not isinstance(params, list | dict):
                raise RpcError(codes.INVALID_REQUEST, "Params must be an array or object")
            result = self.dispatch(method, params)
        except Exception as failure:
            if isinstance(failure, RpcError):
                error = failure
            else:  # bitcoind reports an unexpected exception as a misc error, so do we
                log.exception("%s failed", request.get("method"))
                error = RpcError(codes.MISC_ERROR, str(failure) or type(failure).__name__)
            if version_2:
                reply = {"jsonrpc": "2.0", "error": _error_object(error), "id": request_id}
                return (reply if "id" in request else None), 200
            status = {codes.INVALID_REQUEST: 400, codes.METHOD_NOT_FOUND: 404}.get(error.code, 500)
            return {"result": None, "error": _error_object(error), "id": request_id}, status
        if version_2:
            reply = {"jsonrpc": "2.0", "result": result, "id": request_id}
            return (reply if "id" in request else None), 200
        return {"result": result, "error": None, "id": request_id}, 200


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; with Nagle on, a kept-alive client waits
    # for its delayed ACK (40 ms) on every call.
    disable_nagle_algorithm = True
    timeout = 30  # idle kept-alive connections close, like bitcoind's -rpcservertimeout
    server: RpcServer
    server_version = "bitcoind-regtest"
    sys_version = ""
    # A request line without a version is answered as HTTP/1.1 (http.server would answer
    # HTTP/0.9: a bare HTML body without a status line).
    default_request_version = "HTTP/1.1"

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.close_connection = True
        self.send_response(code, message)
        self.send_header("Connection", "close")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def _reply(self, status: int, body: bytes = b"", extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(405, b"JSONRPC server handles only POST requests")

    def do_PUT(self) -> None:
        self.do_GET()

    def do_DELETE(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self.server.request_started()
        try:
            self._post()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("request failed")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._reply(500)
        finally:
            self.server.request_finished()

    def _post(self) -> None:
        if not self.server.authorized(self.headers.get("Authorization")):
            self._reply(401, extra={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
            return
        path = self.path.split("?", 1)[0]
        if path not in ("/", "") and not path.startswith("/wallet/"):
            self._reply(404)
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._reply(400)
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._reply(413 if length > MAX_BODY else 400)
            return
        body = self.rfile.read(length)
        reply, status = self._handle(body)
        self._reply(status, encode_json(reply).encode() + b"\n" if reply is not None else b"")

    def _handle(self, body: bytes) -> tuple[Any, int]:
        try:
            request = json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError, binascii.Error):
            error = RpcError(codes.PARSE_ERROR, "Parse error")
            return {"result": None, "error": _error_object(error), "id": None}, 500
        if isinstance(request, dict):
            reply, status = self.server.execute(request)
            return reply, (204 if reply is None else status)
        if isinstance(request, list):
            replies = [self.server.execute(item)[0] for item in request]
            return [r for r in replies if r is not None], 200
        error = RpcError(codes.PARSE_ERROR, "Top-level object parse error")
        return {"result": None, "error": _error_object(error), "id": None}, 500
