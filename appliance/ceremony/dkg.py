"""The distributed key generation of both bridge keys, in one ceremony of all n parties.

Pedersen DKG with proofs of knowledge (appliance.frost.dkg) dealt through the rounds of
`KeyCeremony`; then every party signs with both new keys, and only then seals its shares
(epoch 1) and records the keys as verified. `dkg.sealed` tells the others it has done so.
"""

from __future__ import annotations

from typing import Any

from appliance.frost import (
    KeyShare,
    Round1Package,
    Round2Package,
    SecretScalar,
    dkg_finalize,
    dkg_round1,
    dkg_round2,
)
from appliance.frost.dkg import DkgRound1Secret, DkgRound2Secret
from appliance.frost.keys import evaluate_commitment
from appliance.mesh.envelope import Envelope
from appliance.store.database import KeyRow
from appliance.strictjson import StrictObject, as_integer, as_list, hex_of

from .base import BRIDGE_KEYS, HEX_ITEM, KIB, CeremonyFailed, MalformedPayload, NodeServices
from .keygen import KEY_NAMES, Dealing, KeyCeremony

__all__ = ["DkgCeremony"]


class DkgCeremony(KeyCeremony):
    kind = "dkg"
    prefix = "dkg"

    def __init__(self, node: NodeServices, ceremony_id: str) -> None:
        super().__init__(node, ceremony_id)
        self._round1: dict[str, DkgRound1Secret] = {}
        self._round2: dict[str, DkgRound2Secret] = {}
        self._dealt: dict[str, dict[int, Round2Package]] = {}

    def more_rounds(self) -> dict[str, int]:
        return {"sealed": KIB + 2 * HEX_ITEM}  # both keys' fingerprints

    def publish(self) -> dict[str, Any]:
        keys = {}
        for name, suite in BRIDGE_KEYS.items():
            secret, package = dkg_round1(suite, self.me, self.threshold, len(self.parties))
            self._round1[name] = secret
            keys[name] = {
                "commitment": [c.hex() for c in package.commitment],
                "proof": package.proof_of_knowledge.hex(),
            }
        return {"threshold": self.threshold, "parties": self.parties, "keys": keys}

    def read_common(self, fields: StrictObject) -> None:
        threshold = fields.take("threshold", as_integer)
        parties = fields.take("parties", as_list(as_integer, 256))
        if threshold != self.threshold or parties != self.parties:
            raise MalformedPayload(
                f"parameters differ: threshold {threshold}, parties {parties} "
                f"(this node: {self.threshold}, {self.parties})"
            )

    def read_key(self, name: str, fields: StrictObject, sender: int) -> Round1Package:
        suite = BRIDGE_KEYS[name]
        commitment = fields.take(
            "commitment", as_list(hex_of(suite.group.element_size), self.threshold)
        )
        proof = fields.take("proof", hex_of(suite.signature_size))
        return Round1Package(sender, tuple(commitment), proof)

    def check_dealings(self, dealings: dict[int, Dealing]) -> None:
        for name in KEY_NAMES:
            theirs = {i: d.keys[name] for i, d in dealings.items()}
            self._round2[name], self._dealt[name] = dkg_round2(self._round1[name], theirs)

    def deal(self, name: str, recipient: int) -> int:
        return self._dealt[name][recipient].share.reveal()

    def value_matches(self, name: str, dealing: Dealing, recipient: int, value: int) -> bool:
        group = BRIDGE_KEYS[name].group
        expected = evaluate_commitment(group, dealing.keys[name].commitment, recipient)
        return value != 0 and group.base_mul(value) == expected

    def finish_keys(
        self, dealings: dict[int, Dealing], values: dict[str, dict[int, int]]
    ) -> dict[str, KeyShare]:
        shares = {}
        for name in KEY_NAMES:
            theirs = {i: d.keys[name] for i, d in dealings.items()}
            received = {
                i: Round2Package(i, self.me, SecretScalar(v)) for i, v in values[name].items()
            }
            shares[name] = dkg_finalize(self._round2[name], theirs, received)
        for dealt in self._dealt.values():
            for package in dealt.values():
                package.share.wipe()
        return shares

    async def execute(self) -> dict[str, Any]:
        if self.node.store.key_records("active"):
            raise CeremonyFailed("this node holds keys already; rotate them with key-rotation")
        shares = await self.deal_keys()
        try:
            signatures = await self.verification_round(shares)
            self._seal(shares)
            confirmed, disagreeing = await self._confirm(shares)
        finally:
            for share in shares.values():
                share.wipe()
        return {
            "keys": {
                name: {
                    "ciphersuite": share.suite.context.decode(),
                    "group_key": share.group_key.hex(),
                    "fingerprint": share.public.fingerprint,
                    "verification_signature": signatures[name].hex(),
                }
                for name, share in shares.items()
            },
            "sealed_by": sorted([self.me, *confirmed]),
            "not_confirmed": self.missing(self.others, confirmed),
            "disagreeing": disagreeing,
        }

    def _seal(self, shares: dict[str, KeyShare]) -> None:
        node = self.node
        with node.store.transaction():
            for name, share in shares.items():
                node.vault.store(
                    node.keystore, share, self.config.cluster_id, self.config.node_id, f"{name}-1"
                )
                node.store.add_key(
                    KeyRow(
                        name,
                        1,
                        share.suite.context.decode(),
                        share.group_key,
                        share.public.fingerprint,
                        share.threshold,
                        "active",
                        self.id,
                        share.public.verifying_shares,
                    )
                )
        for name, share in shares.items():
            node.audit(
                "key.verified", "success",
                f"{name} key {share.public.fingerprint} verified by all parties; share sealed",
                ceremony=self.id, key=name, fingerprint=share.public.fingerprint,
            )  # fmt: skip

    async def _confirm(self, shares: dict[str, KeyShare]) -> tuple[list[int], list[int]]:
        fingerprints = {name: share.public.fingerprint for name, share in shares.items()}
        self.broadcast(self.others, self.round("sealed"), {"fingerprints": fingerprints})

        def decode(document: Any, envelope: Envelope) -> dict[str, str]:
            fields = StrictObject(document, "sealed", MalformedPayload)
            value = fields.take("fingerprints", lambda v, p: v)
            fields.done()
            if value != fingerprints:
                raise MalformedPayload(f"sealed other keys: {value}")
            return fingerprints

        confirmed, bad = await self.gather(self.round("sealed"), self.others, decode)
        return sorted(confirmed), [b.participant for b in bad]
