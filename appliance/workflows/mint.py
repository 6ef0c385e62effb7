"""Deposit → mint attestation: the request a coordinator proposes, and the policy every node
applies to it from its own view before it releases a share.

A node signs an attestation only for a deposit its own bitcoind shows confirmed (the chain
view's rule: 6 confirmations, 12 after a fork), with the amount, recipient and block the
attestation states, while minting is not paused. Each node binds a deposit to one
attestation sequence number when it first signs it and refuses any other binding, of the
deposit or of the sequence. Two disjoint sets of honest nodes can still each sign one
attestation of a deposit for a malicious coordinator: the Wire system mints once per
(network, txid, vout) (`appliance.wire.attestation.MintLedger`), which makes that harmless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

from appliance.ceremony.base import MalformedPayload, canonical
from appliance.ceremony.requests import SigningPayload, SigningRefused, SigningRequest
from appliance.store.chain import DepositRow
from appliance.wire.attestation import AttestationError, MintAttestation

__all__ = ["MINT_ATTESTATION", "MintNode", "attestation_request", "check_mint_attestation"]

MINT_ATTESTATION = "mint-attestation"
MAX_BATCH = 200


class MintNode(Protocol):
    """What the mint policy asks of a node: facts from its own chain view and records."""

    network: str

    def own_deposit(self, txid: str, vout: int) -> tuple[DepositRow, int, int] | None:
        """The deposit as this node's view reports it, its confirmations and the
        confirmations required now; None if this node knows no such deposit."""

    def minting_paused(self) -> str | None: ...

    def bind_attestations(self, attestations: Sequence[MintAttestation]) -> str | None:
        """Record deposit ↔ sequence for each; the reason if one conflicts with a binding
        this node made before (nothing is recorded then)."""

    def deposit_bounds(self) -> tuple[int, int]:
        """The smallest and largest deposit this node's policy attests."""


def attestation_request(attestations: Sequence[MintAttestation]) -> SigningRequest:
    """One ceremony signs a batch; the id names its content, so a retry is the same request."""
    if not 0 < len(attestations) <= MAX_BATCH:
        raise ValueError(f"an attestation batch holds 1 to {MAX_BATCH} attestations")
    detail = {"attestations": [a.to_json() for a in attestations]}
    digest = hashlib.sha256(canonical(detail)).hexdigest()[:24]
    first, last = attestations[0].sequence, attestations[-1].sequence
    return SigningRequest(
        f"mint-{first}-{last}-{digest}",
        MINT_ATTESTATION,
        detail,
        tuple(SigningPayload("attestation", a.encode()) for a in attestations),
    )


def _attestations(detail: dict[str, Any]) -> list[MintAttestation]:
    if set(detail) != {"attestations"} or not isinstance(detail["attestations"], list):
        raise SigningRefused("mint request carries unexpected facts")
    items = detail["attestations"]
    if not 0 < len(items) <= MAX_BATCH:
        raise SigningRefused(f"a mint request holds 1 to {MAX_BATCH} attestations")
    try:
        return [MintAttestation.from_json(item) for item in items]
    except (AttestationError, MalformedPayload) as exc:
        raise SigningRefused(f"malformed attestation: {exc}") from exc


def check_mint_attestation(node: MintNode, request: SigningRequest) -> None:
    attestations = _attestations(request.detail)
    if request.payloads != attestation_request(attestations).payloads:
        raise SigningRefused("mint payloads differ from the attestations' encodings")
    paused = node.minting_paused()
    if paused is not None:
        raise SigningRefused(f"minting is paused on this node: {paused}")
    sequences = [a.sequence for a in attestations]
    if len(set(sequences)) != len(sequences):
        raise SigningRefused("a sequence number appears twice in one batch")
    for a in attestations:
        where = f"deposit {a.txid}:{a.vout}"
        if a.network != node.network:
            raise SigningRefused(f"{where}: attestation for {a.network}, this node is on "
                                 f"{node.network}")  # fmt: skip
        own = node.own_deposit(a.txid, a.vout)
        if own is None:
            raise SigningRefused(f"{where}: this node's bitcoind shows no such confirmed deposit")
        deposit, confirmations, required = own
        if (deposit.amount, deposit.recipient, deposit.block_hash) != (
            a.amount_sats,
            a.recipient,
            a.block_hash,
        ):
            raise SigningRefused(
                f"{where}: this node sees {deposit.amount} sat to {deposit.recipient!r} in "
                f"block {deposit.block_hash}, not what the attestation states"
            )
        low, high = node.deposit_bounds()
        if not low <= a.amount_sats <= high:
            raise SigningRefused(f"{where}: {a.amount_sats} sat is outside this node's deposit "
                                 f"bounds {low}..{high}")  # fmt: skip
        if deposit.state == "reorged" or confirmations < required:
            raise SigningRefused(f"{where}: {confirmations} confirmations of {required} required")
    conflict = node.bind_attestations(attestations)
    if conflict is not None:
        raise SigningRefused(conflict)
