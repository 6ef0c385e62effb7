"""A simulated Wire system for the tests and the demo.

It holds a burn authority (a fresh Ed25519 key), a log of burn entries, and serves over
HTTP on 127.0.0.1 what the appliance talks to: the burn feed (`GET /burns`, the cursor being
the index of the next entry as a string), and the endpoints nodes report to
(`POST /attestations`, `POST /paid`), whose bodies are kept for the test to inspect.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.wire.burns import BurnRecord

__all__ = ["WireSimulator"]

MAX_BODY = 1 << 20


class WireSimulator:
    def __init__(self) -> None:
        self.authority = Ed25519PrivateKey.generate()
        self.entries: list[Any] = []
        self.received_attestations: list[Any] = []
        self.paid_reports: list[Any] = []
        self.feed_requests: list[str] = []
        # Test-only switch: when set, GET /burns answers this (status, body) instead of a page.
        self.feed_override: tuple[int, bytes] | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def authority_key(self) -> bytes:
        """The burn authority's raw 32-byte public key, as `BurnPolicy` takes it."""
        return self.authority.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, record: dict[str, Any], key: Ed25519PrivateKey | None = None) -> str:
        """The hex signature of a record's canonical bytes, by the authority or by `key`."""
        canonical = BurnRecord.from_json(record).canonical()
        return (key or self.authority).sign(canonical).hex()

    def burn(
        self,
        destination: str,
        amount_sats: int,
        network: str = "regtest",
        burn_id: str | None = None,
    ) -> dict[str, Any]:
        """Burn on the simulated Wire system: append a signed entry to the feed and return it."""
        with self._lock:
            height = len(self.entries)
            record = BurnRecord(
                burn_id=burn_id or f"burn-{height}",
                network=network,
                destination=destination,
                amount_sats=amount_sats,
                wire_height=height,
                burned_at=int(time.time()),
            ).to_json()
            entry = {"record": record, "signature": self.sign(record)}
            self.entries.append(entry)
        return entry

    def add_raw(self, item: Any) -> None:
        """Append any entry at all, for the tests of what nodes refuse."""
        with self._lock:
            self.entries.append(item)

    def page(self, after: int, limit: int) -> dict[str, Any]:
        with self._lock:
            burns = self.entries[after : after + limit]
        return {"burns": burns, "cursor": str(after + len(burns))}

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Wire simulator is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> WireSimulator:
        if self._server is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
            self._server.daemon_threads = True
            # A short poll interval: stop() waits for it, and tests start many simulators.
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="wire-simulator",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> WireSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(wire: WireSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def answer_json(self, status: int, value: Any) -> None:
            self.answer(status, json.dumps(value).encode())

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/burns":
                self.answer_json(404, {"error": "not found"})
                return
            wire.feed_requests.append(self.path)
            if wire.feed_override is not None:
                self.answer(*wire.feed_override)
                return
            query = parse_qs(parts.query)
            try:
                after = int(query.get("after", ["0"])[0])
                limit = int(query.get("limit", ["100"])[0])
            except ValueError:
                self.answer_json(400, {"error": "after and limit are integers"})
                return
            self.answer_json(200, wire.page(max(after, 0), max(limit, 0)))

        def do_POST(self) -> None:
            store = {"/attestations": wire.received_attestations, "/paid": wire.paid_reports}
            target = store.get(urlsplit(self.path).path)
            if target is None:
                self.answer_json(404, {"error": "not found"})
                return
            length_header = self.headers.get("Content-Length", "")
            length = int(length_header) if length_header.isdigit() else 0
            if not 0 < length <= MAX_BODY:
                self.close_connection = True  # the unread body would be taken for a request
                self.answer_json(400, {"error": f"a JSON body of at most {MAX_BODY} bytes"})
                return
            try:
                value = json.loads(self.rfile.read(length))
            except ValueError:
                self.answer_json(400, {"error": "the body is not JSON"})
                return
            target.append(value)
            self.answer_json(200, {"ack": True})

    return Handler
