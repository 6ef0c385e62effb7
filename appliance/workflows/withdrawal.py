"""Burn → withdrawal and fee consolidation: the proposal a coordinator makes, and the policy
every node applies to it from its own view before it releases a share.

A proposal names everything the transaction is built from: the burn entries it pays (as the
burn authority signed them), the custody outputs it spends, the fee rate, and for a
consolidation the destination. Each node verifies the burns itself, looks the inputs up in
its own chain view, applies its own policy (caps, approvals, fee bounds) and builds the
transaction itself; only if its bytes equal the proposal's does it sign the inputs'
signature hashes.

What keeps a burn from being paid twice is Bitcoin, not any node's records: a withdrawal
must spend the main custody output at the end of the payout chain as this node follows it
(`appliance.chain.payout_chain`), and pay no burn a link of that chain paid. Two
withdrawals the cluster signs, however a coordinator split its proposals between honest
nodes, then either both spend one main output (at most one confirms) or one descends from
the other (and the later one cannot pay the earlier one's burns).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.ceremony.base import MalformedPayload, canonical
from appliance.ceremony.requests import SigningPayload, SigningRefused, SigningRequest
from appliance.chain.payout_chain import PayoutChain
from appliance.chain.withdrawal import (
    Payout,
    Spendable,
    WithdrawalError,
    WithdrawalPlan,
    build_sweep,
    build_withdrawal,
    spend_exactly,
)
from appliance.config import FeeReservoirConfig, Policy
from appliance.store.payout import PayoutRecords, RevisionRow
from appliance.strictjson import StrictObject, as_bool, as_hex, as_integer, as_list, as_string
from appliance.wire.burns import BurnRecord, VerifiedBurn

__all__ = [
    "CONSOLIDATION",
    "DAY",
    "WITHDRAWAL",
    "PayoutNode",
    "Proposal",
    "approval_message",
    "check_payout",
    "first_proposal",
    "payout_request",
    "valid_approvers",
    "withdrawal_id",
]

WITHDRAWAL = "withdrawal"
CONSOLIDATION = "consolidation"
APPROVAL_PREFIX = b"wire-mpc burn-approval v1\0"
DAY = 86400.0
SPENDABLE_KINDS = {WITHDRAWAL: ("custody", "deposit"), CONSOLIDATION: ("reservoir",)}

Outpoint = tuple[str, int]


@dataclass(frozen=True)
class Proposal:
    withdrawal_id: str
    kind: str
    revision: int
    burns: tuple[dict[str, Any], ...]  # feed entries {"record": {...}, "signature": "<hex>"}
    inputs: tuple[Outpoint, ...]
    destination: str | None  # a consolidation's address
    forced: bool  # a consolidation asked for by operators below the threshold
    fee_rate_msat_vb: int
    transaction: bytes  # unsigned
    approvals: tuple[tuple[str, int, bytes], ...]  # (burn id, approver identifier, signature)

    @property
    def fee_rate(self) -> float:
        return self.fee_rate_msat_vb / 1000

    @property
    def burn_ids(self) -> list[str]:
        return [str(entry["record"]["burn_id"]) for entry in self.burns]

    def to_json(self) -> dict[str, Any]:
        return {
            "withdrawal": self.withdrawal_id,
            "kind": self.kind,
            "revision": self.revision,
            "burns": list(self.burns),
            "inputs": [[txid, vout] for txid, vout in self.inputs],
            "destination": self.destination,
            "forced": self.forced,
            "fee_rate_msat_vb": self.fee_rate_msat_vb,
            "transaction": self.transaction.hex(),
            "approvals": [[b, a, s.hex()] for b, a, s in self.approvals],
        }

    @classmethod
    def from_json(cls, value: Any) -> Proposal:
        fields = StrictObject(value, "detail", MalformedPayload)

        def outpoint(item: Any, where: str) -> Outpoint:
            if not isinstance(item, list) or len(item) != 2:
                raise ValueError("must be [txid, vout]")
            return as_hex(item[0], where, 32).hex(), as_integer(item[1], where, 0, 1 << 32)

        def approval(item: Any, where: str) -> tuple[str, int, bytes]:
            if not isinstance(item, list) or len(item) != 3:
                raise ValueError("must be [burn id, approver, signature]")
            return (
                as_string(item[0], where, 128),
                as_integer(item[1], where, 1, 65535),
                as_hex(item[2], where, 64),
            )

        def entry(item: Any, where: str) -> dict[str, Any]:
            if not isinstance(item, dict) or not isinstance(item.get("record"), dict):
                raise ValueError("must be a burn entry {record, signature}")
            return item

        proposal = cls(
            withdrawal_id=fields.take("withdrawal", lambda v, p: as_string(v, p, 64)),
            kind=fields.take("kind", as_string),
            revision=fields.take("revision", lambda v, p: as_integer(v, p, 0, 1000)),
            burns=tuple(fields.take("burns", as_list(entry, 1000))),
            inputs=tuple(fields.take("inputs", as_list(outpoint, 500))),
            destination=fields.take(
                "destination", lambda v, p: None if v is None else as_string(v, p, 128)
            ),
            forced=fields.take("forced", as_bool),
            fee_rate_msat_vb=fields.take(
                "fee_rate_msat_vb", lambda v, p: as_integer(v, p, 1, 10**9)
            ),
            transaction=fields.take("transaction", lambda v, p: as_hex(v, p, max_size=1 << 20)),
            approvals=tuple(fields.take("approvals", as_list(approval, 10_000))),
        )
        fields.done()
        if proposal.kind not in SPENDABLE_KINDS:
            raise MalformedPayload(f"detail.kind: {proposal.kind!r} is not a payout kind")
        return proposal


def withdrawal_id(
    kind: str, burn_ids: Sequence[str], inputs: Sequence[Outpoint], destination: str | None
) -> str:
    """Names what a withdrawal pays and spends; every revision of it shares the name."""
    body = {
        "kind": kind,
        "burns": sorted(burn_ids),
        "inputs": [list(i) for i in inputs],
        "destination": destination,
    }
    prefix = "wd" if kind == WITHDRAWAL else "fc"
    return f"{prefix}-{hashlib.sha256(canonical(body)).hexdigest()[:24]}"


def first_proposal(
    kind: str,
    plan: WithdrawalPlan,
    fee_rate_msat_vb: int,
    entries: Sequence[dict[str, Any]] = (),
    destination: str | None = None,
    forced: bool = False,
    approvals: Sequence[tuple[str, int, bytes]] = (),
) -> Proposal:
    """Revision 0 of a withdrawal or consolidation built as `plan`, in canonical order: a
    withdrawal's inputs as its transaction spends them (the main custody output first)."""
    inputs = tuple((s.txid, s.vout) for s in plan.spent)
    if kind == CONSOLIDATION:
        inputs = tuple(sorted(inputs))
    ordered = tuple(sorted(entries, key=lambda e: str(e["record"]["burn_id"])))
    ids = [str(e["record"]["burn_id"]) for e in ordered]
    return Proposal(
        withdrawal_id(kind, ids, inputs, destination), kind, 0, ordered, inputs, destination,
        forced, fee_rate_msat_vb, plan.transaction.serialize(), tuple(sorted(approvals)),
    )  # fmt: skip


