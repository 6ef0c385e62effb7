"""The payout signing policy (`appliance.workflows.withdrawal`) as one node applies it.

A small fake node implements `PayoutNode` on a real SQLite store (`PayoutRecords`): burns
signed by a real Ed25519 burn authority and verified with `verify_burn`, custody, deposit
and reservoir outputs of a real custody key, approvals signed by the parties' identity
keys, and a payout chain the test sets (its main output, its links). Proposals are built
the way the coordinator builds them and put through `check_payout`. Tested: a valid
withdrawal binds and may be checked again; a withdrawal must spend the main custody output
at the end of the chain first and pay no burn a link paid, and none is signed before the
genesis, on a broken chain, or while a link's burns are unknown; two withdrawals paying one
burn are both signed only because they spend the same main output; refusals of tampered
transactions and payloads, badly signed burns, inputs outside the node's view or of the
wrong kind, fee rates outside the node's bounds, the per-withdrawal and 24-hour caps (the
chain's links count, withdrawals that lost do not), large burns without enough valid
approvals, replacements that do not raise the fee or replace nothing, ids that do not name
their content, unordered burns and repeated inputs; and the fee reservoir's consolidation
(threshold, small outputs, destination).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.ceremony.requests import SigningPayload, SigningRefused, SigningRequest
from appliance.chain.address import address_of_script, p2tr_script, script_of_address
from appliance.chain.commitment import burns_digest
from appliance.chain.custody import CustodyKey
from appliance.chain.payout_chain import PayoutChain, PayoutLink
from appliance.chain.transaction import TxOut
from appliance.chain.withdrawal import (
    Payout,
    Spendable,
    WithdrawalPlan,
    build_sweep,
    build_withdrawal,
    spend_exactly,
)
from appliance.config import FeeReservoirConfig, Policy
from appliance.store import Store
from appliance.store.payout import PayoutRecords
from appliance.wire.burns import BurnPolicy, BurnRecord, BurnRefused, VerifiedBurn, verify_burn
from appliance.workflows.withdrawal import (
    CONSOLIDATION,
    DAY,
    WITHDRAWAL,
    Proposal,
    approval_message,
    check_payout,
    payout_request,
    valid_approvers,
    withdrawal_id,
)
from tests.wire.simulator import WireSimulator

Outpoint = tuple[str, int]

NETWORK = "regtest"
CLUSTER = "test-cluster"
GENERATOR = bytes.fromhex("0279BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798")
CUSTODY = CustodyKey(GENERATOR, NETWORK)
CHANGE = CUSTODY.custody.script
FEE_BOUNDS = (1.0, 50.0)  # sat/vB
RATE = 2_000  # msat/vB
PARTIES = {i: Ed25519PrivateKey.generate() for i in (1, 2, 3)}


def address(n: int) -> str:
    """A regtest Taproot address of its own for each n."""
    return address_of_script(p2tr_script(bytes([n]) * 32), NETWORK)


CONSOLIDATION_ADDRESS = address(200)
MAIN = Spendable("ab" * 32, 0, 1_000, CHANGE, CUSTODY.custody.tweaks)  # the chain's main output
GENESIS = ("ab" * 32, 0)


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# -- the fake node -------------------------------------------------------------------------


class FakeNode:
    """`PayoutNode` as `appliance.workflows.payouts.Payouts` implements it, with the chain
    view a dict of outpoint → (kind, spendable) and operator approvals a set of addresses."""

    def __init__(self, store: Store, authority_key: bytes) -> None:
        self.records = PayoutRecords(store)
        self.burn_policy = BurnPolicy(network=NETWORK, authority_key=authority_key)
        self.policy = Policy()
        self.fee_bounds = FEE_BOUNDS
        self.fee_reservoir = FeeReservoirConfig(
            consolidation_threshold=3, min_fee_amount=1000, consolidation_address=None
        )
        self.identity_keys = {i: public(k) for i, k in PARTIES.items()}
        self.view: dict[Outpoint, tuple[str, Spendable]] = {}
        self.approved_destinations: set[str] = set()
        self.chain = PayoutChain(GENESIS, (), MAIN)

    def payout_chain(self) -> PayoutChain:
        return self.chain

    def hold(self, kind: str, *spendables: Spendable) -> None:
        for s in spendables:
            self.view[(s.txid, s.vout)] = (kind, s)

    def take_burns(self, entries: Sequence[dict[str, Any]]) -> list[VerifiedBurn]:
        verified = []
        for entry in entries:
            try:
                burn = verify_burn(entry, self.burn_policy, lambda _: False)
            except BurnRefused as refusal:
                raise SigningRefused(str(refusal)) from refusal
            record = burn.record
            known = self.records.burn(record.burn_id)
            if known is not None and BurnRecord.from_json(known.entry["record"]) != record:
                raise SigningRefused(f"burn {record.burn_id} differs from the one held")
            if known is None:
                with self.records.store.transaction():
                    self.records.queue(record.burn_id, entry, burn.script, record.amount_sats)
            verified.append(burn)
        return verified

    def own_spendables(self, inputs: Sequence[Outpoint], kinds: Sequence[str]) -> list[Spendable]:
        found = []
        for outpoint in inputs:
            kind, spendable = self.view.get(outpoint, (None, None))
            if spendable is None or kind not in kinds:
                raise SigningRefused(
                    f"input {outpoint[0]}:{outpoint[1]} is not an unspent "
                    f"{'/'.join(kinds)} output in this node's view"
                )
            found.append(spendable)
        return found

    def change_script(self) -> bytes:
        return CHANGE

    def destination_script(self, destination: str, forced: bool) -> bytes:
        script = script_of_address(destination, NETWORK)
        if destination in (self.fee_reservoir.consolidation_address, *self.approved_destinations):
            return script
        raise SigningRefused(
            f"destination {destination} is neither the configured "
            "consolidation address nor approved by this node's operator"
        )

    def approvers(self, record: BurnRecord, carried: Sequence[tuple[int, bytes]]) -> set[int]:
        good = valid_approvers(self.identity_keys, CLUSTER, record, carried)
        for approver, signature in carried:
            if approver in good:
                self.records.add_approval(record.burn_id, approver, signature)
        held = list(self.records.approvals(record.burn_id).items())
        return valid_approvers(self.identity_keys, CLUSTER, record, held)


@pytest.fixture
def wire() -> WireSimulator:
    return WireSimulator()  # its burn authority only; the HTTP server is never started


@pytest.fixture
def node(tmp_path, wire: WireSimulator) -> Iterator[FakeNode]:
    store = Store(tmp_path / "state.db")
    yield FakeNode(store, wire.authority_key)
    store.close()


# -- building proposals as the coordinator does ----------------------------------------------

KIND_OUTPUT = {
    "custody": CUSTODY.custody,
    "deposit": CUSTODY.deposit("wire:alice"),
    "reservoir": CUSTODY.reservoir,
}


def utxo(kind: str, amount: int, label: str) -> Spendable:
    output = KIND_OUTPUT[kind]
    txid = hashlib.sha256(label.encode()).hexdigest()
    return Spendable(txid, len(label) % 3, amount, output.script, output.tweaks)


def burn_id(entry: dict[str, Any]) -> str:
    return str(entry["record"]["burn_id"])


def payout_of(entry: dict[str, Any]) -> Payout:
    record = BurnRecord.from_json(entry["record"])
    return Payout(
        record.burn_id, script_of_address(record.destination, NETWORK), record.amount_sats
    )


def approval(
    entry: dict[str, Any], party: int, key: Ed25519PrivateKey | None = None
) -> tuple[str, int, bytes]:
    """Party `party`'s approval of a burn, signed by `key` (by default the party's own)."""
    message = approval_message(CLUSTER, BurnRecord.from_json(entry["record"]))
    return (burn_id(entry), party, (key or PARTIES[party]).sign(message))


def outpoints(plan: WithdrawalPlan) -> tuple[Outpoint, ...]:
    return tuple(sorted((s.txid, s.vout) for s in plan.spent))


def withdrawal_of(
    entries: Sequence[dict[str, Any]],
    plan: WithdrawalPlan,
    msat: int,
    approvals: Sequence[tuple[str, int, bytes]] = (),
    revision: int = 0,
) -> Proposal:
    ordered = tuple(sorted(entries, key=burn_id))
    inputs = tuple((s.txid, s.vout) for s in plan.spent)  # the main output first
    return Proposal(
        withdrawal_id(WITHDRAWAL, [burn_id(e) for e in ordered], inputs, None),
        WITHDRAWAL,
        revision,
        ordered,
        inputs,
        None,
        False,
        msat,
        plan.transaction.serialize(),
        tuple(sorted(approvals)),
    )


def propose(
    entries: Sequence[dict[str, Any]],
    available: Sequence[Spendable],
    msat: int = RATE,
    approvals: Sequence[tuple[str, int, bytes]] = (),
    main: Spendable = MAIN,
) -> tuple[Proposal, WithdrawalPlan]:
    """A withdrawal of `entries` as `Payouts._propose_withdrawal` builds it."""
    payouts = [payout_of(e) for e in entries]
    plan = build_withdrawal(payouts, main, available, CHANGE, msat / 1000)
    return withdrawal_of(entries, plan, msat, approvals), plan


def replacement(
    proposal: Proposal, plan: WithdrawalPlan, msat: int
) -> tuple[Proposal, WithdrawalPlan]:
    """The next revision of a withdrawal at `msat`, as `Payouts._bump` builds it."""
    payouts = [payout_of(e) for e in proposal.burns]
    bumped = spend_exactly(payouts, plan.spent[0], plan.spent[1:], CHANGE, msat / 1000)
    revised = dataclasses.replace(
        proposal,
        revision=proposal.revision + 1,
        fee_rate_msat_vb=msat,
        transaction=bumped.transaction.serialize(),
    )
    return revised, bumped


def sweep(
    available: Sequence[Spendable], destination: str, msat: int = RATE, forced: bool = False
) -> tuple[Proposal, WithdrawalPlan]:
    """A consolidation as `Payouts.consolidate` builds it."""
    plan = build_sweep(available, script_of_address(destination, NETWORK), msat / 1000)
    inputs = outpoints(plan)
    proposal = Proposal(
        withdrawal_id(CONSOLIDATION, [], inputs, destination),
        CONSOLIDATION,
        0,
        (),
        inputs,
        destination,
        forced,
        msat,
        plan.transaction.serialize(),
        (),
    )
    return proposal, plan


def check(node: FakeNode, proposal: Proposal, plan: WithdrawalPlan) -> None:
    check_payout(node, payout_request(proposal, plan))


def refused(node: FakeNode, proposal: Proposal, plan: WithdrawalPlan, reason: str) -> None:
    with pytest.raises(SigningRefused, match=reason):
        check(node, proposal, plan)
    assert node.records.withdrawal(proposal.withdrawal_id) is None


def held(node: FakeNode) -> list[Spendable]:
    """Everything in the node's view, as a coordinator sharing that view would offer it."""
    return [spendable for _, spendable in node.view.values()]


