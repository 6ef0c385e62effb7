"""`line`: a serial line (a 16550 UART, a USB serial adapter, a pseudo-terminal) as one byte
stream for the control API's requests and answers, both ends in raw mode at 115200 baud, 8N1,
no flow control, no modem lines (`CLOCAL`).

A serial line, unlike a socket or a virtio-serial port, never says who is at its other end: a
laptop unplugged half-way through a request leaves half of it on the line, and an answer
written after it left waits for whoever plugs in next. Both ends deal with that:

* the node's bridge drops a request that pauses for more than `IDLE` seconds between two bytes
  (a client writes each request in one go, so only a client that went away pauses);
* the client flushes what the line holds before it writes, and tags each request with a fresh
  `Wire-Exchange` header that the bridge copies into its answer; answers with another tag
  (left for somebody else) are read and discarded.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import secrets
import select
import termios
import time
from http.client import HTTPResponse
from typing import Any

__all__ = [
    "EXCHANGE",
    "IDLE",
    "LineReader",
    "exchange",
    "open_line",
    "valid_tag",
]

EXCHANGE = "Wire-Exchange"
IDLE = 2.0
SPEED = termios.B115200
_TAG = re.compile(r"[0-9A-Za-z-]{1,64}")


def valid_tag(value: str) -> bool:
    return _TAG.fullmatch(value) is not None


def open_line(path: str) -> int:
    """The line at `path`, opened read-write (never as a controlling terminal) and put in raw
    mode; raises OSError, or ValueError if `path` is not a terminal."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        if not os.isatty(fd):
            raise ValueError(f"{path} is not a serial line (not a terminal device)")
        _raw(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _raw(fd: int) -> None:
    iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(fd)
    iflag = 0  # no CR/NL translation, no XON/XOFF, no parity marks
    oflag = 0  # bytes out as written
    lflag = 0  # no echo, no line editing, no signals
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | termios.CRTSCTS)) | (
        termios.CS8 | termios.CREAD | termios.CLOCAL
    )
    cflag &= ~termios.HUPCL  # closing the line does not drop it
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, SPEED, SPEED, cc])


class LineReader(io.RawIOBase):
    """Reads of a line that wait at most `timeout` seconds for a byte (None: for ever), then
    raise TimeoutError. The line never ends: a read returns at least one byte."""

    def __init__(self, fd: int, timeout: float | None = None) -> None:
        super().__init__()
        self.fd = fd
        self.timeout = timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.timeout is not None:
            ready, _, _ = select.select([self.fd], [], [], self.timeout)
            if not ready:
                raise TimeoutError(f"no byte on the line for {self.timeout:g} s")
        data = os.read(self.fd, len(buffer))
        buffer[: len(data)] = data
        return len(data)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Answers(io.BufferedReader):
    """What `HTTPResponse` reads answers from: one buffered reader for all of them, so the
    bytes after one answer stay for the next (a response closes its reader when read)."""

    def makefile(self, mode: str) -> _Answers:
        return self

    def close(self) -> None:
        pass


def exchange(
    path: str, method: str, target: str, headers: dict[str, str], body: bytes | None,
    timeout: float,
) -> tuple[int, bytes]:  # fmt: skip
    """One request over the line at `path`: the status and body of its answer (the one that
    carries this request's tag). Raises OSError, TimeoutError when no answer came within
    `timeout` seconds, or ValueError if `path` is not a line."""
    tag = secrets.token_hex(12)
    head = [f"{method} {target} HTTP/1.1", "Host: wire-mpc"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head += [f"Content-Length: {len(body or b'')}", f"{EXCHANGE}: {tag}", "Connection: close"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    deadline = time.monotonic() + timeout
    fd = open_line(path)
    try:
        termios.tcflush(fd, termios.TCIFLUSH)  # what is left on the line is somebody else's
        write_all(fd, request)
        reader = LineReader(fd)
        answers = _Answers(reader)
        while True:
            reader.timeout = max(0.0, deadline - time.monotonic())
            response = HTTPResponse(answers)  # type: ignore[arg-type]
            try:
                response.begin()
                payload = response.read()
            except http.client.HTTPException:
                continue  # the tail of an answer cut short: read on to the next status line
            if response.getheader(EXCHANGE) == tag:
                return response.status, payload
    finally:
        os.close(fd)
