"""The engine of one node: it owns the HSM session, the vault, the store and the mesh, routes
every accepted envelope to its ceremony, and carries out the commands of its control socket.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.audit import JOURNAL_SOCKET, AuditUnavailableError, audit
from appliance.ceremony.base import BRIDGE_KEYS, Arrival, Ceremony, MalformedPayload
from appliance.ceremony.budget import PeerBudget, held_size
from appliance.ceremony.dkg import DkgCeremony
from appliance.ceremony.keygen import key_round_limits
from appliance.ceremony.refresh import RefreshCeremony
from appliance.ceremony.requests import (
    POLICIES,
    TEST_SIGNING,
    SigningRefused,
    SigningRequest,
    message_digest,
    test_signing_request,
)
from appliance.ceremony.signing import (
    SigningCoordinator,
    SigningParticipant,
    check_policy,
    judge_share_blame,
)
from appliance.chain.service import ChainService
from appliance.config import NodeConfig
from appliance.crashpoint import crash_point
from appliance.errors import CommandError
from appliance.frost import CIPHERSUITES, KeyShare, PublicKeyPackage
from appliance.mesh.envelope import Envelope
from appliance.mesh.transport import Mesh
from appliance.metrics import CEREMONY_KINDS, EngineMetrics, Snapshot
from appliance.sealing import VERIFICATION_KEY
from appliance.store import AttestationRecords, Store
from appliance.store.chain import DepositRow
from appliance.store.database import KeyRow
from appliance.wire.attestation import MintAttestation
from appliance.wire.push import post_json
from appliance.workflows.mint import (
    MAX_BATCH,
    MINT_ATTESTATION,
    attestation_request,
    check_mint_attestation,
)
from appliance.workflows.payouts import (
    APPROVAL_ROUND,
    RECORD_ROUND,
    RECORDS_WANTED_ROUND,
    Payouts,
)
from appliance.workflows.withdrawal import CONSOLIDATION, WITHDRAWAL, check_payout
from hsm.backup import (
    Passphrase,
    RecoveryKey,
    create_backup,
    load_recovery_key,
    restore_backup,
)
from hsm.errors import (
    BackupFormatError,
    BackupIntegrityError,
    ForeignBackupError,
    HsmError,
    UnknownKeyError,
    WrongPassphraseError,
)
from hsm.keystore import Keystore
from hsm.vault import ShareRecord, ShareVault, open_share

__all__ = ["CommandError", "Engine"]

log = logging.getLogger(__name__)

CEREMONY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
APPROVAL_SECONDS = 3600
SERVICE_DISABLED = "service-disabled"
ATTESTATIONS_PUSHED = "attestations-pushed"  # reason: the last sequence the Wire system acked
# What a peer can make this node hold (appliance.ceremony.budget, `_hold`, `_join_signing`).
PEER_BUDGET = 32 << 20
"""Bytes held for one peer at most: two of the largest requests and packages the mesh
takes, as raw envelopes and payload copies; an honest peer's ceremonies hold kilobytes."""
PENDING_PER_PEER = 4  # unconsented DKGs and rotations of one peer held (an honest one: 1)
JOINED_PER_PEER = 8  # signing ceremonies one peer coordinates with this node at once
REFUSAL_KEYS = 256  # peers and kinds of refusal counted apart for the audit's rate limit
HELD_ROUNDS = {f"{kind.prefix}.round1" for kind in (DkgCeremony, RefreshCeremony)}
KEY_RECORD = re.compile(r"(?P<name>[a-z]+)-(?P<epoch>0|[1-9][0-9]{0,8})")
KEY_CEREMONIES = ("dkg", "refresh")  # the ceremony kinds that make keys
# A refused restore's error code, by the first matching error type.
RESTORE_REFUSALS: list[tuple[type[HsmError], str]] = [
    (UnknownKeyError, "unknown-key"),
    (ForeignBackupError, "foreign-backup"),
    (BackupIntegrityError, "share-mismatch"),
    (WrongPassphraseError, "wrong-passphrase"),
    (BackupFormatError, "bad-backup"),
    (HsmError, "restore-refused"),
]


def key_package(key: KeyRow) -> PublicKeyPackage:
    """The public key package a key record holds (with its verifying shares)."""
    return PublicKeyPackage(
        CIPHERSUITES[key.ciphersuite], key.threshold, key.group_key, key.verifying_shares
    )


class Coalesced:
    """Background work run at most once at a time: asked for while it runs, it runs once
    more when it ends (so no chain change is missed); work answering False is retried
    after a second, a few times."""

    RETRIES = 3

    def __init__(
        self, work: Callable[[], Awaitable[bool]], tasks: set[asyncio.Task[Any]], name: str
    ) -> None:
        self.work = work
        self.tasks = tasks
        self.name = name
        self.again = False
        self.task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        if self.task is not None and not self.task.done():
            self.again = True
            return
        self.task = asyncio.create_task(self._run(), name=self.name)
        self.tasks.add(self.task)
        self.task.add_done_callback(self.tasks.discard)

    async def _run(self) -> None:
        retries = 0
        while True:
            self.again = False
            done = await self.work()
            if not done and retries < self.RETRIES:
                retries += 1
                await asyncio.sleep(1.0)
                continue
            if not self.again:
                return