def burn_state(node: FakeNode, entry: dict[str, Any]) -> str | None:
    row = node.records.burn(burn_id(entry))
    return None if row is None else row.state


# -- a valid withdrawal --------------------------------------------------------------------


def test_valid_withdrawal_binds_and_is_accepted_again(node: FakeNode, wire) -> None:
    entries = [wire.burn(address(1), 50_000), wire.burn(address(2), 70_000)]
    node.hold("custody", utxo("custody", 100_000, "a"))
    node.hold("deposit", utxo("deposit", 60_000, "b"))
    proposal, plan = propose(entries, held(node))
    request = payout_request(proposal, plan)

    check_payout(node, request)

    row = node.records.withdrawal(proposal.withdrawal_id)
    assert row is not None
    assert (row.kind, row.state, row.amount) == (WITHDRAWAL, "proposed", 120_000)
    assert row.inputs == proposal.inputs
    assert [burn_state(node, e) for e in entries] == ["bound", "bound"]
    assert node.records.burn(burn_id(entries[0])).withdrawal == proposal.withdrawal_id
    assert node.records.latest(proposal.withdrawal_id).txid == plan.transaction.txid_hex

    # The same request again, as it arrives over the wire: accepted, nothing new recorded.
    check_payout(node, SigningRequest.from_json(request.to_json()))
    assert len(node.records.revisions(proposal.withdrawal_id)) == 1


