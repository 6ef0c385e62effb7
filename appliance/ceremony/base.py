"""What every ceremony shares: its inbox, its transcript, failure with named culprits, and
the node services it runs on.

A ceremony is a networked state machine over rounds. Each round has a deadline; a round's
messages are the signed envelopes that arrived for it, each recorded in the node's
transcript as received. A ceremony ends `completed` or `failed`; a failure lists the peers
that were missing and those proven faulty (with the evidence kept in the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from appliance.config import NodeConfig
from appliance.frost import ED25519_SHA512, SECP256K1_TR, Ciphersuite, KeyShare, PublicKeyPackage
from appliance.mesh.envelope import Envelope
from appliance.store import Store
from hsm.keystore import Keystore
from hsm.vault import ShareVault

__all__ = [
    "BRIDGE_KEYS",
    "ENVELOPE_OVERHEAD",
    "HEX_ITEM",
    "KIB",
    "Arrival",
    "Blame",
    "Ceremony",
    "CeremonyFailed",
    "Inbox",
    "MalformedPayload",
    "NodeServices",
    "canonical",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

BRIDGE_KEYS: dict[str, Ciphersuite] = {"attestation": ED25519_SHA512, "custody": SECP256K1_TR}
"""The node's two threshold keys, created together by one DKG."""

# What round payloads are made of, for the size each round takes (`round_limit`).
KIB = 1024
HEX_ITEM = 80
"""One point, scalar or digest (at most 33 bytes) as hex in a JSON list or object, with
its quotes, separator and key: at most 80 bytes."""
ENVELOPE_OVERHEAD = 512
"""An envelope's bytes around its payload: ids and round (at most 205), sender, sequence
and length (14), signature (64)."""


def canonical(document: Any) -> bytes:
    """The one payload encoding: JSON with sorted keys and no spaces."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class MalformedPayload(ValueError):
    """A signed payload does not follow its round's schema."""


@dataclass(frozen=True)
class Blame:
    participant: int
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


class CeremonyFailed(Exception):
    def __init__(
        self, reason: str, missing: Iterable[int] = (), blamed: Iterable[Blame] = ()
    ) -> None:
        self.reason = reason
        self.missing = sorted(set(missing))
        self.blamed = list(blamed)
        parts = [reason]
        if self.missing:
            parts.append(f"missing: {', '.join(map(str, self.missing))}")
        if self.blamed:
            parts.append(
                "blamed: " + ", ".join(f"{b.participant} ({b.reason})" for b in self.blamed)
            )
        super().__init__("; ".join(parts))


class NodeServices(Protocol):
    """The node as ceremonies see it."""

    config: NodeConfig
    store: Store
    keystore: Keystore
    vault: ShareVault

    def envelope(self, ceremony_id: str, round_name: str, payload: bytes) -> bytes: ...

    def send(self, identifier: int, data: bytes) -> None: ...

    def audit(self, event: str, outcome: str, message: str, **fields: Any) -> None: ...

    def open_share(self, key_name: str) -> KeyShare:
        """This node's share of an active key, unsealed by the HSM (wipe it after use)."""
        ...

    def group_key(self, key_name: str) -> bytes: ...

    def public_package(self, key_name: str) -> PublicKeyPackage: ...

    def approved(self, kind: str, content_hash: bytes, now: float) -> bool: ...

    def signing_blocked(self) -> str | None: ...


class Arrival(enum.Enum):
    """What became of an envelope offered to a ceremony's inbox."""

    STORED = "stored"  # the sender's first envelope of the round: the one that counts
    REPEATED = "repeated"  # the same bytes again: nothing kept
    CONFLICT = "conflict"  # different from the first: kept as evidence of equivocation
    DROPPED = "dropped"  # a further conflict: one is evidence enough, nothing kept

    @property
    def kept(self) -> bool:
        return self in (Arrival.STORED, Arrival.CONFLICT)


