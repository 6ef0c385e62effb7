"""Runs the regtest node in the foreground: prints one JSON line (RPC URL, ZMQ endpoint,
cookie path) once it serves, and stops cleanly on SIGTERM, SIGINT or the `stop` RPC."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from .jsonrpc import RpcServer
from .node import RegtestNode
from .rpc_methods import RpcMethods

COOKIE_USER = "__cookie__"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.regtest",
        description="A bitcoind -regtest look-alike judged by libbitcoinkernel.",
    )
    parser.add_argument("--datadir", type=Path, required=True)
    parser.add_argument("--rpcport", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--zmqport", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rpcuser", required=True)
    parser.add_argument("--rpcpassword", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--zmqhwm", type=int, default=1000, help="ZMQ send high water mark")
    parser.add_argument(
        "--mempoolfullrbf",
        action="store_true",
        help="replace conflicts that do not signal BIP125 (bitcoind 28's default)",
    )
    return parser.parse_args(argv)


def _write_cookie(path: Path) -> str:
    secret = secrets.token_hex(32)
    temporary = path.with_name(".cookie.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"{COOKIE_USER}:{secret}")
    os.replace(temporary, path)
    return secret


def main(argv: list[str] | None = None) -> int:
    options = _arguments(argv)
    datadir: Path = options.datadir.resolve()
    (datadir / "regtest").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=datadir / "regtest" / "debug.log",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())

    node = RegtestNode(
        datadir,
        zmq_host=options.bind,
        zmq_port=options.zmqport,
        zmq_high_water_mark=options.zmqhwm,
        full_rbf=options.mempoolfullrbf,
    )
    cookie_path = datadir / "regtest" / ".cookie"
    cookie = _write_cookie(cookie_path)
    credentials = [(options.rpcuser, options.rpcpassword), (COOKIE_USER, cookie)]
    server = RpcServer((options.bind, options.rpcport), RpcMethods(node, stopping.set), credentials)
    serving = threading.Thread(target=server.serve_forever, name="rpc", daemon=True)
    serving.start()
    host, port = str(server.server_address[0]), int(server.server_address[1])
    ready = {
        "rpc": f"http://{host}:{port}",
        "zmq": node.publisher.endpoint,
        "cookie": str(cookie_path),
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    try:
        stopping.wait()
    finally:
        server.wait_idle(timeout=10)
        server.shutdown()
        server.server_close()
        with node.lock:
            node.close()
        cookie_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