# -- the transaction and what is signed -----------------------------------------------------


def _pay_less(tx):
    change, commitment, payout, *rest = tx.outputs
    return (change, commitment, TxOut(payout.amount - 1_000, payout.script_pubkey), *rest)


def _pay_elsewhere(tx):
    change, commitment, payout, *rest = tx.outputs
    return (change, commitment, TxOut(payout.amount, p2tr_script(bytes([99]) * 32)), *rest)


def _keep_the_change(tx):
    change, *rest = tx.outputs
    return (TxOut(change.amount, p2tr_script(bytes([99]) * 32)), *rest)


def _commit_to_nothing(tx):
    change, _commitment, *rest = tx.outputs
    return (change, TxOut(0, b"\x6a\x24wmpc" + bytes(32)), *rest)


@pytest.mark.parametrize(
    "tamper",
    [_pay_less, _pay_elsewhere, _keep_the_change, _commit_to_nothing],
    ids=["amount", "destination", "change", "commitment"],
)
def test_tampered_transaction_is_refused(node: FakeNode, wire, tamper) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node))
    tx = dataclasses.replace(plan.transaction, outputs=tamper(plan.transaction))
    # A consistent liar: the payloads are the signature hashes of the tampered transaction.
    forged = dataclasses.replace(plan, transaction=tx)
    proposal = dataclasses.replace(proposal, transaction=tx.serialize())

    refused(node, proposal, forged, "differs from the one this node builds")
    assert burn_state(node, entry) == "queued"


