"""Key rotation by proactive refresh: new shares of the same two keys for all n parties.

Each party deals a random polynomial with constant term zero (appliance.frost.refresh)
through the rounds of `KeyCeremony`; the new shares sign a verification message, are
sealed as the next epoch (pending), and every party confirms. Old shares are deleted, and
the new epoch made active, only by a party holding all n signed confirmations; until then
the old shares stay in use. Confirmations are relayed, so one lost message does not split
the cluster between epochs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from appliance.frost import (
    KeyShare,
    RefreshPackage,
    Round2Package,
    SecretScalar,
    evaluate_refresh_commitment,
    refresh_finalize,
    refresh_round1,
)
from appliance.frost.refresh import RefreshSecret
from appliance.mesh.envelope import EnvelopeError, open_envelope
from appliance.store.database import KeyRow
from appliance.strictjson import StrictObject, as_list, as_string, hex_of

from .base import (
    BRIDGE_KEYS,
    ENVELOPE_OVERHEAD,
    HEX_ITEM,
    KIB,
    CeremonyFailed,
    MalformedPayload,
    NodeServices,
    canonical,
)
from .keygen import KEY_NAMES, Dealing, KeyCeremony

__all__ = ["RefreshCeremony", "public_digest"]


def public_digest(share: KeyShare) -> str:
    """Names a key epoch: its group key and every verifying share."""
    return hashlib.sha256(canonical([share.group_key.hex(), [
        [i, y.hex()] for i, y in share.public.verifying_shares
    ]])).hexdigest()  # fmt: skip


class RefreshCeremony(KeyCeremony):
    kind = "refresh"
    prefix = "refresh"

    def __init__(self, node: NodeServices, ceremony_id: str, reason: str) -> None:
        super().__init__(node, ceremony_id)
        self.reason = reason
        self.old: dict[str, KeyShare] = {}
        self.epochs: dict[str, int] = {}
        self._secrets: dict[str, RefreshSecret] = {}
        self._own: dict[str, RefreshPackage] = {}
        self._deltas: dict[str, dict[int, Round2Package]] = {}

    def more_rounds(self) -> dict[str, int]:
        confirm = KIB + 4 * HEX_ITEM  # both keys' epochs and digests
        return {
            "confirm": confirm,
            "relay": KIB + len(self.parties) * 2 * (confirm + ENVELOPE_OVERHEAD),  # n of them
        }

    def publish(self) -> dict[str, Any]:
        keys = {}
        for name, share in self.old.items():
            secret, package, deltas = refresh_round1(share)
            self._secrets[name], self._own[name], self._deltas[name] = secret, package, deltas
            keys[name] = {"commitment": [c.hex() for c in package.commitment]}
        return {
            "reason": self.reason,
            "epochs": self.epochs,
            "digests": {name: public_digest(share) for name, share in self.old.items()},
            "keys": keys,
        }

    def read_common(self, fields: StrictObject) -> None:
        fields.take("reason", lambda v, p: as_string(v, p, 500))
        epochs = fields.take("epochs", lambda v, p: v)
        digests = fields.take("digests", lambda v, p: v)
        mine = {name: public_digest(share) for name, share in self.old.items()}
        if epochs != self.epochs or digests != mine:
            raise MalformedPayload(
                f"refreshes other key epochs ({epochs}) than this node holds ({self.epochs})"
            )

    def read_key(self, name: str, fields: StrictObject, sender: int) -> RefreshPackage:
        size = BRIDGE_KEYS[name].group.element_size
        commitment = fields.take("commitment", as_list(hex_of(size), self.threshold))
        if len(commitment) != self.threshold - 1:
            raise MalformedPayload(
                f"{name} refresh commitment must have {self.threshold - 1} terms"
            )
        return RefreshPackage(sender, tuple(commitment))

    def deal(self, name: str, recipient: int) -> int:
        return self._deltas[name][recipient].share.reveal()

    def value_matches(self, name: str, dealing: Dealing, recipient: int, value: int) -> bool:
        group = BRIDGE_KEYS[name].group
        expected = evaluate_refresh_commitment(group, dealing.keys[name].commitment, recipient)
        return value != 0 and group.base_mul(value) == expected

    def finish_keys(
        self, dealings: dict[int, Dealing], values: dict[str, dict[int, int]]
    ) -> dict[str, KeyShare]:
        shares = {}
        for name in KEY_NAMES:
            packages = {i: d.keys[name] for i, d in dealings.items()} | {self.me: self._own[name]}
            received = {
                i: Round2Package(i, self.me, SecretScalar(v)) for i, v in values[name].items()
            } | {self.me: self._deltas[name][self.me]}
            shares[name] = refresh_finalize(self._secrets[name], packages, received)
        for deltas in self._deltas.values():
            for package in deltas.values():
                package.share.wipe()
        return shares

    async def execute(self) -> dict[str, Any]:
        for name in KEY_NAMES:
            key = self.node.store.active_key(name)
            if key is None:
                raise CeremonyFailed(f"this node holds no active {name} key to rotate")
            self.epochs[name] = key.epoch
            self.old[name] = self.node.open_share(name)
        try:
            shares = await self.deal_keys()
            try:
                await self.verification_round(shares)
                self._seal_pending(shares)
                digests = {name: public_digest(share) for name, share in shares.items()}
            finally:
                for share in shares.values():
                    share.wipe()
        finally:
            for share in self.old.values():
                share.wipe()
        confirmations = await self._confirm(digests)
        missing = self.missing(self.parties, confirmations)
        if missing:
            raise CeremonyFailed(
                "not every party confirmed its new shares; the old shares stay in use",
                missing=missing,
            )
        self._activate()
        return {
            "reason": self.reason,
            "epochs": {name: epoch + 1 for name, epoch in self.epochs.items()},
            "digests": digests,
            "confirmed_by": sorted(confirmations),
        }

    def _seal_pending(self, shares: dict[str, KeyShare]) -> None:
        node = self.node
        with node.store.transaction():
            for name, share in shares.items():
                epoch = self.epochs[name] + 1
                node.vault.store(
                    node.keystore,
                    share,
                    self.config.cluster_id,
                    self.config.node_id,
                    f"{name}-{epoch}",
                    replace=True,
                )
                node.store.add_key(
                    KeyRow(
                        name,
                        epoch,
                        share.suite.context.decode(),
                        share.group_key,
                        share.public.fingerprint,
                        share.threshold,
                        "pending",
                        self.id,
                        share.public.verifying_shares,
                    )
                )

    async def _confirm(self, digests: dict[str, str]) -> dict[int, bytes]:
        """Collect every party's signed confirmation, relaying what we hold to the others."""
        confirm = {"epochs": {n: e + 1 for n, e in self.epochs.items()}, "digests": digests}
        own = self.broadcast(self.others, self.round("confirm"), confirm)
        held: dict[int, bytes] = {self.me: own}
        deadline = self.deadline()
        for sender, envelope in (await self.inbox.collect(
            self.round("confirm"), self.others, deadline
        )).items():  # fmt: skip
            if self._is_confirmation(sender, envelope.raw, confirm):
                held[sender] = envelope.raw
        self.broadcast(
            self.others,
            self.round("relay"),
            {"confirmations": [raw.hex() for raw in held.values()]},
        )
        relays = await self.inbox.collect(self.round("relay"), self.others, self.deadline(0.5))
        for envelope in relays.values():
            try:
                fields = StrictObject(_json(envelope.payload), "relay", MalformedPayload)
                raws = fields.take("confirmations", as_list(hex_of(max_size=8192), 256))
                fields.done()
            except (MalformedPayload, ValueError):
                continue
            for raw in raws:
                try:
                    sender = open_envelope(raw).sender
                except EnvelopeError:
                    continue
                if sender not in held and self._is_confirmation(sender, raw, confirm):
                    held[sender] = raw
        return held

    def _is_confirmation(self, sender: int, raw: bytes, expected: dict[str, Any]) -> bool:
        try:
            envelope = open_envelope(raw)
        except EnvelopeError:
            return False
        return (
            envelope.ceremony_id == self.id
            and envelope.round == self.round("confirm")
            and envelope.sender == sender
            and envelope.signed_by(self.config.party(sender).identity_public_key)
            and _json(envelope.payload) == expected
        )

    def _activate(self) -> None:
        node = self.node
        with node.store.transaction():
            for name, epoch in self.epochs.items():
                node.store.set_key_state(name, epoch, "retired")
                node.store.set_key_state(name, epoch + 1, "active")
        for name, epoch in self.epochs.items():
            node.vault.remove(f"{name}-{epoch}")
            node.audit(
                "key.shares-retired", "success",
                f"{name} epoch {epoch} shares deleted; epoch {epoch + 1} active",
                ceremony=self.id, key=name, epoch=epoch + 1,
            )  # fmt: skip


def _json(payload: bytes) -> Any:
    return json.loads(payload)
