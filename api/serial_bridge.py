"""`serial_bridge`: the control API over the appliance VM's virtio-serial port, or over a
serial line (a UART or a USB serial adapter, for an operator at the machine).

    python -m api.serial_bridge --port /dev/virtio-ports/wire.api --socket /run/wire-mpc/api.sock
    python -m api.serial_bridge --line ttyS1 --socket /run/wire-mpc/api.sock

The host reaches the API through a QEMU virtio-serial port, which the guest sees as a character
device; a laptop reaches it through a serial line (`api.line`). Either is one byte stream with
no connection boundaries, so the bridge frames the requests itself, one after another:

* the request line and headers up to the blank line (64 KiB at most), then exactly
  `Content-Length` bytes of body (1 MiB at most); `Transfer-Encoding` (chunked) requests are
  refused with 411, since only a length says where a request ends;
* each request goes to the API's Unix socket on a connection of its own, with its `Connection`
  header replaced by `Connection: close`, and the response is read until gunicorn closes it;
* the response goes back verbatim, except that one without a `Content-Length` (close-delimited
  or chunked) is buffered and given one, so the host client knows where it ends, and that it
  carries the request's `Wire-Exchange` tag if it had one.

Bad input (a garbage line, too large a header block, a bad `Content-Length`) is answered with
`400 Bad Request` and a short reason, and the bridge reads on from the next blank line; an API
socket that is missing or refuses gets `502 Bad Gateway`. Every answer says `Connection: close`.

Only one host client at a time: QEMU's chardev socket accepts one connection, and requests of
two clients interleaved on the port could not be told apart. When the client disconnects the
port reads end-of-file; the bridge then reopens it, once a second, dropping anything half read.
A line never ends and never says its client went away: a request that pauses for more than
`api.line.IDLE` seconds is dropped instead (`serve_line`).

Request bodies and headers (passwords, TOTP codes, session tokens) are never logged: one line
per request gives the method, the path without its query, the status and the time taken.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import os
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from api.line import EXCHANGE, IDLE, LineReader, open_line, valid_tag

__all__ = [
    "BadRequest",
    "Request",
    "complete_response",
    "error_response",
    "forward",
    "line_device",
    "main",
    "peer_hung_up",
    "read_request",
    "respond",
    "run",
    "run_line",
    "serve_line",
    "serve_stream",
]

DEFAULT_PORT = "/dev/virtio-ports/wire.api"
DEFAULT_SOCKET = "/run/wire-mpc/api.sock"
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_RESPONSE = 16 * 1024 * 1024
API_TIMEOUT = 960.0  # gunicorn's own timeout is 900 s: a DKG answers when the ceremony ends
RETRY_SECONDS = 1.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

log = logging.getLogger("wire-api.serial-bridge")

Headers = tuple[tuple[str, str], ...]

_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rf"({_NAME}) ([\x21-\x7e]+) (HTTP/1\.[01])")
_HEADER = re.compile(rf"({_NAME}):[ \t]*(.*?)[ \t]*")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LENGTH = re.compile(r"[0-9]{1,18}")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "expect", "content-length"}
_NO_BODY = {204, 304}
_REASONS = {
    400: "Bad Request",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Request:
    """One framed request; `headers` and `body` stay out of its repr (they carry secrets)."""

    method: str
    target: str
    version: str
    headers: Headers = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def path(self) -> str:
        """The target without its query, short enough to log."""
        return self.target.split("?", 1)[0][:200]

    def encode(self) -> bytes:
        """The request as forwarded: hop-by-hop headers dropped, `Connection: close` added."""
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{name}: {value}" for name, value in self.headers if _forwarded(name)]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True)
class BadRequest:
    """A request the bridge answers itself, with `status` and a reason naming what was wrong."""

    status: int
    reason: str


class ApiFailure(Exception):
    """The API could not be reached or did not answer properly: `status` is 502 or 504."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def _forwarded(name: str) -> bool:
    return name.lower() not in _HOP_BY_HOP


# -- reading requests ---------------------------------------------------------------------------


def read_request(
    stream: BinaryIO, on_continue: Callable[[], None] | None = None
) -> Request | BadRequest:
    """The next request on `stream`, or what was wrong with it (the stream is then positioned
    after the bad request, so the next call reads the next one). `on_continue` is called before
    the body is read when the client asked for `Expect: 100-continue`. Raises EOFError when the
    stream ends, also in the middle of a request (whose client has gone)."""
    head = _read_head(stream)
    if isinstance(head, BadRequest):
        return head
    parsed = _parse_head(head)
    if isinstance(parsed, BadRequest):
        return parsed
    method, target, version, headers = parsed
    length = _body_length(stream, headers)
    if isinstance(length, BadRequest):
        return length
    if length and on_continue is not None and _expects_continue(headers):
        on_continue()
    body = _read_exactly(stream, length)
    return Request(method, target, version, headers, body)