def _other_message(payload: SigningPayload) -> SigningPayload:
    return dataclasses.replace(payload, message=hashlib.sha256(payload.message).digest())


def _untweaked(payload: SigningPayload) -> SigningPayload:
    return dataclasses.replace(payload, tweaks=())


@pytest.mark.parametrize("alter", [_other_message, _untweaked], ids=["sighash", "tweaks"])
def test_altered_payloads_are_refused(node: FakeNode, wire, alter) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node))
    request = payout_request(proposal, plan)
    altered = dataclasses.replace(request, payloads=tuple(alter(p) for p in request.payloads))

    with pytest.raises(SigningRefused, match="payloads differ"):
        check_payout(node, altered)
    assert node.records.withdrawal(proposal.withdrawal_id) is None
    assert burn_state(node, entry) == "queued"


# -- burns and inputs ----------------------------------------------------------------------


def test_burn_with_bad_authority_signature_is_refused(node: FakeNode, wire) -> None:
    good = wire.burn(address(1), 50_000)
    forged = wire.burn(address(2), 40_000)
    forged["signature"] = wire.sign(forged["record"], key=Ed25519PrivateKey.generate())
    node.hold("custody", utxo("custody", 200_000, "a"))
    proposal, plan = propose([good, forged], held(node))

    refused(node, proposal, plan, rf"burn {burn_id(forged)} refused \(bad-signature\)")
    assert burn_state(node, forged) is None
    assert burn_state(node, good) in (None, "queued")


