"""Starts the regtest node as a subprocess for tests (RegtestProcess) and talks JSON-RPC to it,
raising bitcoind's error code and message as RpcCallError."""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import selectors
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from embit.transaction import Transaction

from tests.regtest.blocks import assemble_block, block_subsidy, build_coinbase
from tests.regtest.encoding import ParsedBlock, to_parsed

__all__ = ["RegtestProcess", "RpcCallError", "block_on"]

REPOSITORY = Path(__file__).resolve().parents[2]


class RpcCallError(Exception):
    """An error reply from the node, with bitcoind's code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"RPC error {code}: {message}")
        self.code = code
        self.message = message


class RegtestProcess:
    """One node process on `datadir`; amounts come back as Decimal (bitcoind's JSON, read
    exactly).

        with RegtestProcess(tmp_path) as node:
            node.call("generatetoaddress", 101, node.call("getnewaddress"))
    """

    def __init__(
        self,
        datadir: Path,
        *,
        rpc_port: int = 0,
        zmq_port: int = 0,
        extra_args: list[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.datadir = Path(datadir)
        self.rpc_user = "regtest"
        self.rpc_password = secrets.token_hex(16)
        self.rpc_url = ""
        self.zmq_endpoint = ""
        self.cookie_path = self.datadir / "regtest" / ".cookie"
        self._rpc_port = rpc_port
        self._zmq_port = zmq_port
        self._extra_args = list(extra_args or [])
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: http.client.HTTPConnection | None = None
        self._connection_lock = threading.Lock()
        self._ids = 0

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the node is already running")
        self.datadir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "tests.regtest",
            "--datadir",
            str(self.datadir),
            "--rpcport",
            str(self._rpc_port),
            "--zmqport",
            str(self._zmq_port),
            "--rpcuser",
            self.rpc_user,
            "--rpcpassword",
            self.rpc_password,
            *self._extra_args,
        ]
        environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
        stderr = (self.datadir / "stderr.log").open("ab")
        try:
            self._process = subprocess.Popen(
                command,
                cwd=REPOSITORY,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        finally:
            stderr.close()
        ready = self._read_ready_line()
        self.rpc_url = ready["rpc"]
        self.zmq_endpoint = ready["zmq"]
        self.cookie_path = Path(ready["cookie"])
        # Nothing more is expected on stdout, but a full pipe must never block the node.
        threading.Thread(target=self._drain_stdout, daemon=True).start()

    def _read_ready_line(self) -> dict[str, Any]:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        deadline = time.monotonic() + self._start_timeout
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in buffered:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._kill()
                    raise TimeoutError(f"node not ready within {self._start_timeout} s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    code = process.wait()
                    log = (self.datadir / "stderr.log").read_text(errors="replace")[-4000:]
                    self._process = None
                    raise RuntimeError(f"node exited with {code} before it was ready:\n{log}")
                buffered += chunk
        line = buffered.split(b"\n", 1)[0]
        ready: dict[str, Any] = json.loads(line)
        return ready

    def _drain_stdout(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        try:
            while process.stdout.read(4096):
                pass
        except (OSError, ValueError):
            pass

    def stop(self, timeout: float = 20.0) -> int:
        """Stops the node with SIGTERM (killing it after `timeout`); returns its exit code."""
        process = self._process
        if process is None:
            return 0
        self._close_connection()
        process.terminate()
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            code = -9
        self._process = None
        return code

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> RegtestProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- JSON-RPC ---------------------------------------------------------------------

    @property
    def authorization(self) -> str:
        token = f"{self.rpc_user}:{self.rpc_password}".encode()
        return "Basic " + base64.b64encode(token).decode()

    def _close_connection(self) -> None:
        with self._connection_lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def post(
        self, body: bytes, *, authorization: str | None = None, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        """Sends raw bytes to the RPC port (a fresh connection); returns status and body."""
        parts = urlsplit(self.rpc_url)
        connection = http.client.HTTPConnection(parts.netloc, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if authorization is None:
                authorization = self.authorization
            if authorization:
                headers["Authorization"] = authorization
            connection.request("POST", "/", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def call(self, method: str, *params: Any, timeout: float = 120.0) -> Any:
        """Calls one method on a kept-alive connection; raises RpcCallError on an error
        reply."""
        with self._connection_lock:
            self._ids += 1
            request = {"jsonrpc": "1.0", "id": self._ids, "method": method, "params": list(params)}
            body = json.dumps(request, default=_json_default).encode()
            headers = {"Content-Type": "application/json", "Authorization": self.authorization}
            for attempt in (1, 2):
                if self._connection is None:
                    parts = urlsplit(self.rpc_url)
                    self._connection = http.client.HTTPConnection(parts.netloc, timeout=timeout)
                try:
                    self._connection.request("POST", "/", body=body, headers=headers)
                    response = self._connection.getresponse()
                    payload = response.read()
                    break
                except (http.client.HTTPException, ConnectionError):
                    # A kept-alive connection the server closed: one fresh try.
                    self._connection.close()
                    self._connection = None
                    if attempt == 2:
                        raise
        if response.status == 401:
            raise RpcCallError(401, "unauthorized")
        reply = json.loads(payload, parse_float=Decimal)
        if reply.get("error") is not None:
            raise RpcCallError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # json has no Decimal: its exact digits, as a float cannot carry them, go as a string
        # bitcoind accepts for amounts.
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__}")


def block_on(
    node: RegtestProcess,
    parent_hash: str,
    payout: bytes,
    *,
    extra_sats: int = 0,
    txs: list[Transaction] | None = None,
) -> ParsedBlock:
    """A block on `parent_hash` built with the node's own block helpers (not submitted)."""
    parent = node.call("getblockheader", parent_hash)
    height = parent["height"] + 1
    others = [to_parsed(tx) for tx in txs or []]
    coinbase = build_coinbase(height, payout, block_subsidy(height) + extra_sats, others)
    when = max(parent["time"] + 1, parent["mediantime"] + 1, int(time.time()))
    return assemble_block(bytes.fromhex(parent_hash)[::-1], when, [coinbase, *others])