def _read_head(stream: BinaryIO) -> list[bytes] | BadRequest:
    """The lines of the head up to the blank line, without their line ends. Blank lines before
    the request line are skipped; past MAX_HEAD the rest is discarded up to the blank line."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = stream.readline(MAX_HEAD + 1 - size)
        if not line:
            raise EOFError("the port closed in the middle of a request")
        if _is_blank(line):
            if lines:
                return lines
            continue
        size += len(line)
        if size > MAX_HEAD:
            _discard_to_blank_line(stream, line.endswith(b"\n"))
            return BadRequest(400, f"request header block larger than {MAX_HEAD} bytes")
        lines.append(line.removesuffix(b"\n").removesuffix(b"\r"))


def _is_blank(line: bytes) -> bool:
    return line in (b"\r\n", b"\n")


def _discard_to_blank_line(stream: BinaryIO, at_line_start: bool) -> None:
    while True:
        piece = stream.readline(MAX_HEAD)
        if not piece:
            raise EOFError("the port closed in the middle of a request")
        if at_line_start and _is_blank(piece):
            return
        at_line_start = piece.endswith(b"\n")


def _parse_head(lines: list[bytes]) -> tuple[str, str, str, Headers] | BadRequest:
    first = _REQUEST_LINE.fullmatch(lines[0].decode("latin-1"))
    if first is None:
        return BadRequest(400, "malformed request line (expected 'METHOD /path HTTP/1.1')")
    headers: list[tuple[str, str]] = []
    for number, raw in enumerate(lines[1:], start=2):
        header = _parse_header(raw, number)
        if isinstance(header, BadRequest):
            return header
        headers.append(header)
    if not all(valid_tag(tag) for tag in _values(tuple(headers), EXCHANGE.lower())):
        return BadRequest(400, f"invalid {EXCHANGE} (1 to 64 letters, digits or dashes)")
    return first[1], first[2], first[3], tuple(headers)


def _parse_header(raw: bytes, number: int) -> tuple[str, str] | BadRequest:
    if raw[:1] in (b" ", b"\t"):
        return BadRequest(400, f"folded header line (line {number}) is not supported")
    match = _HEADER.fullmatch(raw.decode("latin-1"))
    if match is None or _BAD_VALUE.search(match[2]):
        return BadRequest(400, f"malformed header line (line {number})")
    return match[1], match[2]


def _values(headers: Headers, name: str) -> list[str]:
    """The values of header `name`, comma-separated lists split."""
    found = [value for key, value in headers if key.lower() == name]
    return [item.strip() for value in found for item in value.split(",")]


def _body_length(stream: BinaryIO, headers: Headers) -> int | BadRequest:
    """The length of the body from Content-Length; a refused request's body is skipped."""
    codings = _values(headers, "transfer-encoding")
    if codings:
        if codings[-1].lower() == "chunked":
            _skip_chunked(stream)
        return BadRequest(411, "Transfer-Encoding is not supported: send a Content-Length")
    lengths = set(_values(headers, "content-length"))
    if not lengths:
        return 0
    if len(lengths) > 1 or not _LENGTH.fullmatch(next(iter(lengths))):
        return BadRequest(400, "invalid Content-Length (expected one decimal number)")
    length = int(lengths.pop())
    if length > MAX_BODY:
        if not _expects_continue(headers):  # a client waiting for 100 sends no body
            _discard(stream, length)
        return BadRequest(413, f"request body larger than {MAX_BODY} bytes")
    return length


def _expects_continue(headers: Headers) -> bool:
    return "100-continue" in (value.lower() for value in _values(headers, "expect"))


def _read_exactly(stream: BinaryIO, length: int) -> bytes:
    pieces: list[bytes] = []
    while length > 0:
        piece = stream.read(length)
        if not piece:
            raise EOFError("the port closed in the middle of a request body")
        pieces.append(piece)
        length -= len(piece)
    return b"".join(pieces)


def _discard(stream: BinaryIO, length: int) -> None:
    while length > 0:
        length -= len(_read_exactly(stream, min(length, MAX_HEAD)))