def payout_request(proposal: Proposal, plan: WithdrawalPlan) -> SigningRequest:
    """One ceremony signs every input: the BIP341 signature hash with its output's tweaks."""
    payloads = tuple(
        SigningPayload("custody", sighash, spent.tweaks)
        for sighash, spent in zip(plan.sighashes(), plan.spent, strict=True)
    )
    return SigningRequest(
        f"{proposal.withdrawal_id}-r{proposal.revision}",
        proposal.kind,
        proposal.to_json(),
        payloads,
    )


def approval_message(cluster_id: str, record: BurnRecord) -> bytes:
    """What a node's identity key signs when its operator approves paying a large burn."""
    digest = hashlib.sha256(record.canonical()).digest()
    return APPROVAL_PREFIX + cluster_id.encode() + b"\0" + digest


def valid_approvers(
    identity_keys: Mapping[int, bytes],
    cluster_id: str,
    record: BurnRecord,
    approvals: Sequence[tuple[int, bytes]],
) -> set[int]:
    """The parties whose approval signature of `record` verifies."""
    message = approval_message(cluster_id, record)
    approvers = set()
    for approver, signature in approvals:
        key = identity_keys.get(approver)
        if key is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        except InvalidSignature:
            continue
        approvers.add(approver)
    return approvers


class PayoutNode(Protocol):
    """What the payout policy asks of a node: its own verified burns, its own chain view and
    records, its own policy."""

    records: PayoutRecords
    fee_reservoir: FeeReservoirConfig

    @property
    def policy(self) -> Policy: ...

    @property
    def fee_bounds(self) -> tuple[float, float]: ...

    def take_burns(self, entries: Sequence[dict[str, Any]]) -> list[VerifiedBurn]:
        """Verify each entry as this node verifies the feed, queueing new ones; raises
        `SigningRefused` naming the first that fails or differs from what it holds."""

    def own_spendables(self, inputs: Sequence[Outpoint], kinds: Sequence[str]) -> list[Spendable]:
        """The inputs as this node's view shows them, unspent and confirmed; raises
        `SigningRefused` otherwise."""

    def payout_chain(self) -> PayoutChain:
        """The payout chain as this node follows it on its own view and records."""

    def change_script(self) -> bytes: ...

    def destination_script(self, destination: str, forced: bool) -> bytes:
        """The consolidation's output script, if this node agrees to pay there; raises
        `SigningRefused` otherwise."""

    def approvers(self, record: BurnRecord, approvals: Sequence[tuple[int, bytes]]) -> set[int]:
        """The parties whose approval of the burn verifies (those carried and those this
        node received), remembered for later."""