def test_input_outside_the_nodes_view_is_refused(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    held, unknown = utxo("custody", 30_000, "a"), utxo("custody", 40_000, "b")
    node.hold("custody", held)
    proposal, plan = propose([entry], [held, unknown])
    assert len(proposal.inputs) == 3  # the main output, then both

    refused(node, proposal, plan, f"input {unknown.txid}:{unknown.vout} is not an unspent")


def test_reservoir_output_cannot_pay_a_burn(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    reservoir = utxo("reservoir", 100_000, "a")
    node.hold("reservoir", reservoir)
    proposal, plan = propose([entry], [reservoir])

    refused(node, proposal, plan, "not an unspent custody/deposit output")


def test_inputs_beyond_what_the_payouts_need_are_refused(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    big, extra = utxo("custody", 100_000, "a"), utxo("custody", 20_000, "b")
    node.hold("custody", big, extra)
    _, needed = propose([entry], [big])
    plan = spend_exactly([payout_of(entry)], MAIN, [big, extra], CHANGE, RATE / 1000)
    proposal = withdrawal_of([entry], plan, RATE)
    assert len(needed.spent) == 2  # the main output and one more
    assert len(proposal.inputs) == 3

    refused(node, proposal, plan, "spends more inputs than its payouts need")


# -- fee rate and caps ---------------------------------------------------------------------


@pytest.mark.parametrize("msat", [50_001, 999], ids=["above-ceiling", "below-floor"])
def test_fee_rate_outside_the_nodes_bounds_is_refused(node: FakeNode, wire, msat) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 10_000_000, "a"))
    proposal, plan = propose([entry], held(node), msat=msat)

    refused(node, proposal, plan, f"fee rate {msat / 1000} sat/vB is outside")


def test_withdrawal_above_the_per_withdrawal_cap_is_refused(node: FakeNode, wire) -> None:
    node.policy = dataclasses.replace(node.policy, max_withdrawal_sats=1_000_000)
    entry = wire.burn(address(1), 1_000_001)
    node.hold("custody", utxo("custody", 2_000_000, "a"))
    proposal, plan = propose([entry], held(node))

    refused(node, proposal, plan, "moves 1000001 sat, above the per-withdrawal cap of 1000000")


def test_more_burns_than_a_batch_are_refused(node: FakeNode, wire) -> None:
    node.policy = dataclasses.replace(node.policy, max_batch=1)
    entries = [wire.burn(address(1), 50_000), wire.burn(address(2), 50_000)]
    node.hold("custody", utxo("custody", 200_000, "a"))
    proposal, plan = propose(entries, held(node))

    refused(node, proposal, plan, "a withdrawal pays 1 to 1 burns")


def link(txid: str, burns: Sequence[str], paid_out: int, seen_at: float) -> PayoutLink:
    return PayoutLink(txid, 101, seen_at, burns_digest(burns), paid_out, tuple(sorted(burns)))


def test_rolling_daily_outflow_cap_counts_the_chains_links(node: FakeNode, wire) -> None:
    node.policy = dataclasses.replace(node.policy, daily_outflow_sats=1_500_000)
    first, second = wire.burn(address(1), 1_000_000), wire.burn(address(2), 600_000)
    a, b = utxo("custody", 2_000_000, "a"), utxo("custody", 2_000_000, "b")
    node.hold("custody", a, b)

    check(node, *propose([first], [a]))
    # Agreed, not on the chain: a withdrawal that may never confirm moves nothing yet, and a
    # sibling of it (spending the same main output) is within the cap.
    check(node, *propose([second], [b]))
    # Once the first is a link of the chain, seen within 24 hours, it counts.
    now = time.time()
    node.chain = PayoutChain(GENESIS, (link("cc" * 32, [burn_id(first)], 1_000_000, now),), MAIN)
    third = wire.burn(address(3), 600_000)
    proposal, plan = propose([third], [b])
    refused(node, proposal, plan, "last 24 hours' outflow to 1600000 sat, above the cap")
    assert burn_state(node, third) == "queued"
    # A link seen more than 24 hours ago no longer counts.
    old = link("cc" * 32, [burn_id(first)], 1_000_000, now - DAY - 60)
    node.chain = PayoutChain(GENESIS, (old,), MAIN)
    check(node, proposal, plan)


# -- approvals of large burns --------------------------------------------------------------


def _large_burn_node(node: FakeNode, wire) -> tuple[dict[str, Any], Spendable]:
    node.policy = dataclasses.replace(node.policy, approval_above_sats=1_000_000)
    assert node.policy.approvals_required == 2
    node.hold("custody", utxo("custody", 5_000_000, "a"))
    return wire.burn(address(1), 2_000_000), held(node)[0]


def test_large_burn_without_approvals_is_refused(node: FakeNode, wire) -> None:
    entry, coin = _large_burn_node(node, wire)
    proposal, plan = propose([entry], [coin])

    refused(node, proposal, plan, rf"burn {burn_id(entry)} of 2000000 sat needs .* has 0")


def test_approvals_by_the_wrong_key_are_not_counted(node: FakeNode, wire) -> None:
    entry, coin = _large_burn_node(node, wire)
    stranger = Ed25519PrivateKey.generate()
    approvals = [
        approval(entry, 1),
        approval(entry, 2, key=PARTIES[3]),  # party 3's key signing as party 2
        approval(entry, 3, key=stranger),
        (burn_id(entry), 4, stranger.sign(b"anything")),  # no such party
    ]
    proposal, plan = propose([entry], [coin], approvals=approvals)

    refused(node, proposal, plan, "needs approval on 2 nodes, has 1")
    assert set(node.records.approvals(burn_id(entry))) == {1}


def test_approval_of_another_record_is_not_counted(node: FakeNode, wire) -> None:
    entry, coin = _large_burn_node(node, wire)
    other = wire.burn(address(1), 2_000_000, burn_id=burn_id(entry) + "-other")
    forged = (burn_id(entry), 2, approval(other, 2)[2])
    proposal, plan = propose([entry], [coin], approvals=[approval(entry, 1), forged])

    refused(node, proposal, plan, "has 1")


def test_large_burn_with_two_carried_approvals_is_accepted(node: FakeNode, wire) -> None:
    entry, coin = _large_burn_node(node, wire)
    proposal, plan = propose([entry], [coin], approvals=[approval(entry, 1), approval(entry, 3)])

    check(node, proposal, plan)
    assert burn_state(node, entry) == "bound"
    assert set(node.records.approvals(burn_id(entry))) == {1, 3}


def test_approval_received_earlier_counts_with_a_carried_one(node: FakeNode, wire) -> None:
    entry, coin = _large_burn_node(node, wire)
    _, party, signature = approval(entry, 2)
    node.records.add_approval(burn_id(entry), party, signature)
    proposal, plan = propose([entry], [coin], approvals=[approval(entry, 1)])

    check(node, proposal, plan)
    assert burn_state(node, entry) == "bound"


# -- binding and replacement ---------------------------------------------------------------


def test_withdrawals_before_the_genesis_are_refused(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node))
    node.chain = PayoutChain(None, (), None)

    refused(node, proposal, plan, "there is no main custody output yet")