class Engine:
    def __init__(
        self,
        config: NodeConfig,
        keystore: Keystore,
        store: Store,
        vault: ShareVault,
        curve_secret: bytes,
    ) -> None:
        self.config = config
        self.keystore = keystore
        self.store = store
        self.vault = vault
        self.mesh = Mesh(
            config,
            curve_secret,
            keystore.sign,
            self.deliver,
            self.refuse,
            store.peer_sequences(),
            store.remember_sequence,
        )
        self.chain = (
            ChainService(config.bitcoin, store, self.audit, self._chain_changed)
            if config.bitcoin is not None
            else None
        )
        if config.api is not None:  # the API's workers write their metrics here
            config.api.metrics_dir.mkdir(mode=0o770, parents=True, exist_ok=True)
        self.metrics = EngineMetrics(
            self.metrics_snapshot, config.api.metrics_dir if config.api is not None else None
        )
        self.attestations = AttestationRecords(store)
        self.payouts = Payouts(self)
        self.policies = {
            **POLICIES,
            MINT_ATTESTATION: check_mint_attestation,
            WITHDRAWAL: lambda _node, request: check_payout(self.payouts, request),
            CONSOLIDATION: lambda _node, request: check_payout(self.payouts, request),
        }
        self.ceremonies: dict[str, Ceremony] = {}
        self.finished: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.pending: dict[str, dict[int, Envelope]] = {}  # unconsented: ceremony, sender
        self.pending_since: dict[str, float] = {}
        self.budget = PeerBudget(PEER_BUDGET)
        self.started = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._attesting = Coalesced(self._auto_attest, self._tasks, "auto-attest")
        self._paying = Coalesced(self._pay, self._tasks, "payouts")
        self._refusals: dict[tuple[str, str], tuple[float, int]] = {}
        self._stop_metrics: Callable[[], None] | None = None

    # -- what ceremonies use (NodeServices) ---------------------------------------------
    def envelope(self, ceremony_id: str, round_name: str, payload: bytes) -> bytes:
        return self.mesh.envelope(ceremony_id, round_name, payload)

    def send(self, identifier: int, data: bytes) -> None:
        self.mesh.send(identifier, data)

    def audit(self, event: str, outcome: str, message: str, **fields: Any) -> None:
        fields.setdefault("actor", self.config.node_id)
        if event == "chain.deposit-reorged":
            self.metrics.deposit_reorged(fields.get("attested") == "true")
        try:
            audit(event, outcome, message, **fields)
        except AuditUnavailableError:
            self.metrics.audit_failed()
            raise

    def open_share(self, key_name: str) -> KeyShare:
        return open_share(self.keystore, self._active_record(key_name))

    def public_package(self, key_name: str) -> PublicKeyPackage:
        return self._active_record(key_name).public

    def _active_record(self, key_name: str) -> ShareRecord:
        """The vault's record of the active epoch, refused unless it holds the key the
        store recorded from the ceremony (a record put there some other way is not used)."""
        key = self.store.active_key(key_name)
        if key is None:
            raise CommandError("no-key", f"this node holds no active {key_name} key; run the DKG")
        record = self.vault.load(f"{key_name}-{key.epoch}")
        public = record.public
        if (
            public.suite.context.decode() != key.ciphersuite
            or public.group_key != key.group_key
            or public.threshold != key.threshold
            or (key.verifying_shares and public.verifying_shares != key.verifying_shares)
        ):
            raise CommandError(
                "key-mismatch",
                f"the vault's record of {key_name} epoch {key.epoch} holds key "
                f"{public.fingerprint}, not the key {key.fingerprint} this node recorded; "
                "restore the share from a backup",
            )
        return record

    def group_key(self, key_name: str) -> bytes:
        key = self.store.active_key(key_name)
        if key is None:
            raise CommandError("no-key", f"this node holds no active {key_name} key; run the DKG")
        return key.group_key

    def approved(self, kind: str, content_hash: bytes, now: float) -> bool:
        return self.store.approved(kind, content_hash, now)

    def signing_blocked(self) -> str | None:
        disabled = self.service_disabled()
        if disabled is not None:
            return f"the service is disabled: {disabled}"
        if self.chain is None or self.chain.watcher.state.synced:
            return None
        state = self.chain.watcher.state
        return f"this node signs nothing while its bitcoind is {state.name}: {state.reason}"

    # -- routing ---------------------------------------------------------------------------
    def deliver(self, envelope: Envelope) -> None:
        """Every envelope the mesh accepted lands here."""
        if envelope.round == "sign.blame":
            self._judge_blame(envelope)
            return
        payout_rounds = {
            APPROVAL_ROUND: self.payouts.receive_approval,
            RECORDS_WANTED_ROUND: self.payouts.receive_records_wanted,
            RECORD_ROUND: self.payouts.receive_record,
        }
        if envelope.round in payout_rounds:
            problem = payout_rounds[envelope.round](envelope.sender, envelope.payload)
            if problem is not None:
                reason, detail = problem
                self.refuse(
                    "mesh.message-rejected",
                    reason,
                    {"peer": str(envelope.sender), "detail": detail},
                )
            return
        ceremony = self.ceremonies.get(envelope.ceremony_id)
        if ceremony is not None:
            self._offer(ceremony, envelope)
        elif envelope.ceremony_id in self.finished:
            log.debug("late %s for finished ceremony %s", envelope.round, envelope.ceremony_id)
        elif envelope.round.startswith("sign.request."):
            self._join_signing(envelope)
        elif envelope.round in HELD_ROUNDS:
            self._hold(envelope)
        else:
            self._reject(envelope, "unknown-ceremony", f"{envelope.round} {envelope.ceremony_id}")

    def _reject(self, envelope: Envelope, reason: str, detail: str) -> None:
        self.refuse(
            "mesh.message-rejected", reason, {"peer": str(envelope.sender), "detail": detail}
        )

    def _offer(self, ceremony: Ceremony, envelope: Envelope, charged: bool = False) -> None:
        """Give a running ceremony an envelope if it runs that round with that sender, and
        the sender's budget holds it (`charged`: counted already, while it was held)."""
        size = held_size(envelope)
        refusal = ceremony.refusal(envelope)
        if refusal is None and not charged:
            charged = self.budget.take(ceremony.id, envelope.sender, size)
            if not charged:
                refusal = (
                    "over-budget",
                    (
                        f"{envelope.round} of {ceremony.id}: {self.budget.held(envelope.sender)} "
                        f"bytes are held for this peer already, at most {self.budget.limit}"
                    ),
                )
        if refusal is not None:
            if charged:
                self.budget.give_back(ceremony.id, envelope.sender, size)
            self._reject(envelope, *refusal)
            return
        arrival = ceremony.receive(envelope)
        if not arrival.kept:
            self.budget.give_back(ceremony.id, envelope.sender, size)
        if arrival in (Arrival.CONFLICT, Arrival.DROPPED):
            self._reject(
                envelope,
                "conflicting",
                f"a second, different {envelope.round} of {ceremony.id}"
                + (" (kept as evidence)" if arrival is Arrival.CONFLICT else ""),
            )

    def _join_signing(self, envelope: Envelope) -> None:
        joined = [
            c
            for c in self.ceremonies.values()
            if isinstance(c, SigningParticipant) and c.coordinator == envelope.sender
        ]
        if len(joined) >= JOINED_PER_PEER:
            self._reject(
                envelope,
                "too-many-ceremonies",
                f"{len(joined)} signing ceremonies of this peer are running",
            )
            return
        try:
            request = SigningRequest.from_json(json.loads(envelope.payload)["request"])
        except (ValueError, KeyError, TypeError) as exc:
            self._reject(envelope, "malformed", f"sign.request: {exc}")
            return
        ceremony = SigningParticipant(self, envelope.ceremony_id, envelope.sender, request)
        refusal = ceremony.refusal(envelope)
        if refusal is not None:
            self._reject(envelope, *refusal)
            return
        try:
            self._start(ceremony)
        except CommandError as exc:
            self._reject(envelope, "duplicate-ceremony", str(exc))
            return
        self._offer(ceremony, envelope)

    def _judge_blame(self, envelope: Envelope) -> None:
        """A coordinator names a signer of a bad share: check the evidence ourselves."""
        try:
            blame = judge_share_blame(self, envelope.sender, json.loads(envelope.payload))
        except (MalformedPayload, ValueError, KeyError, TypeError, CommandError) as exc:
            self.refuse(
                "mesh.message-rejected",
                "malformed",
                {"peer": str(envelope.sender), "detail": f"sign.blame: {exc}"},
            )
            return
        self.store.record_blame(envelope.ceremony_id, blame.participant, blame.reason, {})
        self.audit(
            "ceremony.blame", "failure",
            f"participant {blame.participant} is faulty: {blame.reason}",
            ceremony=envelope.ceremony_id, participant=blame.participant, reason=blame.reason,
        )  # fmt: skip

    def _hold(self, envelope: Envelope) -> None:
        """Keep a peer's round-1 envelope of a DKG or key rotation this node's operator has
        not consented to yet: the only envelope a peer sends before every party's round 1
        is in. One per ceremony and peer, for at most PENDING_PER_PEER ceremonies of each
        peer, within its byte budget, for ten rounds."""
        now = time.monotonic()
        horizon = now - 10 * self.config.round_timeout
        for stale in [c for c, since in self.pending_since.items() if since < horizon]:
            self.pending.pop(stale, None)
            self.pending_since.pop(stale, None)
            self.budget.release(stale)
        sender, ceremony_id = envelope.sender, envelope.ceremony_id
        limit = key_round_limits(len(self.config.parties), self.config.threshold)["round1"]
        held = self.pending.get(ceremony_id, {})
        if len(envelope.payload) > limit:
            self._reject(
                envelope,
                "oversized",
                f"{envelope.round} of {len(envelope.payload)} bytes, at most {limit}",
            )
        elif sender in held:
            if held[sender].raw != envelope.raw:
                self._reject(
                    envelope,
                    "conflicting",
                    f"a second, different {envelope.round} of {ceremony_id}",
                )
        elif sum(sender in h for h in self.pending.values()) >= PENDING_PER_PEER:
            self._reject(
                envelope,
                "unsolicited",
                f"{PENDING_PER_PEER} unconsented ceremonies of this peer are held",
            )
        elif not self.budget.take(ceremony_id, sender, held_size(envelope)):
            self._reject(
                envelope,
                "over-budget",
                f"{self.budget.held(sender)} bytes are held for this peer already",
            )
        else:
            self.pending.setdefault(ceremony_id, {})[sender] = envelope
            self.pending_since.setdefault(ceremony_id, now)

    def _start(self, ceremony: Ceremony) -> asyncio.Task[dict[str, Any]]:
        if ceremony.id in self.ceremonies or self.store.ceremony(ceremony.id) is not None:
            raise CommandError("duplicate-ceremony", f"ceremony {ceremony.id!r} exists already")
        self.ceremonies[ceremony.id] = ceremony
        for envelope in self.pending.pop(ceremony.id, {}).values():
            self._offer(ceremony, envelope, charged=True)
        self.pending_since.pop(ceremony.id, None)
        task = asyncio.create_task(self._run(ceremony), name=f"ceremony-{ceremony.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, ceremony: Ceremony) -> dict[str, Any]:
        started = time.monotonic()
        outcome = "failed"
        try:
            result = await ceremony.run()
            outcome = "completed" if result.get("state") == "completed" else "failed"
            return result
        except Exception as exc:
            log.exception("ceremony %s crashed", ceremony.id)
            self.store.finish_ceremony(ceremony.id, "failed", {"reason": f"internal error: {exc}"})
            return {"ceremony": ceremony.id, "state": "failed", "reason": f"internal error: {exc}"}
        except asyncio.CancelledError:
            outcome = "abandoned"
            raise
        finally:
            if ceremony.kind in CEREMONY_KINDS:
                self.metrics.ceremony_finished(ceremony.kind, outcome, time.monotonic() - started)
            self.ceremonies.pop(ceremony.id, None)
            self.budget.release(ceremony.id)
            self.finished[ceremony.id] = time.monotonic()
            while len(self.finished) > 1000:
                self.finished.popitem(last=False)

    def refuse(self, event: str, reason: str, fields: dict[str, str]) -> None:
        """Audit (and log) a refused connection or message, at most a few per second per
        peer and kind; the counters are kept for at most REFUSAL_KEYS peers and kinds (a
        refused connection's address is the stranger's choice), more share one."""
        key = (fields.get("peer", fields.get("address", "?")), reason)
        now = time.monotonic()
        if key not in self._refusals and len(self._refusals) >= REFUSAL_KEYS:
            self._refusals = {k: v for k, v in self._refusals.items() if now - v[0] <= 1.0}
            if len(self._refusals) >= REFUSAL_KEYS:
                key = ("many", reason)
        window, count = self._refusals.get(key, (now, 0))
        if now - window > 1.0:
            window, count = now, 0
        self._refusals[key] = (window, count + 1)
        if count >= 5:
            return
        log.warning("%s: %s %s", event, reason, fields)
        try:
            self.audit(event, "refused", f"{event}: {reason}", reason=reason, **fields)
        except AuditUnavailableError:
            log.error("audit unavailable while refusing %s", reason)

    # -- commands --------------------------------------------------------------------------
    def _ceremony_id(self, value: Any) -> str:
        if not isinstance(value, str) or not CEREMONY_ID.fullmatch(value):
            raise CommandError("bad-request", "ceremony id must be 1-64 letters, digits, . _ -")
        return value

    async def dkg(self, ceremony_id: str) -> dict[str, Any]:
        """This node's consent to, and part in, the DKG `ceremony_id` of both keys."""
        self._require_service()
        result = await self._start(DkgCeremony(self, self._ceremony_id(ceremony_id)))
        self._watch_custody()
        return result

    def _watch_custody(self) -> None:
        key = self.store.active_key("custody")
        if self.chain is not None and key is not None:
            self.chain.watch_custody(key.group_key)

    async def deposit_address(self, recipient: str, since_height: int | None) -> dict[str, Any]:
        """The deposit address of a Wire recipient, watched from now on (and rescanned from
        `since_height`, if given)."""
        if self.chain is None:
            raise CommandError("no-bitcoind", "this node has no bitcoind configured")
        try:
            output, address, rescanned = await self.chain.watch_deposit(
                self.group_key("custody"), recipient, since_height
            )
        except ValueError as exc:
            raise CommandError("bad-request", str(exc)) from exc
        self.audit(
            "chain.deposit-address", "success",
            f"deposit address {address} of {recipient!r} is watched",
            recipient=recipient, address=address,
        )  # fmt: skip
        return {
            "recipient": recipient,
            "address": address,
            "script": output.script.hex(),
            "tweaks": output.tweaks_json,
            "rescanned_blocks": rescanned,
        }

    async def key_rotation(self, ceremony_id: str, reason: str) -> dict[str, Any]:
        """This node's consent to, and part in, refreshing the shares of both keys."""
        self._require_service()
        if not reason:
            raise CommandError("bad-request", "a key rotation needs a reason")
        return await self._start(RefreshCeremony(self, self._ceremony_id(ceremony_id), reason))

    async def test_signing(
        self,
        messages: list[bytes],
        keys: list[str],
        coordinate: bool,
        actor: str,
        signers: list[int] | None = None,
    ) -> dict[str, Any]:
        """Approve signing `messages` as tests on this node; coordinate if asked to."""
        if not messages or len(messages) > 500:
            raise CommandError("bad-request", "test signing takes 1 to 500 messages")
        if not keys or not set(keys) <= set(BRIDGE_KEYS):
            raise CommandError("bad-request", f"keys must be among {sorted(BRIDGE_KEYS)}")
        with self.store.transaction():
            for message in messages:
                digest = message_digest(message)
                self.store.approve(TEST_SIGNING, digest, actor, time.time() + APPROVAL_SECONDS)
        if not coordinate:
            return {"approved": True, "messages": len(messages)}
        request = test_signing_request(self, messages, sorted(set(keys)))
        if signers is not None:
            known = {p.identifier for p in self.config.parties}
            if not set(signers) <= known or self.config.me.identifier not in signers:
                raise CommandError(
                    "bad-request", "signers must be parties and include the coordinating node"
                )
            request = dataclasses.replace(request, signers=tuple(sorted(set(signers))))
        ceremony_id = f"sign-{uuid.uuid4().hex[:20]}"
        return await self._start(SigningCoordinator(self, ceremony_id, request))

    async def sign_request(self, request: SigningRequest) -> dict[str, Any]:
        """Coordinate a signing request of any kind with a policy."""
        ceremony_id = f"sign-{uuid.uuid4().hex[:20]}"
        return await self._start(SigningCoordinator(self, ceremony_id, request))

    def key_info(self) -> dict[str, Any]:
        keys: dict[str, list[dict[str, Any]]] = {}
        for key in self.store.key_records():
            keys.setdefault(key.name, []).append(
                {
                    "epoch": key.epoch,
                    "state": key.state,
                    "ciphersuite": key.ciphersuite,
                    "group_key": key.group_key.hex(),
                    "fingerprint": key.fingerprint,
                    "threshold": key.threshold,
                    "ceremony": key.ceremony_id,
                }
            )
        return {
            "cluster_id": self.config.cluster_id,
            "node_id": self.config.node_id,
            "identifier": self.config.me.identifier,
            "keys": keys,
            "identity_public_key": self.keystore.identity_public_key.hex(),
        }

    def status(self) -> dict[str, Any]:
        peers = {
            state.party.node_id: {
                "identifier": identifier,
                "connected": state.connected,
                "authenticated": state.authenticated,
                "last_seen": state.last_seen,
            }
            for identifier, state in self.mesh.peers.items()
        }
        return {
            "cluster_id": self.config.cluster_id,
            "node_id": self.config.node_id,
            "uptime_seconds": round(time.time() - self.started, 1),
            "keys": {k.name: k.fingerprint for k in self.store.key_records("active")},
            "key_names": list(BRIDGE_KEYS),
            "peers": peers,
            "open_ceremonies": sorted(self.ceremonies),
            "bitcoin": self.chain.status() if self.chain is not None else None,
            "signing_blocked": self.signing_blocked(),
        }

    async def test_communication(self, timeout: float = 2.0) -> dict[str, Any]:
        """Per peer: TCP connected, CURVE-authenticated, and a signed round trip."""
        identifiers = list(self.mesh.peers)
        rtts = await asyncio.gather(*(self.mesh.ping(i, timeout) for i in identifiers))
        report = {}
        for identifier, rtt in zip(identifiers, rtts, strict=True):
            state = self.mesh.peers[identifier]
            report[state.party.node_id] = {
                "reachable": state.connected or rtt is not None,
                "authenticated": rtt is not None,
                "curve_handshake": state.authenticated,
                "round_trip_ms": round(rtt * 1e3, 3) if rtt is not None else None,
            }
        return {"node_id": self.config.node_id, "peers": report}

    def ceremony_info(self, ceremony_id: str) -> dict[str, Any]:
        row = self.store.ceremony(ceremony_id)
        if row is None:
            raise CommandError("not-found", f"no ceremony {ceremony_id!r}")
        return {
            "ceremony": row.id,
            "kind": row.kind,
            "role": row.role,
            "state": row.state,
            "request_id": row.request_id,
            "detail": row.detail,
            "blame": [{"participant": p, "reason": r} for p, r in self.store.blame(row.id)],
        }

    def metrics_snapshot(self) -> Snapshot:
        """What the Prometheus exporter reports, read at each scrape."""
        peers = list(self.mesh.peers.values())
        try:
            self.keystore.check()
            hsm_up = True
        except HsmError:
            hsm_up = False
        synced = height = tip_age = None
        pending_deposits = 0
        minting_paused = False
        if self.chain is not None:
            state = self.chain.watcher.state
            synced, height = state.synced, state.height
            tip_age = None if state.tip_time is None else max(0.0, time.time() - state.tip_time)
            pending_deposits = len(self.chain.view.records.deposits("confirmed"))
            minting_paused = self.chain.view.minting_paused() is not None
        disk = shutil.disk_usage(self.config.data_dir)
        return Snapshot(
            up=True,
            peers_total=len(peers),
            peers_connected=sum(p.connected for p in peers),
            peers_authenticated=sum(p.authenticated for p in peers),
            hsm_up=hsm_up,
            bitcoind_synced=synced,
            bitcoind_height=height,
            bitcoind_tip_age_seconds=tip_age,
            minting_paused=minting_paused,
            signing_blocked=self.signing_blocked() is not None,
            pending_deposits=pending_deposits,
            pending_withdrawals=self.payouts.open_count(),
            open_ceremonies=len(self.ceremonies),
            data_disk_free_bytes=disk.free,
            data_disk_size_bytes=disk.total,
        )

    # -- deposit → mint attestation (MintNode) -----------------------------------------------
    @property
    def network(self) -> str:
        return self.config.bitcoin.network if self.config.bitcoin is not None else "none"

    def own_deposit(self, txid: str, vout: int) -> tuple[DepositRow, int, int] | None:
        if self.chain is None:
            return None
        view = self.chain.view
        found = view.records.deposit_output(txid, vout)
        if found is None:
            return None
        output, recipient = found
        deposit = DepositRow(output.txid, output.vout, recipient, output.amount,
                             output.block_hash, output.height, "confirmed")  # fmt: skip
        return deposit, view.confirmations(output.height), view.required_confirmations()

    def minting_paused(self) -> str | None:
        if self.chain is None:
            return "no bitcoind is configured"
        return self.chain.view.minting_paused()

    def bind_attestations(self, attestations: Sequence[MintAttestation]) -> str | None:
        return self.attestations.bind(attestations)

    def deposit_bounds(self) -> tuple[int, int]:
        policy = self.payouts.policy
        return policy.min_deposit_sats, policy.max_deposit_sats

    async def attest(self, actor: str) -> dict[str, Any]:
        """Coordinate the attestation of every deposit this node's view shows confirmed and
        not yet attested (`test-attestation` runs it on demand)."""
        if self.chain is None:
            raise CommandError("no-bitcoind", "this node has no bitcoind configured")
        self._require_service()
        self.group_key("attestation")  # refuses before the DKG
        view = self.chain.view
        view.take_confirmed_deposits()
        attestations: list[MintAttestation] = []
        sequence = self.attestations.next_sequence()
        for row in self.attestations.unsigned():
            attestations.append(MintAttestation.decode(row.message))
        bound = {(a.txid, a.vout) for a in attestations}
        low, high = self.deposit_bounds()
        for deposit in view.records.deposits("confirmed"):
            if (deposit.txid, deposit.vout) in bound:
                continue
            if not low <= deposit.amount <= high:
                log.warning("deposit %s:%s of %d sat is outside %d..%d; not attested",
                            deposit.txid, deposit.vout, deposit.amount, low, high)  # fmt: skip
                continue
            if self.attestations.bound(deposit.txid, deposit.vout) is not None:
                continue  # signed already
            attestations.append(MintAttestation(
                self.network, deposit.txid, deposit.vout, deposit.amount, deposit.recipient,
                deposit.block_hash, sequence,
            ))  # fmt: skip
            sequence += 1
        if not attestations:
            return {"state": "nothing-to-attest", "attestations": []}
        batch = sorted(attestations, key=lambda a: a.sequence)[:MAX_BATCH]
        request = attestation_request(batch)
        try:
            check_policy(self, request)  # binds on this node before anything leaves it
        except SigningRefused as exc:
            return {"state": "refused", "reason": str(exc),
                    "attestations": [a.to_json() for a in batch]}  # fmt: skip
        crash_point("mint.proposed")
        result = await self.sign_request(request)
        if result.get("state") != "completed":
            return {**result, "attestations": [a.to_json() for a in batch]}
        crash_point("mint.signed")
        signed = []
        with self.store.transaction():
            for a, signature in zip(batch, result["signatures"], strict=True):
                self.attestations.record_signature(a.sequence, bytes.fromhex(signature),
                                                   request.request_id)  # fmt: skip
                view.records.set_deposit_state(a.txid, a.vout, "attested")
                signed.append({**a.to_json(), "message": a.encode().hex(),
                               "signature": signature})  # fmt: skip
        for a in batch:
            self.audit(
                "mint.attested", "success",
                f"deposit {a.txid}:{a.vout} of {a.amount_sats} sat to {a.recipient} attested "
                f"as {a.sequence}", actor=actor, deposit=f"{a.txid}:{a.vout}",
                sequence=a.sequence,
            )  # fmt: skip
        return {"state": "completed", "ceremony": result.get("ceremony"),
                "signers": result.get("signers"), "attestations": signed}  # fmt: skip

    def is_lead(self) -> bool:
        """The lead coordinates the attestations: the lowest party identifier among this
        node and the peers it is authenticated with, so a dead lead is replaced."""
        alive = [self.config.me.identifier] + [
            i for i, state in self.mesh.peers.items() if state.authenticated
        ]
        return self.config.me.identifier == min(alive)

    def _chain_changed(self, change: Any) -> None:
        self._paying.kick()
        if self.config.wire.auto_attest and self.is_lead():
            self._attesting.kick()

    async def _pay(self) -> bool:
        try:
            await self.payouts.on_chain_change()
        except CommandError as exc:
            log.info("payouts not run: %s", exc)
        except Exception:
            log.exception("payouts crashed")
        return True

    async def _poll_burns(self) -> None:
        """Every node reads the burn feed; the lead also pays, when it pays by itself."""
        while True:
            await asyncio.sleep(self.config.wire.feed_poll_seconds)
            self._paying.kick()

    async def _auto_attest(self) -> bool:
        """One automatic attestation; False when it should be tried again shortly (the
        signers' views may not have reached the block yet)."""
        try:
            if self.store.active_key("attestation") is None or self.signing_blocked():
                return True  # the next change of the chain tries again
            result = await self.attest(self.config.node_id)
            if result["state"] not in ("completed", "nothing-to-attest"):
                log.warning("automatic attestation failed: %s", result.get("reason"))
                return False
        except CommandError as exc:
            log.info("automatic attestation not run: %s", exc)
        except Exception:
            log.exception("automatic attestation crashed")
        return True

    async def _push_attestations(self, url: str) -> None:
        """Deliver signed attestations to the Wire system, in sequence order, retrying each
        until it is acknowledged; the delivered cursor survives restarts."""
        loop = asyncio.get_running_loop()
        while True:
            pushed = self.store.flag(ATTESTATIONS_PUSHED)
            after = int(pushed[1]) if pushed is not None else -1
            batch = self.signed_attestations(after, 50)["attestations"]
            delivered = after
            for item in batch:
                ok = await loop.run_in_executor(None, post_json, url, item)
                if not ok:
                    break
                delivered = item["sequence"]
            if delivered != after:
                self.store.set_flag(ATTESTATIONS_PUSHED, "cursor", str(delivered))
                continue
            await asyncio.sleep(self.config.wire.push_seconds)

    def signed_attestations(self, after: int, limit: int) -> dict[str, Any]:
        """The outbox: signed attestations after a sequence number, for the Wire system."""
        rows = self.attestations.signed(after, min(max(limit, 1), 1000))
        items = []
        for row in rows:
            a = MintAttestation.decode(row.message)
            items.append({**a.to_json(), "message": row.message.hex(),
                          "signature": (row.signature or b"").hex()})  # fmt: skip
        return {"attestations": items,
                "cursor": items[-1]["sequence"] if items else after}  # fmt: skip

    # -- the service switch, backups, checks ------------------------------------------------
    def service_disabled(self) -> str | None:
        flag = self.store.flag(SERVICE_DISABLED)
        return None if flag is None else flag[1]

    def set_service(self, enabled: bool, reason: str, actor: str) -> dict[str, Any]:
        """`disable-service` stops every signature (and key ceremony) on this node until
        `enable-service`; status and key-info keep answering."""
        if not enabled and not reason:
            raise CommandError("bad-request", "disabling the service needs a reason")
        if enabled:
            self.store.clear_flag(SERVICE_DISABLED)
        else:
            self.store.set_flag(SERVICE_DISABLED, "true", f"{reason} (by {actor})")
        self.audit(
            "service.switched", "success",
            f"service {'enabled' if enabled else 'disabled'} by {actor}: {reason or '-'}",
            actor=actor, enabled=str(enabled).lower(),
        )  # fmt: skip
        return self.service_status()

    def service_status(self) -> dict[str, Any]:
        disabled = self.service_disabled()
        return {
            "enabled": disabled is None,
            "reason": disabled,
            "signing_blocked": self.signing_blocked(),
        }

    def require_signing(self) -> None:
        """Refuse a command that would sign while this node does not sign (disabled service,
        bitcoind not synced) or holds no keys yet."""
        blocked = self.signing_blocked()
        if blocked is not None:
            raise CommandError("signing-blocked", blocked)
        self.group_key("custody")

    def _require_service(self) -> None:
        disabled = self.service_disabled()
        if disabled is not None:
            raise CommandError("service-disabled", f"the service is disabled: {disabled}")

    def backup_key_share(
        self, key_name: str, passphrase: str | None, recipient: str | None
    ) -> dict[str, Any]:
        """An encrypted backup of this node's share of an active key, protected by an
        operator passphrase or a recovery public key; the share never leaves unencrypted.
        Only `appliance.exports` calls it: it holds the backup for a second admin's
        approval, and audits."""
        if key_name not in BRIDGE_KEYS:
            raise CommandError("bad-request", f"key must be one of {sorted(BRIDGE_KEYS)}")
        protect: Passphrase | RecoveryKey
        if (passphrase is None) == (recipient is None):
            raise CommandError("bad-request", "give exactly one of passphrase or recipient")
        if passphrase is not None:
            if len(passphrase) < 12:
                raise CommandError(
                    "bad-request", "a backup passphrase needs at least 12 characters"
                )
            protect = Passphrase(passphrase)
        else:
            try:
                public = bytes.fromhex(recipient or "")
            except ValueError:
                public = b""
            if len(public) != 32:
                raise CommandError("bad-request", "recipient must be a 32-byte X25519 key in hex")
            protect = RecoveryKey(public)
        key = self.store.active_key(key_name)
        if key is None:
            raise CommandError("no-key", f"this node holds no active {key_name} key; run the DKG")
        record_name = f"{key_name}-{key.epoch}"
        record = self.vault.load(record_name)
        share = self.vault.open(self.keystore, record_name)
        try:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            data = create_backup(record, share, protect, created)
        finally:
            share.wipe()
        return {
            "key": key_name,
            "epoch": key.epoch,
            "fingerprint": key.fingerprint,
            "protection": "passphrase" if passphrase is not None else "recovery key",
            "backup": base64.b64encode(data).decode(),
        }

    def restore_key_share(
        self, backup: str, passphrase: str | None, recovery_key: str | None, actor: str
    ) -> dict[str, Any]:
        """Put this node's share of a key it holds back into the vault from a backup, sealed
        by this node's HSM. Only a share of the active epoch of a key this node's own DKG or
        key rotation made, matching this node's verifying share in that key's recorded
        public package, is accepted; everything is checked before anything is written, and
        the store (which key is active) is never changed."""
        try:
            data = base64.b64decode(backup, validate=True)
        except ValueError as exc:
            raise CommandError("bad-request", "backup must be base64") from exc
        if (passphrase is None) == (recovery_key is None):
            raise CommandError("bad-request", "give exactly one of passphrase or recovery_key")
        try:
            unlock: Passphrase | RecoveryKey = (
                Passphrase(passphrase) if passphrase is not None
                else load_recovery_key((recovery_key or "").encode())
            )  # fmt: skip
            me = self.config.me
            record = restore_backup(
                self.vault, self.keystore, data, unlock,
                self.config.cluster_id, me.node_id, me.identifier, self.known_key,
            )  # fmt: skip
        except HsmError as exc:
            code = next(c for kind, c in RESTORE_REFUSALS if isinstance(exc, kind))
            self.audit(
                "key.restore",
                "refused",
                f"restore refused ({code}): {exc}",
                actor=actor,
                reason=code,
            )
            raise CommandError(code, str(exc)) from exc
        name, _, epoch = record.key_name.rpartition("-")
        self.audit(
            "key.restore", "success",
            f"share of {record.key_name} ({record.public.fingerprint}) restored by {actor}",
            actor=actor, key=name, fingerprint=record.public.fingerprint,
        )  # fmt: skip
        return {"key": name, "epoch": int(epoch), "fingerprint": record.public.fingerprint}

    def known_key(self, record_name: str) -> PublicKeyPackage:
        """The public key package of a vault record name ("custody-1") that names the active
        epoch of a key this node's own DKG or key rotation made; `UnknownKeyError` for any
        other name."""
        match = KEY_RECORD.fullmatch(record_name)
        if match is None or match["name"] not in BRIDGE_KEYS:
            raise UnknownKeyError(
                f"backup key {record_name!r} is not <key>-<epoch> with a key among "
                f"{sorted(BRIDGE_KEYS)} and a decimal epoch"
            )
        name, epoch = match["name"], int(match["epoch"])
        key = self.store.key(name, epoch)
        if key is None:
            raise UnknownKeyError(
                f"this node holds no {name} key of epoch {epoch}: a restore only puts back a "
                "share of a key this node made in its own DKG or key rotation"
            )
        if key.state != "active":
            raise UnknownKeyError(
                f"{name} epoch {epoch} is {key.state} on this node: only the share of the "
                "active epoch can be restored"
            )
        made_by = self.store.ceremony(key.ceremony_id)
        if made_by is None or made_by.kind not in KEY_CEREMONIES:
            raise UnknownKeyError(
                f"{name} epoch {epoch} was not made by a DKG or key rotation of this node "
                f"(recorded by {key.ceremony_id!r})"
            )
        if not key.verifying_shares:
            raise UnknownKeyError(
                f"{name} epoch {epoch} was recorded before this node kept its verifying "
                "shares: rotate the keys (key-rotation) and take new backups"
            )
        return key_package(key)

    def node_identity(self) -> dict[str, Any]:
        """`init`: what the other operators need to configure this node as a party."""
        me = self.config.me
        return {
            "cluster_id": self.config.cluster_id,
            "node_id": me.node_id,
            "identifier": me.identifier,
            "address": me.address,
            "curve_public_key": me.curve_public_key,
            "identity_public_key": self.keystore.identity_public_key.hex(),
            "hsm_token": self.keystore.label,
            "keys": {k.name: k.fingerprint for k in self.store.key_records("active")},
        }

    def security_check(self) -> list[dict[str, Any]]:
        """The engine's side of `security-check`: each item passes or fails with its reason."""
        items: list[dict[str, Any]] = []

        def item(name: str, passed: bool, detail: str) -> None:
            items.append({"check": name, "passed": passed, "detail": detail})

        try:
            self.keystore.check()
            item("hsm", True, f"token {self.keystore.label}: KEK sensitive and never "
                 "extractable; identity key present")  # fmt: skip
        except HsmError as exc:
            item("hsm", False, str(exc))
        for path, wanted in [
            (self.config.data_dir, 0o700),
            (self.vault.directory, 0o700),
            (self.config.engine_socket, 0o660 if self.config.engine_clients else 0o600),
        ]:
            try:
                mode = path.stat().st_mode & 0o777
            except OSError as exc:
                item(f"permissions {path}", False, f"cannot stat: {exc.strerror}")
                continue
            item(f"permissions {path}", mode & ~wanted == 0,
                 f"mode {mode:04o}, at most {wanted:04o} allowed")  # fmt: skip
        loose = [p.name for p in self.vault.directory.glob("*") if p.stat().st_mode & 0o077]
        detail = f"too open: {', '.join(loose)}" if loose else "every share record is 0600"
        item("sealed shares", not loose, detail)
        journal_ok = JOURNAL_SOCKET.is_socket()
        item("audit", journal_ok, "journald accepts records" if journal_ok
             else f"no journald socket at {JOURNAL_SOCKET}")  # fmt: skip
        peers = self.mesh.peers
        unauthenticated = [s.party.node_id for s in peers.values() if not s.authenticated]
        item("peers", not unauthenticated,
             f"all {len(peers)} peers authenticated" if not unauthenticated
             else f"not authenticated: {', '.join(unauthenticated)}")  # fmt: skip
        if self.chain is None:
            item("bitcoind", False, "no bitcoind configured")
        else:
            state = self.chain.watcher.state
            item("bitcoind", state.synced, f"{state.name}: {state.reason}")
        item("configuration", 2 * self.config.threshold > len(self.config.parties),
             f"threshold {self.config.threshold} of {len(self.config.parties)}"
             + ("" if 2 * self.config.threshold > len(self.config.parties)
                else ": a minority could sign"))  # fmt: skip
        sealed = any(Path("/var/log/journal").glob("*/fss"))
        fss = "Forward Secure Sealing keys present"
        no_fss = "no FSS key in /var/log/journal (the image runs journalctl --setup-keys)"
        item("journal sealing", sealed, fss if sealed else no_fss)
        root_ro = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
        item("root read-only", root_ro, "the root file system is read-only" if root_ro
             else "the root file system is writable (not the appliance image?)")  # fmt: skip
        waiting = (self.config.data_dir / VERIFICATION_KEY).exists()
        item("journal verification key", not waiting,
             "still on the node: an admin must take it off (mpc_operator audit-key)"
             if waiting else "not on the node")  # fmt: skip
        return items

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        for ceremony_id in self.store.abandon_open_ceremonies():
            self.audit(
                "ceremony.abandoned", "failure",
                f"ceremony {ceremony_id} was open when the engine stopped; abandoned",
                ceremony=ceremony_id,
            )  # fmt: skip
        await self.mesh.start()
        if self.config.metrics_listen is not None:
            host, port = self.config.metrics_listen
            self._stop_metrics = self.metrics.serve(host, port)
        if self.chain is not None:
            self._watch_custody()
            await self.chain.start()
        if self.config.wire.attestation_push_url is not None:
            push = asyncio.create_task(
                self._push_attestations(self.config.wire.attestation_push_url),
                name="attestation-push",
            )
            self._tasks.add(push)
        if self.config.wire.burn_feed_url is not None:
            poll = asyncio.create_task(self._poll_burns(), name="burn-feed")
            self._tasks.add(poll)
        self.audit("engine.started", "success", f"engine of {self.config.node_id} started")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.mesh.close()
        if self._stop_metrics is not None:
            self._stop_metrics()
        if self.chain is not None:
            await self.chain.close()
        try:
            self.audit("engine.stopped", "success", f"engine of {self.config.node_id} stopped")
        except AuditUnavailableError:
            log.error("audit unavailable at shutdown")