def _skip_chunked(stream: BinaryIO) -> None:
    """Skip a chunked body; if it is malformed, the rest is resynchronised as bad requests."""
    try:
        for _ in _chunks(stream):
            pass
    except ValueError:
        pass


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The data of a chunked body, in pieces of at most MAX_HEAD bytes, then its trailers are
    skipped. Raises ValueError when malformed, EOFError when the stream ends."""
    while True:
        line = stream.readline(1024)
        if not line:
            raise EOFError("the stream ended in a chunked body")
        if not line.endswith(b"\n"):
            raise ValueError("chunk size line too long")
        size_text = line.split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,15}", size_text):
            raise ValueError("bad chunk size")
        size = int(size_text, 16)
        if size == 0:
            _discard_to_blank_line(stream, True)
            return
        while size > 0:
            piece = _read_exactly(stream, min(size, MAX_HEAD))
            size -= len(piece)
            yield piece
        if not _is_blank(stream.readline(3)):
            raise ValueError("chunk not followed by a line end")


# -- answering ---------------------------------------------------------------------------------


def error_response(status: int, reason: str) -> bytes:
    """The bridge's own answer: plain text naming what was wrong."""
    body = f"{reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def forward(request: Request, api_socket: str, timeout: float = API_TIMEOUT) -> bytes:
    """Send `request` to the API on a connection of its own; the raw response, read until the
    API closes the connection. Raises ApiFailure."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        _connect(connection, api_socket)
        try:
            connection.sendall(request.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the API answered early (and closed); its answer may still be readable
        except TimeoutError:
            raise ApiFailure(504, "the API did not read the request in time") from None
        return _read_until_closed(connection)


def _connect(connection: socket.socket, api_socket: str) -> None:
    try:
        connection.connect(api_socket)
    except FileNotFoundError:
        raise ApiFailure(502, f"the API socket {api_socket} does not exist") from None
    except ConnectionRefusedError:
        raise ApiFailure(502, f"the API socket {api_socket} refused the connection") from None
    except OSError as exc:
        raise ApiFailure(502, f"cannot reach the API socket {api_socket}: {exc.strerror}") from None


def _read_until_closed(connection: socket.socket) -> bytes:
    pieces: list[bytes] = []
    size = 0
    while True:
        try:
            piece = connection.recv(65536)
        except TimeoutError:
            raise ApiFailure(504, "the API did not answer in time") from None
        except OSError as exc:
            raise ApiFailure(502, f"the API connection failed: {exc.strerror}") from None
        if not piece:
            return b"".join(pieces)
        size += len(piece)
        if size > MAX_RESPONSE:
            raise ApiFailure(502, f"the API response is larger than {MAX_RESPONSE} bytes")
        pieces.append(piece)


def complete_response(raw: bytes, method: str) -> tuple[int, bytes]:
    """The status of the API's response `raw` and the response to pass on: verbatim when it
    has a Content-Length (or no body), otherwise with the body buffered and its length added.
    Interim 1xx responses are dropped. Raises ApiFailure if `raw` is not a complete response."""
    while True:
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            raise ApiFailure(502, "the API closed the connection without a complete response")
        head, body = raw[:end].split(b"\r\n"), raw[end + 4 :]
        status = _response_status(head[0])
        if status >= 200:
            break
        raw = body
    if method == "HEAD" or status in _NO_BODY:
        return status, raw[: end + 4]
    return status, _framed(head, body)


def _response_status(line: bytes) -> int:
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise ApiFailure(502, "the API sent a malformed status line")
    return int(match[1])


def _framed(head: list[bytes], body: bytes) -> bytes:
    headers = [line.decode("latin-1").partition(":") for line in head[1:]]
    lengths = {value.strip() for name, _, value in headers if name.lower() == "content-length"}
    codings = [value for name, _, value in headers if name.lower() == "transfer-encoding"]
    if lengths and not codings:
        length = _response_length(lengths)
        if len(body) < length:
            raise ApiFailure(502, "the API response ended before its Content-Length")
        return b"\r\n".join(head) + b"\r\n\r\n" + body[:length]
    if codings and codings[-1].split(",")[-1].strip().lower() == "chunked":
        body = _dechunk(body)
    kept = [line for line in head[1:] if not _is_framing_header(line)]
    kept.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join([head[0], *kept]) + b"\r\n\r\n" + body


def _response_length(lengths: set[str]) -> int:
    if len(lengths) != 1 or not _LENGTH.fullmatch(next(iter(lengths))):
        raise ApiFailure(502, "the API sent an invalid Content-Length")
    return int(lengths.pop())


def _is_framing_header(line: bytes) -> bool:
    name = line.split(b":", 1)[0].strip().lower()
    return name in (b"content-length", b"transfer-encoding")


def _dechunk(body: bytes) -> bytes:
    try:
        return b"".join(_chunks(io.BytesIO(body)))
    except (ValueError, EOFError):
        raise ApiFailure(502, "the API sent a malformed chunked body") from None


def answer(request: Request, api_socket: str, timeout: float = API_TIMEOUT) -> tuple[int, bytes]:
    """The status and the response to write back for `request`, carrying its tag."""
    try:
        status, data = complete_response(forward(request, api_socket, timeout), request.method)
    except ApiFailure as failure:
        status, data = failure.status, error_response(failure.status, failure.reason)
    except Exception:
        log.exception("bridge error on %s %s", request.method, request.path)
        status, data = 500, error_response(500, "the serial bridge failed; see its log")
    return status, _tagged(data, request)


def _tagged(data: bytes, request: Request) -> bytes:
    """The response with the request's `Wire-Exchange` tag (see `api.line`), if it had one."""
    tags = _values(request.headers, EXCHANGE.lower())
    if not tags:
        return data
    status_line, rest = data.split(b"\r\n", 1)
    return status_line + f"\r\n{EXCHANGE}: {tags[-1]}\r\n".encode("ascii") + rest