def test_a_withdrawal_must_spend_the_main_output_first(node: FakeNode, wire) -> None:
    # The double payment found in review: a coordinator shows one honest node a withdrawal
    # of a burn from one output and another node one from another output. Both would be
    # valid on Bitcoin; a node signs only one that spends the main output first.
    entry = wire.burn(address(1), 50_000)
    a, b = utxo("custody", 100_000, "a"), utxo("deposit", 100_000, "b")
    node.hold("custody", a)
    node.hold("deposit", b)
    without_main = build_withdrawal([payout_of(entry)], a, [b], CHANGE, RATE / 1000)
    proposal = withdrawal_of([entry], without_main, RATE)
    refused(node, proposal, without_main, rf"spends {a.txid}:{a.vout} first, not the main")

    stale = Spendable("cd" * 32, 0, 1_000, CHANGE, CUSTODY.custody.tweaks)  # spent already
    node.hold("custody", stale)
    proposal, plan = propose([entry], [a], main=stale)
    refused(node, proposal, plan, "not the main custody output .* at the end of the payout chain")


def test_a_burn_a_link_paid_is_refused(node: FakeNode, wire) -> None:
    entry, other = wire.burn(address(1), 50_000), wire.burn(address(2), 50_000)
    node.hold("custody", utxo("custody", 200_000, "a"))
    node.chain = PayoutChain(
        GENESIS, (link("cc" * 32, [burn_id(entry), "x"], 50_000, time.time()),), MAIN
    )
    proposal, plan = propose([entry, other], held(node))

    refused(node, proposal, plan, f"burn {burn_id(entry)} is paid by {'cc' * 32} already")
    check(node, *propose([other], held(node)))


def test_unknown_or_false_burn_ids_of_a_link_stop_withdrawals(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node))
    unknown = dataclasses.replace(link("cc" * 32, ["x"], 1, time.time()), burns=None)
    node.chain = PayoutChain(GENESIS, (unknown,), MAIN)
    refused(node, proposal, plan, f"lacks the burn ids of payout transaction.* {'cc' * 32}")

    node.chain = PayoutChain(GENESIS, (), None, broken=f"{'cc' * 32} spends the main output")
    refused(node, proposal, plan, "the payout chain cannot be followed")


def test_two_withdrawals_of_one_burn_are_signed_only_as_siblings(node: FakeNode, wire) -> None:
    # A burn (and an input) in a second withdrawal is no reason to refuse it: both spend
    # the main output, so Bitcoin confirms at most one of them (and a withdrawal that lost
    # leaves its burns payable again). Records of the node play no part in that.
    entry = wire.burn(address(1), 50_000)
    a, b = utxo("custody", 100_000, "a"), utxo("deposit", 100_000, "b")
    node.hold("custody", a)
    node.hold("deposit", b)
    first, first_plan = propose([entry], [a])
    second, second_plan = propose([entry], [b])
    check(node, first, first_plan)
    check(node, second, second_plan)
    assert second.withdrawal_id != first.withdrawal_id
    assert first.inputs[0] == second.inputs[0] == GENESIS
    firsts = {tx.transaction.inputs[0].prevout for tx in (first_plan, second_plan)}
    assert len(firsts) == 1  # they conflict on Bitcoin
    assert node.records.paid_burns(first_plan.transaction.txid_hex) == [burn_id(entry)]
    assert node.records.paid_burns(second_plan.transaction.txid_hex) == [burn_id(entry)]