class Inbox:
    """The envelopes received for one ceremony, by round and sender.

    A sender's first envelope for a round is the one that counts; the first different one
    after it is kept as evidence of equivocation, and nothing more of that round and
    sender. Which rounds and senders get here at all is the ceremony's `round_limit`.
    """

    def __init__(self) -> None:
        self._rounds: dict[str, dict[int, Envelope]] = {}
        self.conflicts: dict[tuple[str, int], tuple[Envelope, Envelope]] = {}
        self._arrived = asyncio.Event()

    def put(self, envelope: Envelope) -> Arrival:
        by_sender = self._rounds.setdefault(envelope.round, {})
        earlier = by_sender.get(envelope.sender)
        if earlier is not None:
            if earlier.raw == envelope.raw:
                return Arrival.REPEATED
            if (envelope.round, envelope.sender) in self.conflicts:
                return Arrival.DROPPED
            self.conflicts[envelope.round, envelope.sender] = (earlier, envelope)
            return Arrival.CONFLICT
        by_sender[envelope.sender] = envelope
        self._arrived.set()
        return Arrival.STORED

    def get(self, round_name: str) -> dict[int, Envelope]:
        return dict(self._rounds.get(round_name, {}))

    async def wait(self, deadline: float) -> None:
        """Return when the next envelope arrives, or at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), remaining)

    async def collect(
        self, round_name: str, senders: Iterable[int], deadline: float
    ) -> dict[int, Envelope]:
        """Wait until every sender's envelope for the round is here, or the deadline."""
        wanted = set(senders)
        while True:
            got = self._rounds.get(round_name, {})
            if wanted <= got.keys():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return {s: e for s, e in self._rounds.get(round_name, {}).items() if s in wanted}