def _outflow_checks(
    node: PayoutNode, proposal: Proposal, amount: int, known: bool, chain: PayoutChain
) -> None:
    """The caps. The 24 hours' outflow counts the payout chain's links (whoever signed them)
    and this node's consolidations; withdrawals that lost to a link never moved anything."""
    policy = node.policy
    if amount > policy.max_withdrawal_sats:
        raise SigningRefused(
            f"{proposal.withdrawal_id} moves {amount} sat, above the "
            f"per-withdrawal cap of {policy.max_withdrawal_sats}"
        )
    if not known:
        since = time.time() - DAY
        spent = chain.outflow_since(since) + node.records.consolidated_since(
            since, excluding=proposal.withdrawal_id
        )
        if spent + amount > policy.daily_outflow_sats:
            raise SigningRefused(
                f"{proposal.withdrawal_id} would bring the last 24 hours' outflow to "
                f"{spent + amount} sat, above the cap of {policy.daily_outflow_sats}"
            )


def _plan(node: PayoutNode, proposal: Proposal, known: bool) -> WithdrawalPlan:
    chain = node.payout_chain()
    rate = proposal.fee_rate
    if proposal.kind == CONSOLIDATION:
        spendables = node.own_spendables(proposal.inputs, SPENDABLE_KINDS[CONSOLIDATION])
        if proposal.burns or proposal.approvals or proposal.destination is None:
            raise SigningRefused("a consolidation pays no burn and names a destination")
        script = node.destination_script(proposal.destination, proposal.forced)
        reservoir = node.fee_reservoir
        small = [s for s in spendables if s.amount < reservoir.min_fee_amount]
        if small:
            raise SigningRefused(
                f"reservoir output {small[0].txid}:{small[0].vout} holds less "
                f"than {reservoir.min_fee_amount} sat"
            )
        if not proposal.forced and len(spendables) < reservoir.consolidation_threshold:
            raise SigningRefused(
                f"{len(spendables)} reservoir outputs, the threshold is "
                f"{reservoir.consolidation_threshold}"
            )
        _outflow_checks(node, proposal, sum(s.amount for s in spendables), known, chain)
        return build_sweep(spendables, script, rate)  # a replacement sweeps the same inputs
    if proposal.destination is not None or proposal.forced:
        raise SigningRefused("a withdrawal pays burns only")
    main = _main_output(chain, proposal)
    paid = chain.paid
    for burn_id in proposal.burn_ids:
        if burn_id in paid:
            raise SigningRefused(f"burn {burn_id} is paid by {paid[burn_id]} already")
    extras = node.own_spendables(proposal.inputs[1:], SPENDABLE_KINDS[WITHDRAWAL])
    policy = node.policy
    if not 0 < len(proposal.burns) <= policy.max_batch:
        raise SigningRefused(f"a withdrawal pays 1 to {policy.max_batch} burns")
    burns = node.take_burns(proposal.burns)
    carried: dict[str, list[tuple[int, bytes]]] = {}
    for burn_id, approver, signature in proposal.approvals:
        carried.setdefault(burn_id, []).append((approver, signature))
    for burn in burns:
        if burn.record.amount_sats > policy.approval_above_sats:
            approvers = node.approvers(burn.record, carried.get(burn.record.burn_id, []))
            if len(approvers) < policy.approvals_required:
                raise SigningRefused(
                    f"burn {burn.record.burn_id} of {burn.record.amount_sats} sat needs "
                    f"approval on {policy.approvals_required} nodes, has {len(approvers)}"
                )
    payouts = [Payout(b.record.burn_id, b.script, b.record.amount_sats) for b in burns]
    _outflow_checks(node, proposal, sum(p.amount for p in payouts), known, chain)
    if proposal.revision > 0:
        return spend_exactly(payouts, main, extras, node.change_script(), rate)
    plan = build_withdrawal(payouts, main, extras, node.change_script(), rate)
    if len(plan.spent) != len(extras) + 1:
        raise SigningRefused("the proposal spends more inputs than its payouts need")
    return plan


