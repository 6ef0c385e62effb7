"""The virtio-serial bridge: HTTP requests framed on one byte stream, each forwarded to the
API's Unix socket as a connection of its own.

The real port (`/dev/virtio-ports/wire.api`) exists only inside the appliance VM, so a
`socket.socketpair()` stands in for it: like the port it is one bidirectional byte stream with
no message boundaries, and the test holds the host's end. The end-to-end test runs the real
CLI on a pseudo-terminal in raw mode instead, because the bridge opens its port by path.
The API is a real HTTP server on a Unix socket in a temporary directory: a small
`http.server` handler that can also misbehave (no Content-Length, chunked), or a real
gunicorn serving a Falcon app. No mocks.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import io
import json
import logging
import os
import select
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from api.line import exchange, open_line
from api.mpc_operator import Client, Failure
from api.serial_bridge import (
    MAX_HEAD,
    BadRequest,
    Request,
    complete_response,
    line_device,
    peer_hung_up,
    read_request,
    run,
    serve_line,
    serve_stream,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


# -- the API ------------------------------------------------------------------------------------


class _Api(http.server.BaseHTTPRequestHandler):
    """Echoes what it received as JSON, with a Content-Length, and closes on
    `Connection: close`; a few paths answer the ways gunicorn might not."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the default one needs a TCP client address

    def do_GET(self) -> None:
        if self.path == "/close-delimited":
            self._raw({"Connection": "close"}, b"no length, ends when the server closes")
        elif self.path == "/chunked":
            self._raw({"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        else:
            if self.path == "/slow":
                time.sleep(0.5)
            self._echo(200, b"")

    def do_POST(self) -> None:
        self._echo(201, self.rfile.read(int(self.headers["Content-Length"])))

    def _echo(self, status: int, body: bytes) -> None:
        data = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "body": body.decode(),
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _raw(self, headers: dict[str, str], data: bytes) -> None:
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for a Unix socket (108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="bridge-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def api_socket(short_dir: Path) -> Iterator[str]:
    path = str(short_dir / "api.sock")
    server = socketserver.ThreadingUnixStreamServer(path, _Api)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()
    thread.join(5)


# -- the port -----------------------------------------------------------------------------------


class Port:
    """A socketpair standing in for the virtio-serial port: the bridge serves one end in a
    thread, the test is the host client on the other."""

    def __init__(self, api_socket: str) -> None:
        self.host, guest = socket.socketpair()
        self.rfile = self.host.makefile("rb")
        self._pool = ThreadPoolExecutor(1)
        self.served: Future[int] = self._pool.submit(self._serve, guest, api_socket)

    @staticmethod
    def _serve(guest: socket.socket, api_socket: str) -> int:
        with guest, guest.makefile("rb") as source, guest.makefile("wb", buffering=0) as sink:
            hung_up = functools.partial(peer_hung_up, guest.fileno())
            return serve_stream(source, sink, api_socket, timeout=10, hung_up=hung_up)

    def send(self, data: bytes) -> None:
        self.host.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        return read_response(self.rfile)

    def close(self) -> int:
        """Hang up; the number of requests the bridge answered before it saw the end."""
        self.rfile.close()
        self.host.close()
        try:
            return self.served.result(timeout=10)
        finally:
            self._pool.shutdown()


@pytest.fixture
def port(api_socket: str) -> Iterator[Port]:
    port = Port(api_socket)
    yield port
    port.close()


def read_response(rfile: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One response, framed the way a host client frames it: by its Content-Length."""
    status = int(rfile.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := rfile.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if status < 200:
        return status, headers, b""
    return status, headers, rfile.read(int(headers["content-length"]))


def request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: wire-mpc"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


GOOD = request("GET", "/status")


def assert_good(port: Port) -> None:
    status, _, body = port.response()
    assert (status, json.loads(body)["path"]) == (200, "/status")


# -- framing on one stream ----------------------------------------------------------------------


def test_get_then_post_on_the_same_stream(port: Port) -> None:
    port.send(request("GET", "/status?verbose=1", Connection="keep-alive", Authorization="x"))
    status, headers, body = port.response()
    seen = json.loads(body)
    assert (status, seen["method"], seen["path"]) == (200, "GET", "/status?verbose=1")
    assert seen["headers"]["connection"] == "close"  # replaced, not added next to keep-alive
    assert seen["headers"]["authorization"] == "x"
    assert headers["content-length"] == str(len(body))

    payload = json.dumps({"username": "alice", "password": "pw"}).encode()
    port.send(request("POST", "/login", payload, Content_Type="application/json"))
    status, _, body = port.response()
    seen = json.loads(body)
    assert (status, seen["method"], seen["body"]) == (201, "POST", payload.decode())
    assert port.close() == 2


def test_pipelined_requests_are_answered_in_order(port: Port) -> None:
    port.send(request("POST", "/a", b"first") + request("POST", "/b", b"second") + GOOD)
    assert json.loads(port.response()[2])["body"] == "first"
    assert json.loads(port.response()[2])["body"] == "second"
    assert_good(port)


def test_a_host_client_speaks_plain_http(port: Port) -> None:
    connection = http.client.HTTPConnection("wire-mpc", timeout=10)
    connection.sock = port.host  # what `curl --unix-socket` to QEMU's chardev socket does
    connection.request("POST", "/ceremonies", body=b'{"id": 1}', headers={"X-Wire-TOTP": "1"})
    response = connection.getresponse()
    seen = json.loads(response.read())
    assert (response.status, seen["body"]) == (201, '{"id": 1}')
    assert seen["headers"]["x-wire-totp"] == "1"


def test_expect_100_continue_is_answered_by_the_bridge(port: Port) -> None:
    head = request("POST", "/upload", Expect="100-continue", Content_Length="4")
    port.send(head)
    assert port.response()[0] == 100  # before the client sends its body
    port.send(b"data")
    status, _, body = port.response()
    seen = json.loads(body)
    assert (status, seen["body"], "expect" in seen["headers"]) == (201, "data", False)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"garbage\r\n\r\n", b"malformed request line"),
        (b"\x16\x03\x01\x02\x00 TLS hello\r\nmore: junk\r\n\r\n", b"malformed request line"),
        (b"GET /status HTTP/1.1\r\nno colon here\r\n\r\n", b"malformed header line (line 2)"),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", b"folded header line"),
        (request("POST", "/x", Content_Length="twelve"), b"invalid Content-Length"),
        (request("POST", "/x", Content_Length="-1"), b"invalid Content-Length"),
        (request("POST", "/x", Content_Length="1, 2"), b"invalid Content-Length"),
    ],
)
def test_bad_request_gets_400_and_the_next_request_works(
    port: Port, bad: bytes, reason: bytes
) -> None:
    port.send(bad + GOOD)
    status, headers, body = port.response()
    assert (status, headers["content-type"]) == (400, "text/plain; charset=utf-8")
    assert reason in body
    assert_good(port)


def test_chunked_request_is_refused_and_its_body_skipped(port: Port) -> None:
    chunked = request("POST", "/x", Transfer_Encoding="chunked")
    port.send(chunked + b"4\r\n\r\n\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n" + GOOD)
    status, _, body = port.response()
    assert status == 411
    assert b"Transfer-Encoding is not supported" in body
    assert_good(port)


def test_oversized_header_block_is_refused(port: Port) -> None:
    big = request("GET", "/x", X_Padding="p" * MAX_HEAD)
    port.send(big + GOOD)
    status, _, body = port.response()
    assert (status, body) == (400, f"request header block larger than {MAX_HEAD} bytes\n".encode())
    assert_good(port)


def test_oversized_line_without_end_is_refused(port: Port) -> None:
    port.send(b"G" * (3 * MAX_HEAD) + b"\r\n\r\n" + GOOD)
    assert port.response()[0] == 400
    assert_good(port)


def test_oversized_body_is_refused_and_skipped(port: Port) -> None:
    big = b"x" * (2 * 1024 * 1024)
    port.send(request("POST", "/x", big) + GOOD)
    status, _, body = port.response()
    assert (status, body) == (413, b"request body larger than 1048576 bytes\n")
    assert_good(port)


# -- the API's side -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/close-delimited", "/chunked"])
def test_response_without_length_is_given_one(port: Port, path: str) -> None:
    port.send(request("GET", path) + GOOD)
    status, headers, body = port.response()
    expected = b"no length, ends when the server closes" if path != "/chunked" else b"hello world"
    assert (status, body, headers["content-length"]) == (200, expected, str(len(expected)))
    assert "transfer-encoding" not in headers
    assert_good(port)  # nothing of the body was left on the stream


def test_missing_api_socket_gives_502(short_dir: Path) -> None:
    path = short_dir / "absent.sock"
    port = Port(str(path))
    port.send(GOOD + GOOD)
    for _ in range(2):
        status, _, body = port.response()
        assert (status, body) == (502, f"the API socket {path} does not exist\n".encode())
    assert port.close() == 2


def test_refusing_api_socket_gives_502(short_dir: Path) -> None:
    path = short_dir / "refusing.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))  # bound but not listening: connections are refused
        port = Port(str(path))
        port.send(GOOD)
        status, _, body = port.response()
        port.close()
    assert (status, body) == (502, f"the API socket {path} refused the connection\n".encode())


def test_answer_for_a_client_that_hung_up_is_dropped(api_socket: str) -> None:
    port = Port(api_socket)
    port.send(request("GET", "/slow"))
    # The bridge reads the request, then the client goes away before the API answers: the
    # answer must not wait on the port for the next client.
    assert port.close() == 0


# -- the pure core ------------------------------------------------------------------------------


def test_read_request_keeps_secrets_out_of_its_repr() -> None:
    raw = request("POST", "/login?x=1", b"password=hunter2", Authorization="Bearer tok")
    parsed = read_request(io.BytesIO(raw))
    assert isinstance(parsed, Request)
    assert (parsed.path, parsed.body) == ("/login", b"password=hunter2")
    assert "hunter2" not in repr(parsed)
    assert "tok" not in repr(parsed)
    forwarded = parsed.encode()
    assert forwarded.startswith(b"POST /login?x=1 HTTP/1.1\r\nHost: wire-mpc\r\n")
    assert forwarded.endswith(b"Content-Length: 16\r\nConnection: close\r\n\r\npassword=hunter2")


def test_read_request_at_end_of_stream() -> None:
    with pytest.raises(EOFError):
        read_request(io.BytesIO(b"\r\n"))
    with pytest.raises(EOFError):
        read_request(io.BytesIO(request("POST", "/x", b"body")[:-2]))
    assert read_request(io.BytesIO(b"GET / HTTP/2\r\n\r\n")) == BadRequest(
        400, "malformed request line (expected 'METHOD /path HTTP/1.1')"
    )


def test_complete_response_keeps_a_framed_response_verbatim() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert complete_response(raw, "GET") == (200, raw)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    assert complete_response(interim + raw, "POST") == (200, raw)
    no_content = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    assert complete_response(no_content, "DELETE") == (204, no_content)


# -- end to end: the CLI on a pseudo-terminal, gunicorn and Falcon behind it ------------------

FALCON_APP = """
import falcon

class Echo:
    def on_get(self, req, resp):
        resp.media = {"path": req.path, "query": req.query_string}

    def on_post(self, req, resp):
        resp.media = {"got": req.bounded_stream.read().decode()}

app = falcon.App()
app.add_route("/echo", Echo())
"""


@pytest.fixture
def gunicorn_socket(short_dir: Path) -> Iterator[str]:
    (short_dir / "tiny_api.py").write_text(FALCON_APP)
    path = str(short_dir / "gunicorn.sock")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"unix:{path}", "--workers", "1",
         "--chdir", str(short_dir), "tiny_api:app"],
        cwd=short_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_socket(path)
        yield path
    finally:
        server.terminate()
        server.wait(10)


def wait_for_socket(path: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                return
            except OSError:
                time.sleep(0.05)
    raise AssertionError(f"nothing listens on {path}")


def test_cli_bridges_a_serial_device_to_gunicorn(gunicorn_socket: str) -> None:
    host, device = os.openpty()
    tty.setraw(device)  # a byte stream like the virtio port: no echo, no line editing
    bridge = subprocess.Popen(
        [sys.executable, "-m", "api.serial_bridge", "--port", os.ttyname(device),
         "--socket", gunicorn_socket, "--timeout", "10"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with open(host, "r+b", buffering=0) as raw:
            rfile = io.BufferedReader(raw)
            secret = b'{"password": "hunter2"}'
            raw.write(request("POST", "/echo", secret, Authorization="Bearer s3cr3t-t0ken"))
            assert readable(host)
            status, headers, body = read_response(rfile)
            assert (status, json.loads(body)) == (200, {"got": secret.decode()})
            assert headers["connection"] == "close"
            raw.write(request("GET", "/echo?user=alice") + b"nonsense\r\n\r\n")
            assert read_response(rfile)[2] == b'{"path": "/echo", "query": "user=alice"}'
            assert read_response(rfile)[0] == 400
            raw.write(request("GET", "/echo"))  # its answer means the 400 has been logged
            assert read_response(rfile)[0] == 200
    finally:
        bridge.terminate()
        _, log = bridge.communicate(timeout=10)
        os.close(device)
    text = log.decode()
    assert "POST /echo -> 200 in" in text
    assert "GET /echo -> 200 in" in text  # the query is left out
    assert "refused request -> 400 (malformed request line" in text
    for secret_text in ("hunter2", "s3cr3t", "alice", "nonsense"):
        assert secret_text not in text


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 20)[0])


def test_loop_retries_quietly_until_the_port_appears(
    api_socket: str, short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wire-api.serial-bridge")
    link = short_dir / "wire.api"  # absent at first, as before the port's driver is loaded
    stop = threading.Event()
    loop = threading.Thread(target=run, args=(str(link), api_socket),
                            kwargs={"timeout": 10, "retry": 0.01, "stop": stop})  # fmt: skip
    loop.start()
    host, device = os.openpty()
    try:
        time.sleep(0.3)  # some 20 failed attempts
        tty.setraw(device)
        link.symlink_to(os.ttyname(device))
        with open(host, "r+b", buffering=0) as raw:
            raw.write(GOOD)
            assert readable(host)
            status, _, body = read_response(io.BufferedReader(raw))
            stop.set()
        # closing the pseudo-terminal's host end ends the loop's read
    finally:
        stop.set()
        loop.join(10)
        os.close(device)
    assert (status, json.loads(body)["path"]) == (200, "/status")
    assert not loop.is_alive()
    missing = [r for r in caplog.records if "No such file or directory" in r.getMessage()]
    assert len(missing) == 1  # once, not once per attempt
    assert any("usable again after" in r.getMessage() for r in caplog.records)


# -- a serial line (the node's UART, an operator's laptop at the other end) ----------------------


class NullModem:
    """Two pseudo-terminals joined like a null-modem cable: the node's end and the laptop's end
    are real terminal devices, opened by path and put in raw mode by the code under test. Bytes
    written while nobody has an end open wait in its input queue, as on a UART's line."""

    def __init__(self) -> None:
        self.node_master, node_slave = os.openpty()
        self.laptop_master, laptop_slave = os.openpty()
        for slave in (node_slave, laptop_slave):
            tty.setraw(slave)  # no echo back down the cable before the code opens its end
        self.node, self.laptop = os.ttyname(node_slave), os.ttyname(laptop_slave)
        self._held = (node_slave, laptop_slave)
        self._stop_read, self._stop_write = os.pipe()
        self._relay = threading.Thread(target=self._carry, daemon=True)
        self._relay.start()

    def _carry(self) -> None:
        ends = {self.node_master: self.laptop_master, self.laptop_master: self.node_master}
        while True:
            ready, _, _ = select.select([*ends, self._stop_read], [], [])
            if self._stop_read in ready:
                return
            for end in ready:
                os.write(ends[end], os.read(end, 65536))

    def write_from_laptop(self, data: bytes) -> None:
        """Bytes a client that then went away wrote onto the line."""
        with open(self.laptop, "wb", buffering=0) as line:
            line.write(data)

    def unplug(self) -> None:
        """The cable out: the node's end reads an error (the bridge's `serve_line` returns)."""
        os.write(self._stop_write, b"x")
        self._relay.join(5)
        for fd in (self.node_master, self.laptop_master, *self._held,
                   self._stop_read, self._stop_write):  # fmt: skip
            os.close(fd)


@pytest.fixture
def modem() -> Iterator[NullModem]:
    modem = NullModem()
    yield modem
    with contextlib.suppress(OSError):
        modem.unplug()


def bridge_line(modem: NullModem, api_socket: str) -> threading.Thread:
    """The node's bridge serving its end of the line, with a short idle bound."""
    fd = open_line(modem.node)

    def serve() -> None:
        try:
            serve_line(fd, api_socket, timeout=10, idle=0.3)
        except OSError:
            pass  # unplugged
        finally:
            os.close(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_an_operator_at_the_machine_reaches_gunicorn_over_a_serial_line(
    gunicorn_socket: str, modem: NullModem, tmp_path: Path
) -> None:
    bridge = bridge_line(modem, gunicorn_socket)
    secret = b'{"password": "hunter2"}'
    status, body = exchange(modem.laptop, "POST", "/echo", {"Authorization": "Bearer t"},
                            secret, timeout=10)  # fmt: skip
    assert (status, json.loads(body)) == (200, {"got": secret.decode()})
    client = Client(modem.laptop, tmp_path / "session.json", line=True)
    assert client.request("GET", "/echo?user=alice", timeout=10) == {
        "path": "/echo", "query": "user=alice"
    }  # fmt: skip
    modem.unplug()
    bridge.join(10)
    assert not bridge.is_alive()


def test_an_answer_left_on_the_line_does_not_reach_the_next_client(
    api_socket: str, modem: NullModem
) -> None:
    bridge_line(modem, api_socket)
    # A client asks for something slow and goes away: its answer comes after the next
    # client has plugged in and flushed the line, and reaches that client first.
    modem.write_from_laptop(request("GET", "/slow", **{"Wire-Exchange": "gone-away"}))
    time.sleep(0.1)
    status, body = exchange(modem.laptop, "GET", "/status", {}, None, timeout=10)
    assert (status, json.loads(body)["path"]) == (200, "/status")


def test_a_request_cut_off_half_way_is_dropped_and_the_next_one_answered(
    api_socket: str, modem: NullModem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wire-api.serial-bridge")
    bridge_line(modem, api_socket)
    modem.write_from_laptop(b"POST /withdrawals HTTP/1.1\r\nContent-Le")  # unplugged here
    time.sleep(0.6)  # longer than the bridge's idle bound
    status, body = exchange(modem.laptop, "GET", "/status", {}, None, timeout=10)
    assert (status, json.loads(body)["path"]) == (200, "/status")
    assert any("half-way; dropped" in r.getMessage() for r in caplog.records)


def test_a_malformed_exchange_tag_is_refused(port: Port) -> None:
    port.send(request("GET", "/status", **{"Wire-Exchange": "a b;c"}))
    status, _, body = port.response()
    assert status == 400
    assert b"Wire-Exchange" in body
    port.send(request("GET", "/status", **{"Wire-Exchange": "tag-1"}))
    status, headers, _ = port.response()
    assert (status, headers["wire-exchange"]) == (200, "tag-1")


def test_only_a_serial_line_other_than_the_console_is_served() -> None:
    assert line_device("ttyS1", "tty0 ttyS0") == "/dev/ttyS1"
    assert line_device("/dev/ttyUSB0\n", "ttyS0") == "/dev/ttyUSB0"
    assert line_device("ttyACM2", "") == "/dev/ttyACM2"
    with pytest.raises(ValueError, match="ttyS0 is the kernel's console"):
        line_device("ttyS0", "tty0 ttyS0")
    for name in ("sda", "/dev/../etc/passwd", "ttyS", "pts/3", "/tmp/ttyS1"):
        with pytest.raises(ValueError, match="expected a UART"):
            line_device(name, "ttyS0")


def test_the_bridge_names_a_bad_line_and_stops(tmp_path: Path) -> None:
    named = tmp_path / "wire.api-line"
    named.write_text("vda\n")
    done = subprocess.run(
        [sys.executable, "-m", "api.serial_bridge", "--line-from", str(named)],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "serial line 'vda': expected a UART" in done.stderr


def test_a_client_refuses_what_is_not_a_serial_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a serial line"):
        exchange("/dev/null", "GET", "/v1/health", {}, None, timeout=1)
    client = Client("/dev/null", tmp_path / "session.json", line=True)
    with pytest.raises(Failure, match="cannot reach the API at /dev/null"):
        client.request("GET", "/v1/health", timeout=1)