class Ceremony:
    """A ceremony run by one node. Subclasses implement `execute`."""

    kind = "ceremony"

    def __init__(
        self, node: NodeServices, ceremony_id: str, role: str, request_id: str | None = None
    ) -> None:
        self.node = node
        self.id = ceremony_id
        self.role = role
        self.request_id = request_id
        self.inbox = Inbox()
        self.config = node.config
        self.me = node.config.me.identifier
        self.parties = [p.identifier for p in node.config.parties]
        self.started = time.monotonic()
        self._named: set[tuple[int, str]] = set()

    # -- messages --------------------------------------------------------------------
    def deadline(self, rounds: float = 1.0) -> float:
        return time.monotonic() + rounds * self.config.round_timeout

    def _envelope(self, round_name: str, payload: dict[str, Any], durable: bool) -> bytes:
        """Sign a new envelope and, unless told otherwise, make it durable in the transcript
        before it leaves (with everything recorded since the last write)."""
        data = self.node.envelope(self.id, round_name, canonical(payload))
        self.node.store.record_envelope(self.id, "out", self.me, round_name, data)
        if durable:
            self.node.store.flush()
        return data

    def send(self, identifier: int, round_name: str, payload: dict[str, Any]) -> bytes:
        data = self._envelope(round_name, payload, durable=True)
        self.node.send(identifier, data)
        return data

    def broadcast(
        self,
        identifiers: Iterable[int],
        round_name: str,
        payload: dict[str, Any],
        durable: bool = True,
    ) -> bytes:
        """One signed envelope, sent to every named peer (never to ourselves)."""
        data = self._envelope(round_name, payload, durable)
        for identifier in identifiers:
            if identifier != self.me:
                self.node.send(identifier, data)
        return data

    def round_limit(self, round_name: str, sender: int) -> int | None:
        """The largest payload (bytes) this ceremony takes in `round_name` from `sender`, or
        None if it runs no such round with that sender. Subclasses list their rounds."""
        return None

    def refusal(self, envelope: Envelope) -> tuple[str, str] | None:
        """(reason, detail) if this ceremony does not take `envelope`; None if it does."""
        limit = self.round_limit(envelope.round, envelope.sender)
        if limit is None:
            return "unexpected-round", (
                f"{self.kind} ceremony {self.id} takes no {envelope.round} "
                f"from participant {envelope.sender}"
            )
        if len(envelope.payload) > limit:
            return "oversized", (
                f"{envelope.round} of {len(envelope.payload)} bytes, at most {limit} taken"
            )
        return None

    def receive(self, envelope: Envelope) -> Arrival:
        """Called by the engine for every envelope of this ceremony that passed the mesh
        and `refusal`; the first of each round and sender goes to the transcript."""
        arrival = self.inbox.put(envelope)
        if arrival is Arrival.STORED:
            self.node.store.record_envelope(
                self.id, "in", envelope.sender, envelope.round, envelope.raw
            )
        return arrival

    async def gather(
        self,
        round_name: str,
        senders: Iterable[int],
        decode: Callable[[Any, Envelope], T],
        deadline: float | None = None,
    ) -> tuple[dict[int, T], list[Blame]]:
        """The decoded messages of a round; senders whose payload is malformed are blamed."""
        wanted = [s for s in senders if s != self.me]
        envelopes = await self.inbox.collect(
            round_name, wanted, deadline if deadline is not None else self.deadline()
        )
        decoded: dict[int, T] = {}
        blamed: list[Blame] = []
        for sender, envelope in envelopes.items():
            try:
                decoded[sender] = decode(json.loads(envelope.payload), envelope)
            except (MalformedPayload, ValueError, KeyError, TypeError) as exc:
                blamed.append(
                    Blame(sender, f"malformed {round_name}: {exc}", {"round": round_name})
                )
        return decoded, blamed

    @staticmethod
    def missing(wanted: Sequence[int], got: Iterable[int]) -> list[int]:
        have = set(got)
        return [w for w in wanted if w not in have]

    # -- outcome ---------------------------------------------------------------------------
    def name_culprit(self, blame: Blame) -> None:
        """Record and audit a participant proven faulty (once per ceremony and reason)."""
        if (blame.participant, blame.reason) in self._named:
            return
        self._named.add((blame.participant, blame.reason))
        self.node.store.record_blame(self.id, blame.participant, blame.reason, blame.evidence)
        self.node.audit(
            "ceremony.blame", "failure",
            f"participant {blame.participant} is faulty: {blame.reason}",
            ceremony=self.id, participant=blame.participant, reason=blame.reason,
        )  # fmt: skip

    async def execute(self) -> dict[str, Any]:
        raise NotImplementedError

    async def run(self) -> dict[str, Any]:
        """Run the ceremony, record its outcome and blame, and return a summary."""
        store = self.node.store
        store.open_ceremony(self.id, self.kind, self.role, self.request_id)
        self.node.audit(
            "ceremony.started", "success", f"{self.kind} ceremony {self.id} started",
            ceremony=self.id, kind=self.kind, role=self.role,
        )  # fmt: skip
        try:
            detail = await self.execute()
        except CeremonyFailed as failure:
            for blame in failure.blamed:
                self.name_culprit(blame)
            detail = {
                "reason": failure.reason,
                "missing": failure.missing,
                "blamed": [
                    {"participant": b.participant, "reason": b.reason} for b in failure.blamed
                ],
            }
            store.finish_ceremony(self.id, "failed", detail)
            self.node.audit(
                "ceremony.failed", "failure", f"{self.kind} ceremony {self.id} failed: {failure}",
                ceremony=self.id, kind=self.kind,
            )  # fmt: skip
            return {"ceremony": self.id, "state": "failed", **detail}
        detail["seconds"] = round(time.monotonic() - self.started, 4)
        store.finish_ceremony(self.id, "completed", detail)
        self.node.audit(
            "ceremony.completed", "success", f"{self.kind} ceremony {self.id} completed",
            ceremony=self.id, kind=self.kind,
        )  # fmt: skip
        return {"ceremony": self.id, "state": "completed", **detail}