def _main_output(chain: PayoutChain, proposal: Proposal) -> Spendable:
    """The main custody output the withdrawal must spend first: the one at the end of the
    payout chain as this node follows it, with every link's burns known."""
    refusal = chain.refusal()
    if refusal is not None:
        raise SigningRefused(refusal)
    assert chain.main is not None
    main = (chain.main.txid, chain.main.vout)
    if not proposal.inputs or proposal.inputs[0] != main:
        first = f"{proposal.inputs[0][0]}:{proposal.inputs[0][1]}" if proposal.inputs else "none"
        raise SigningRefused(
            f"{proposal.withdrawal_id} spends {first} first, not the main custody output "
            f"{main[0]}:{main[1]} at the end of the payout chain in this node's view"
        )
    return chain.main


def rebuild(node: PayoutNode, proposal: Proposal) -> WithdrawalPlan:
    """The transaction this node builds from the proposal's facts and its own view."""
    floor, ceiling = node.fee_bounds
    if not floor <= proposal.fee_rate <= ceiling:
        raise SigningRefused(
            f"fee rate {proposal.fee_rate} sat/vB is outside this node's {floor}..{ceiling}"
        )
    ids = proposal.burn_ids
    ordered = proposal.inputs[1:] if proposal.kind == WITHDRAWAL else proposal.inputs
    if (
        ids != sorted(set(ids))
        or list(ordered) != sorted(set(ordered))
        or len(set(proposal.inputs)) != len(proposal.inputs)
    ):
        raise SigningRefused("burns or inputs repeat, or inputs are not in order")
    expected = withdrawal_id(proposal.kind, ids, proposal.inputs, proposal.destination)
    if proposal.withdrawal_id != expected:
        raise SigningRefused(f"withdrawal id {proposal.withdrawal_id} does not name its content")
    known = node.records.withdrawal(proposal.withdrawal_id)
    if known is not None:
        if known.state in ("confirmed", "conflicted"):
            raise SigningRefused(f"{proposal.withdrawal_id} is {known.state} already")
        if node.records.revision(proposal.withdrawal_id, proposal.revision) is None:
            latest = node.records.latest(proposal.withdrawal_id)
            if proposal.revision != latest.revision + 1 or proposal.fee_rate <= latest.fee_rate:
                raise SigningRefused(
                    f"revision {proposal.revision} of {proposal.withdrawal_id} must follow "
                    f"revision {latest.revision} at a higher fee rate than {latest.fee_rate}"
                )
    elif proposal.revision != 0:
        raise SigningRefused(
            f"this node never agreed to {proposal.withdrawal_id}; "
            f"revision {proposal.revision} cannot replace it"
        )
    try:
        plan = _plan(node, proposal, known is not None)
    except WithdrawalError as exc:
        raise SigningRefused(f"{proposal.withdrawal_id}: {exc}") from exc
    earlier = {r.txid for r in node.records.revisions(proposal.withdrawal_id)}
    new_revision = node.records.revision(proposal.withdrawal_id, proposal.revision) is None
    if new_revision and plan.transaction.txid_hex in earlier:
        raise SigningRefused(
            f"{proposal.withdrawal_id}: the replacement is the same transaction; its fee "
            "cannot rise"
        )
    if plan.transaction.serialize() != proposal.transaction:
        raise SigningRefused(
            f"{proposal.withdrawal_id}: the proposed transaction differs from "
            "the one this node builds from its own view"
        )
    return plan


def check_payout(node: PayoutNode, request: SigningRequest) -> None:
    """The signing policy of withdrawals and consolidations."""
    try:
        proposal = Proposal.from_json(request.detail)
    except MalformedPayload as exc:
        raise SigningRefused(f"malformed proposal: {exc}") from exc
    if request.kind != proposal.kind:
        raise SigningRefused("request kind and proposal kind differ")
    plan = rebuild(node, proposal)
    if request.payloads != payout_request(proposal, plan).payloads:
        raise SigningRefused("payloads differ from the inputs' signature hashes")
    spent = plan.spent if proposal.kind == CONSOLIDATION else plan.payouts
    amount = sum(item.amount for item in spent)  # what leaves the bridge's keys
    revision = RevisionRow(
        proposal.withdrawal_id,
        proposal.revision,
        plan.transaction.txid_hex,
        proposal.fee_rate,
        proposal.transaction,
        request.detail,
        None,
    )
    conflict = node.records.bind(
        proposal.withdrawal_id, proposal.kind, proposal.burn_ids, proposal.inputs, amount, revision
    )
    if conflict is not None:
        raise SigningRefused(conflict)