def test_replacement_must_raise_the_fee_rate(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node), msat=RATE)
    check(node, proposal, plan)

    for msat in (RATE, RATE - 500):
        revised, bumped = replacement(proposal, plan, msat)
        with pytest.raises(SigningRefused, match="must follow revision 0 at a higher fee rate"):
            check(node, revised, bumped)
    assert len(node.records.revisions(proposal.withdrawal_id)) == 1

    revised, bumped = replacement(proposal, plan, RATE + 3_000)
    check(node, revised, bumped)
    assert [r.txid for r in node.records.revisions(proposal.withdrawal_id)] == [
        plan.transaction.txid_hex,
        bumped.transaction.txid_hex,
    ]
    assert bumped.fee > plan.fee
    assert {(i.prevout.txid_hex, i.prevout.index) for i in bumped.transaction.inputs} == set(
        proposal.inputs
    )


def test_a_replacement_that_is_the_same_transaction_is_refused(node: FakeNode, wire) -> None:
    # A rate a thousandth of a sat/vB higher rounds to the same fee: the same transaction,
    # which would replace nothing.
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 60_000, "a"))
    proposal, plan = propose([entry], held(node), msat=2_001)
    check(node, proposal, plan)
    revised, bumped = replacement(proposal, plan, 2_002)
    assert bumped.transaction.txid_hex == plan.transaction.txid_hex
    with pytest.raises(SigningRefused, match="the replacement is the same transaction"):
        check(node, revised, bumped)
    assert len(node.records.revisions(proposal.withdrawal_id)) == 1


def test_bound_revision_cannot_change_its_transaction(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    coin = utxo("custody", 100_000, "a")
    node.hold("custody", coin)
    proposal, plan = propose([entry], [coin], msat=RATE)
    check(node, proposal, plan)
    again, other = propose([entry], [coin], msat=RATE + 1_000)
    assert again.withdrawal_id == proposal.withdrawal_id

    with pytest.raises(SigningRefused, match=r"revision 0 of .* was bound to transaction"):
        check(node, again, other)
    assert len(node.records.revisions(proposal.withdrawal_id)) == 1


def test_revision_skipping_ahead_is_refused(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node))
    check(node, proposal, plan)
    revised, bumped = replacement(proposal, plan, RATE + 1_000)
    revised = dataclasses.replace(revised, revision=2)

    with pytest.raises(SigningRefused, match=r"revision 2 .* must follow revision 0"):
        check(node, revised, bumped)


def test_replacement_of_an_unknown_withdrawal_is_refused(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node))
    revised, bumped = replacement(proposal, plan, RATE + 1_000)

    refused(node, revised, bumped, r"never agreed to .*; revision 1 cannot replace it")
    assert burn_state(node, entry) is None


# -- the proposal's form -------------------------------------------------------------------


def test_request_kind_must_be_the_proposals(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    request = payout_request(*propose([entry], held(node)))

    with pytest.raises(SigningRefused, match="request kind and proposal kind differ"):
        check_payout(node, dataclasses.replace(request, kind=CONSOLIDATION))
    with pytest.raises(SigningRefused, match=r"malformed proposal: detail\.kind"):
        check_payout(node, dataclasses.replace(request, detail={**request.detail, "kind": "x"}))


def test_withdrawal_id_must_name_its_content(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node))
    other = withdrawal_id(WITHDRAWAL, ["burn-other"], proposal.inputs, None)
    renamed = dataclasses.replace(proposal, withdrawal_id=other)

    refused(node, renamed, plan, f"withdrawal id {other} does not name its content")


def test_unordered_burns_are_refused(node: FakeNode, wire) -> None:
    entries = [wire.burn(address(1), 50_000), wire.burn(address(2), 50_000)]
    node.hold("custody", utxo("custody", 200_000, "a"))
    proposal, plan = propose(entries, held(node))
    # The id sorts burn ids itself, so it still names the content: only the order is wrong.
    unordered = dataclasses.replace(proposal, burns=proposal.burns[::-1])

    refused(node, unordered, plan, "burns or inputs repeat, or inputs are not in order")