# -- the port ------------------------------------------------------------------------------------


def write_all(sink: Sink, data: bytes) -> None:
    while data:
        written = sink.write(data)
        if not written:
            raise OSError("the port accepted no bytes")
        data = data[written:]


def serve_stream(
    source: BinaryIO,
    sink: Sink,
    api_socket: str,
    *,
    timeout: float = API_TIMEOUT,
    hung_up: Callable[[], bool] = lambda: False,
    on_answer: Callable[[], None] = lambda: None,
) -> int:
    """Answer the requests read from `source` on `sink`, one after another, until `source`
    ends; the number of requests answered (`on_answer()` is called after each). A response is
    dropped when `hung_up()` says the client that asked has gone (it would otherwise reach the
    next client)."""
    answered = 0
    while True:
        try:
            request = read_request(source, on_continue=lambda: write_all(sink, CONTINUE))
        except EOFError:
            return answered
        started = time.monotonic()
        status, data = respond(request, api_socket, timeout)
        if hung_up():
            log.warning("client hung up before its %d answer; dropped", status)
            return answered
        write_all(sink, data)
        answered += 1
        _log_answer(request, status, started)
        on_answer()


def serve_line(
    fd: int,
    api_socket: str,
    *,
    timeout: float = API_TIMEOUT,
    idle: float = IDLE,
    on_answer: Callable[[], None] = lambda: None,
) -> None:
    """Answer the requests on the serial line `fd` (see `api.line`) until reading or writing
    it fails (OSError). A request that pauses for more than `idle` seconds is dropped: its
    client went away, and what it left must not run into the next client's request."""
    sink = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115 (the fd is the caller's)
    reader = LineReader(fd)
    source = io.BufferedReader(reader)
    while True:
        reader.timeout = None
        source.peek(1)  # a request begins
        reader.timeout = idle
        try:
            request = read_request(source, on_continue=lambda: write_all(sink, CONTINUE))
        except TimeoutError:
            log.warning("a request stopped for more than %g s half-way; dropped", idle)
            reader = LineReader(fd)  # what the old reader buffered goes with it
            source = io.BufferedReader(reader)
            continue
        started = time.monotonic()
        status, data = respond(request, api_socket, timeout)
        write_all(sink, data)
        _log_answer(request, status, started)
        on_answer()


def respond(request: Request | BadRequest, api_socket: str, timeout: float) -> tuple[int, bytes]:
    """The status and the response to write back for one request read, or refused."""
    if isinstance(request, BadRequest):
        return request.status, error_response(request.status, request.reason)
    return answer(request, api_socket, timeout)


def _log_answer(request: Request | BadRequest, status: int, started: float) -> None:
    elapsed = round((time.monotonic() - started) * 1000)
    if isinstance(request, BadRequest):
        log.warning("refused request -> %d (%s) in %d ms", status, request.reason, elapsed)
    else:
        log.info("%s %s -> %d in %d ms", request.method, request.path, status, elapsed)


def peer_hung_up(fd: int) -> bool:
    """Whether the host side of the port is disconnected (virtio-serial reports POLLHUP)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


class _Trouble:
    """Logs the first of a run of identical port failures, and how many there were."""

    def __init__(self, port: str, retry: float) -> None:
        self.port = port
        self.retry = retry
        self.last = ""
        self.count = 0

    def failed(self, message: str, exc_info: bool = False) -> None:
        if message != self.last:
            log.warning(
                "port %s: %s; retrying every %g s", self.port, message, self.retry,
                exc_info=exc_info,
            )  # fmt: skip
            self.last = message
        self.count += 1

    def recovered(self) -> None:
        if self.count:
            log.info("port %s usable again after %d failed attempts", self.port, self.count)
        self.last, self.count = "", 0


def serve_port(
    port: str,
    api_socket: str,
    timeout: float = API_TIMEOUT,
    on_answer: Callable[[], None] = lambda: None,
) -> int:
    """Open the port and answer its requests until it ends; the number answered."""
    with open(port, "r+b", buffering=0, opener=_open_no_tty) as device:
        source = io.BufferedReader(device)
        hung_up = functools.partial(peer_hung_up, device.fileno())
        return serve_stream(
            source, device, api_socket, timeout=timeout, hung_up=hung_up, on_answer=on_answer
        )


def _open_no_tty(path: str, flags: int) -> int:
    """os.open, never making the port (if it is a terminal) the controlling one."""
    return os.open(path, flags | os.O_NOCTTY)


def run(
    port: str,
    api_socket: str,
    *,
    timeout: float = API_TIMEOUT,
    retry: float = RETRY_SECONDS,
    stop: threading.Event | None = None,
) -> None:
    """Serve the port, reopening it after end-of-file or errors, until `stop` is set."""
    stop = stop or threading.Event()
    trouble = _Trouble(port, retry)
    log.info("bridging %s to %s", port, api_socket)
    while not stop.is_set():
        try:
            answered = serve_port(port, api_socket, timeout, on_answer=trouble.recovered)
            log.debug("port %s ended after %d requests; reopening", port, answered)
        except OSError as exc:
            trouble.failed(exc.strerror or type(exc).__name__)
        except Exception as exc:  # a bug: never let it end the bridge
            trouble.failed(f"unexpected {type(exc).__name__}", exc_info=True)
        stop.wait(retry)


def run_line(
    line: str,
    api_socket: str,
    *,
    timeout: float = API_TIMEOUT,
    idle: float = IDLE,
    retry: float = RETRY_SECONDS,
) -> None:
    """Serve the serial line for ever, opening it again if it fails (a USB adapter pulled out
    and plugged back in comes back under the same name)."""
    trouble = _Trouble(line, retry)
    log.info("bridging %s to %s", line, api_socket)
    while True:
        try:
            fd = open_line(line)
            try:
                serve_line(fd, api_socket, timeout=timeout, idle=idle, on_answer=trouble.recovered)
            finally:
                os.close(fd)
        except OSError as exc:
            trouble.failed(exc.strerror or type(exc).__name__)
        except Exception as exc:  # a bug: never let it end the bridge
            trouble.failed(f"unexpected {type(exc).__name__}", exc_info=True)
        time.sleep(retry)


_LINE_NAME = re.compile(r"(?:/dev/)?((?:ttyS|ttyUSB|ttyACM)[0-9]{1,3})")


def line_device(name: str, console: str) -> str:
    """The device of the serial line `name` (`ttyS1`, `ttyUSB0`, `ttyACM0`, or its /dev
    path); raises ValueError naming what is wrong. `console` is the kernel's console devices
    (`/sys/class/tty/console/active`): the API cannot share a line with the console."""
    match = _LINE_NAME.fullmatch(name.strip())
    if match is None:
        raise ValueError(
            f"serial line {name.strip()[:40]!r}: expected a UART (ttyS<n>), a USB serial adapter "
            "(ttyUSB<n>) or a USB modem-class adapter (ttyACM<n>)"
        )
    if match[1] in console.split():
        raise ValueError(f"serial line {match[1]} is the kernel's console: choose another line")
    return f"/dev/{match[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m api.serial_bridge",
        description="Bridge HTTP requests on a virtio-serial port or a serial line to the "
        "control API socket.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT})")
    where.add_argument("--line", help="a serial line: ttyS<n>, ttyUSB<n> or ttyACM<n>")
    where.add_argument("--line-from", type=Path, help="a file (credential) naming the line")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"(default {DEFAULT_SOCKET})")
    parser.add_argument(
        "--timeout", type=float, default=API_TIMEOUT, help="seconds to wait for the API"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        if args.line is None and args.line_from is None:
            run(args.port, args.socket, timeout=args.timeout)
            return 0
        try:
            name = args.line if args.line is not None else _read_name(args.line_from)
            line = line_device(name, _console_devices())
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        run_line(line, args.socket, timeout=args.timeout)
    return 0


def _read_name(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")[:64]
    except OSError as exc:
        message = f"cannot read the serial line's name from {path}: {exc.strerror}"
        raise ValueError(message) from None


def _console_devices() -> str:
    try:
        return Path("/sys/class/tty/console/active").read_text()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
