"""ZeroMQ CURVE transport between the cluster's nodes.

Each node binds one ROUTER (CURVE server) for everything it receives and connects one
DEALER (CURVE client) to every peer. A ZAP handler admits only the CURVE public keys of the
configured parties and tags each connection with the party's node id, so an envelope is
accepted only if its claimed sender is the peer whose key carried it. Then the envelope's
cluster, signature, sequence and size are checked; whatever fails is dropped and reported
through `refuse`, and nothing a peer sends can stop the receive loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
import zmq.utils.z85
from zmq.utils.monitor import parse_monitor_message

from ..config import NodeConfig, PartyConfig
from .envelope import Envelope, EnvelopeError, open_envelope, seal_envelope

__all__ = ["Mesh", "PeerState"]

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
PING, PONG = "mesh.ping", "mesh.pong"
PING_NONCE = 16  # a ping's payload, echoed by its pong: nothing else is echoed
RECEIVE_QUEUE = 16
"""Messages libzmq reads ahead per connection before the engine takes them: past it the
peer's TCP stream waits (nothing is dropped), so a fast sender queues at most this many
messages of at most twice the limit here."""

Refuse = Callable[[str, str, dict[str, str]], None]
"""refuse(audit event, reason, fields): report a refused connection or message."""


@dataclass
class PeerState:
    """What the transport knows of one peer, for test-communication and status."""

    party: PartyConfig
    connected: bool = False
    authenticated: bool = False
    handshake_failures: int = 0
    last_seen: float | None = None
    pings: dict[bytes, asyncio.Future[float]] = field(default_factory=dict)


class Mesh:
    def __init__(
        self,
        config: NodeConfig,
        curve_secret: bytes,
        sign: Callable[[bytes], bytes],
        deliver: Callable[[Envelope], None],
        refuse: Refuse,
        last_sequences: dict[int, int] | None = None,
        remember: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self._curve_secret = curve_secret
        self._sign = sign
        self._deliver = deliver
        self._refuse = refuse
        self.me = config.me
        self.peers = {p.identifier: PeerState(p) for p in config.peers}
        self._by_node_id = {p.node_id: p for p in config.peers}
        self._curve_keys = {zmq.utils.z85.decode(p.curve_public_key): p for p in config.peers}
        # Strictly increasing across restarts without storing it: microseconds since 1970.
        self._sequence = time.time_ns() // 1000
        # Replays are refused across our own restarts too: the last sequence per peer is
        # persisted by `remember` and handed back at start.
        self._last_sequence: dict[int, int] = dict(last_sequences or {})
        self._remember = remember
        self._context = zmq.asyncio.Context()
        self._dealers: dict[int, zmq.asyncio.Socket] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        context = self._context
        # The ZAP handler must exist before the server socket accepts anything.
        self._zap = context.socket(zmq.REP)
        self._zap.bind(ZAP_ENDPOINT)
        self._tasks.append(asyncio.create_task(self._serve_zap(), name="mesh-zap"))

        router = context.socket(zmq.ROUTER)
        router.curve_server = True
        router.curve_secretkey = self._curve_secret
        router.curve_publickey = self.me.curve_public_key.encode()
        router.zap_domain = self.config.cluster_id.encode()
        router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        # Hard transport cap; the configured limit is checked (and audited) below it.
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.config.max_message_bytes)
        router.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(f"tcp://{self.config.mesh_listen}")
        self._router = router
        self._tasks.append(asyncio.create_task(self._receive(), name="mesh-receive"))

        for identifier, state in self.peers.items():
            dealer = context.socket(zmq.DEALER)
            dealer.curve_serverkey = state.party.curve_public_key.encode()
            dealer.curve_publickey = self.me.curve_public_key.encode()
            dealer.curve_secretkey = self._curve_secret
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDHWM, 10_000)
            dealer.setsockopt(zmq.RECONNECT_IVL, 100)
            dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            dealer.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            monitor = dealer.get_monitor_socket()
            dealer.connect(state.party.endpoint)
            self._dealers[identifier] = dealer
            self._tasks.append(
                asyncio.create_task(self._watch(state, monitor), name=f"mesh-watch-{identifier}")
            )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for dealer in self._dealers.values():
            dealer.disable_monitor()
        # destroy() closes every socket of the context, monitors included, then terms it.
        self._context.destroy(linger=0)

    # -- sending ---------------------------------------------------------------------------
    def envelope(self, ceremony_id: str, round_name: str, payload: bytes) -> bytes:
        """A new envelope from this node, signed by its HSM identity key."""
        self._sequence += 1
        return seal_envelope(
            self.config.cluster_id,
            ceremony_id,
            round_name,
            self.me.identifier,
            self._sequence,
            payload,
            self._sign,
        )

    def send(self, identifier: int, data: bytes) -> bool:
        """Queue `data` for a peer; False if its queue is full (the peer is gone too long)."""
        try:
            self._dealers[identifier].send(data, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("send queue to node %s is full; message dropped", identifier)
            return False
        return True

    async def ping(self, identifier: int, timeout: float) -> float | None:
        """Round-trip time to a peer through signed envelopes, or None on timeout."""
        state = self.peers[identifier]
        nonce = secrets.token_bytes(PING_NONCE)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        state.pings[nonce] = future
        start = time.perf_counter()
        self.send(identifier, self.envelope("", PING, nonce))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            state.pings.pop(nonce, None)
        return time.perf_counter() - start

    # -- receiving -------------------------------------------------------------------------
    async def _receive(self) -> None:
        while True:
            try:
                frames = await self._router.recv_multipart(copy=False)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:  # pragma: no cover - libzmq-level trouble
                log.error("mesh receive failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                self._accept(frames)
            except Exception:  # a bug must not stop the node from hearing its peers
                log.exception("mesh message handling failed")

    def _accept(self, frames: list[Any]) -> None:
        node_id = frames[0].get("User-Id") if frames else ""
        party = self._by_node_id.get(node_id)
        peer = party.node_id if party else f"unknown({node_id})"
        if party is None or len(frames) != 2:
            self._reject(peer, "malformed", "unexpected framing")
            return
        data = frames[1].bytes
        if len(data) > self.config.max_message_bytes:
            self._reject(peer, "oversized", f"{len(data)} bytes")
            return
        try:
            envelope = open_envelope(data)
        except EnvelopeError as exc:
            self._reject(peer, exc.reason, str(exc))
            return
        if envelope.cluster_id != self.config.cluster_id:
            self._reject(peer, "foreign-cluster", f"cluster {envelope.cluster_id!r}")
            return
        if envelope.sender != party.identifier:
            self._reject(
                peer, "impersonation", f"claims sender {envelope.sender} on {party.node_id}'s key"
            )
            return
        if not envelope.signed_by(party.identity_public_key):
            self._reject(peer, "bad-signature", f"round {envelope.round}")
            return
        if envelope.sequence <= self._last_sequence.get(party.identifier, 0):
            self._reject(peer, "replayed", f"sequence {envelope.sequence}")
            return
        self._last_sequence[party.identifier] = envelope.sequence
        if self._remember is not None:
            self._remember(party.identifier, envelope.sequence)
        state = self.peers[party.identifier]
        state.last_seen = time.time()
        if envelope.round in (PING, PONG) and len(envelope.payload) != PING_NONCE:
            self._reject(peer, "malformed", f"{envelope.round} of {len(envelope.payload)} bytes")
        elif envelope.round == PING:
            self.send(party.identifier, self.envelope("", PONG, envelope.payload))
        elif envelope.round == PONG:
            future = state.pings.get(envelope.payload)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())
        else:
            self._deliver(envelope)

    def _reject(self, peer: str, reason: str, detail: str) -> None:
        self._refuse("mesh.message-rejected", reason, {"peer": peer, "detail": detail})

    async def _serve_zap(self) -> None:
        """ZAP (RFC 27): admit the configured parties' CURVE keys and nothing else."""
        while True:
            frames = await self._zap.recv_multipart()
            version, request_id, _domain, address = frames[0], frames[1], frames[2], frames[3]
            mechanism, credentials = frames[5], frames[6:]
            party = self._curve_keys.get(credentials[0]) if credentials else None
            if mechanism == b"CURVE" and party is not None:
                reply = [version, request_id, b"200", b"OK", party.node_id.encode(), b""]
            else:
                key = zmq.utils.z85.encode(credentials[0]).decode() if credentials else "none"
                self._refuse(
                    "mesh.connection-refused",
                    "unknown-curve-key",
                    {"address": address.decode(errors="replace"), "curve_key": key},
                )
                reply = [version, request_id, b"400", b"not a member", b"", b""]
            await self._zap.send_multipart(reply)

    async def _watch(self, state: PeerState, monitor: zmq.asyncio.Socket) -> None:
        """Follow the connection to a peer: TCP up, CURVE handshake done or refused."""
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_CONNECTED:
                state.connected = True
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                state.authenticated = True
            elif kind in (
                zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            ):
                state.authenticated = False
                state.handshake_failures += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                state.connected = False
                state.authenticated = False