def test_repeated_inputs_are_refused(node: FakeNode, wire) -> None:
    entry = wire.burn(address(1), 50_000)
    node.hold("custody", utxo("custody", 100_000, "a"))
    proposal, plan = propose([entry], held(node))
    inputs = proposal.inputs * 2
    repeated = dataclasses.replace(
        proposal,
        inputs=inputs,
        withdrawal_id=withdrawal_id(WITHDRAWAL, [burn_id(entry)], inputs, None),
    )

    refused(node, repeated, plan, "burns or inputs repeat")


# -- consolidation of the fee reservoir ------------------------------------------------------


def _reservoir(node: FakeNode, amounts: Sequence[int]) -> list[Spendable]:
    coins = [utxo("reservoir", amount, f"r{i}") for i, amount in enumerate(amounts)]
    node.hold("reservoir", *coins)
    return coins


def test_consolidation_to_the_configured_address_is_accepted(node: FakeNode) -> None:
    node.fee_reservoir = dataclasses.replace(
        node.fee_reservoir, consolidation_address=CONSOLIDATION_ADDRESS
    )
    proposal, plan = sweep(_reservoir(node, [5_000, 6_000, 7_000]), CONSOLIDATION_ADDRESS)

    check(node, proposal, plan)
    row = node.records.withdrawal(proposal.withdrawal_id)
    assert row is not None
    assert (row.kind, row.burns, row.inputs) == (CONSOLIDATION, (), proposal.inputs)


def test_consolidation_below_the_threshold_needs_forcing(node: FakeNode) -> None:
    node.fee_reservoir = dataclasses.replace(
        node.fee_reservoir, consolidation_address=CONSOLIDATION_ADDRESS
    )
    coins = _reservoir(node, [5_000, 6_000])

    proposal, plan = sweep(coins, CONSOLIDATION_ADDRESS)
    refused(node, proposal, plan, "2 reservoir outputs, the threshold is 3")

    forced, plan = sweep(coins, CONSOLIDATION_ADDRESS, forced=True)
    check(node, forced, plan)
    assert node.records.withdrawal(forced.withdrawal_id) is not None


def test_consolidation_of_a_small_output_is_refused(node: FakeNode) -> None:
    node.fee_reservoir = dataclasses.replace(
        node.fee_reservoir, consolidation_address=CONSOLIDATION_ADDRESS
    )
    coins = _reservoir(node, [5_000, 6_000, 999])
    proposal, plan = sweep(coins, CONSOLIDATION_ADDRESS)

    refused(node, proposal, plan, rf"reservoir output {coins[2].txid}:.* less than 1000 sat")


def test_consolidation_to_an_unapproved_destination_is_refused(node: FakeNode) -> None:
    node.fee_reservoir = dataclasses.replace(
        node.fee_reservoir, consolidation_address=CONSOLIDATION_ADDRESS
    )
    coins = _reservoir(node, [5_000, 6_000, 7_000])
    elsewhere = address(201)
    proposal, plan = sweep(coins, elsewhere)

    refused(node, proposal, plan, f"destination {elsewhere} is neither the configured")

    node.approved_destinations.add(elsewhere)
    check(node, proposal, plan)


def test_consolidation_spends_reservoir_outputs_only(node: FakeNode) -> None:
    node.fee_reservoir = dataclasses.replace(
        node.fee_reservoir, consolidation_address=CONSOLIDATION_ADDRESS
    )
    coins = [utxo("custody", 5_000 + i, f"c{i}") for i in range(3)]
    node.hold("custody", *coins)
    proposal, plan = sweep(coins, CONSOLIDATION_ADDRESS)

    refused(node, proposal, plan, "not an unspent reservoir output")


def test_consolidation_paying_a_burn_is_refused(node: FakeNode, wire) -> None:
    node.fee_reservoir = dataclasses.replace(
        node.fee_reservoir, consolidation_address=CONSOLIDATION_ADDRESS
    )
    proposal, plan = sweep(_reservoir(node, [5_000, 6_000, 7_000]), CONSOLIDATION_ADDRESS)
    entry = wire.burn(address(1), 50_000)
    ids = [burn_id(entry)]
    with_burn = dataclasses.replace(
        proposal,
        burns=(entry,),
        withdrawal_id=withdrawal_id(CONSOLIDATION, ids, proposal.inputs, CONSOLIDATION_ADDRESS),
    )

    refused(node, with_burn, plan, "a consolidation pays no burn")
