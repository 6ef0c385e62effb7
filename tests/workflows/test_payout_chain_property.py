"""No burn is paid twice, whatever a malicious coordinator proposes to whom: a property of
the payout policy and the payout chain, over random schedules (hypothesis).

A model of Bitcoin (outputs, spends, blocks) stands for the chain; each honest node has its
own store, applies the real `check_payout` with the real `follow` of the payout chain to
its own view of the model, which may lag the tip. The adversary controls t-1 of n nodes
(n up to 7): it proposes any withdrawal (spending the main output or not, an old main
output, any extra inputs, any burns) to any subset of honest nodes, replays, gives honest
nodes false burn ids for links, and mines any transaction it obtained enough signatures
for (t-1 of its own and one honest). Honest nodes sync their views and share their records
at random. After every block: each burn is paid by at most one confirmed transaction, and
every confirmed transaction pays only verified burns and its change to the custody key.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from appliance.ceremony.requests import SigningRefused
from appliance.chain.commitment import commitment_of
from appliance.chain.payout_chain import PayoutChain, SpendFacts, follow
from appliance.chain.transaction import Transaction
from appliance.chain.withdrawal import Spendable, WithdrawalError, build_withdrawal, spend_exactly
from appliance.store import Store
from appliance.workflows.withdrawal import check_payout, payout_request
from tests.wire.simulator import WireSimulator

from .test_withdrawal_policy import (
    CHANGE,
    CUSTODY,
    FakeNode,
    Outpoint,
    address,
    burn_id,
    payout_of,
    withdrawal_of,
)

DEPOSIT = CUSTODY.deposit("wire:alice")
# /dev/shm keeps the stores' fsyncs cheap; any directory would do.
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


@dataclasses.dataclass
class Coin:
    spendable: Spendable
    kind: str  # "custody" or "deposit"
    height: int


class Bitcoin:
    """The model chain: every output and spend with its block height."""

    def __init__(self) -> None:
        self.height = 1
        self.coins: dict[Outpoint, Coin] = {}
        self.spent: dict[Outpoint, tuple[str, int]] = {}
        self.confirmed: dict[str, Transaction] = {}
        self.paid_out: dict[str, int] = {}

    def add(self, spendable: Spendable, kind: str) -> None:
        self.coins[(spendable.txid, spendable.vout)] = Coin(spendable, kind, self.height)

    def valid(self, tx: Transaction) -> bool:
        ins = [(i.prevout.txid_hex, i.prevout.index) for i in tx.inputs]
        return all(o in self.coins and o not in self.spent for o in ins)

    def mine(self, tx: Transaction) -> None:
        self.height += 1
        txid = tx.txid_hex
        for txin in tx.inputs:
            self.spent[(txin.prevout.txid_hex, txin.prevout.index)] = (txid, self.height)
        for vout, out in enumerate(tx.outputs):
            if out.script_pubkey == CHANGE:
                spendable = Spendable(txid, vout, out.amount, CHANGE, CUSTODY.custody.tweaks)
                self.add(spendable, "custody")
        self.confirmed[txid] = tx
        self.paid_out[txid] = sum(o.amount for o in tx.outputs[1:])

    def main_output(self, height: int) -> Spendable | None:
        return follow(_Facts(self, height, lambda _txid: None)).main


class _Facts:
    """`PayoutFacts` of the model as a node that has seen blocks up to `height` reads it."""

    def __init__(self, bitcoin: Bitcoin, height: int, burns_of: Any) -> None:
        self.bitcoin, self.height, self._burns_of = bitcoin, height, burns_of

    def genesis(self) -> Outpoint | None:
        custody = [
            (c.height, o)
            for o, c in self.bitcoin.coins.items()
            if c.kind == "custody" and c.height <= self.height
        ]
        return min(custody)[1] if custody else None

    def spender(self, outpoint: Outpoint) -> SpendFacts | None:
        spent = self.bitcoin.spent.get(outpoint)
        if spent is None or spent[1] > self.height:
            return None
        tx = self.bitcoin.confirmed[spent[0]]
        return SpendFacts(
            spent[0], spent[1], time.time(), commitment_of(tx), self.bitcoin.paid_out[spent[0]]
        )

    def custody_output(self, outpoint: Outpoint) -> Spendable | None:
        coin = self.bitcoin.coins.get(outpoint)
        if coin is None or coin.kind != "custody" or coin.height > self.height:
            return None
        return coin.spendable

    def burns_of(self, txid: str) -> Sequence[str] | None:
        result: Sequence[str] | None = self._burns_of(txid)
        return result


class HonestNode(FakeNode):
    """An honest node: the real policy on its own view (blocks up to `height`) and records."""

    def __init__(self, store: Store, authority_key: bytes, bitcoin: Bitcoin) -> None:
        super().__init__(store, authority_key)
        self.bitcoin = bitcoin
        self.height = bitcoin.height

    def payout_chain(self) -> PayoutChain:
        return follow(_Facts(self.bitcoin, self.height, self.records.paid_burns))

    def own_spendables(self, inputs: Sequence[Outpoint], kinds: Sequence[str]) -> list[Spendable]:
        found = []
        for outpoint in inputs:
            coin = self.bitcoin.coins.get(outpoint)
            spent = self.bitcoin.spent.get(outpoint)
            if (
                coin is None
                or coin.height > self.height
                or coin.kind not in kinds
                or (spent is not None and spent[1] <= self.height)
            ):
                raise SigningRefused(f"input {outpoint[0]}:{outpoint[1]} is not unspent here")
            found.append(coin.spendable)
        return found


def _deposit(n: int, amount: int) -> Spendable:
    return Spendable(f"{n:02x}" * 32, 1, amount, DEPOSIT.script, DEPOSIT.tweaks)


def paid_burns(bitcoin: Bitcoin, verified: dict[bytes, tuple[str, int]]) -> set[str]:
    return {
        verified[out.script_pubkey][0]
        for tx in bitcoin.confirmed.values()
        for out in tx.outputs[2:]
        if out.script_pubkey in verified
    }


def _assert_paid_at_most_once(bitcoin: Bitcoin, verified: dict[bytes, tuple[str, int]]) -> None:
    """Each burn of the test pays its own address: a confirmed output to that address with
    the burn's amount is a payment of it."""
    paid: dict[str, str] = {}
    for txid, tx in bitcoin.confirmed.items():
        assert tx.outputs[0].script_pubkey == CHANGE, f"{txid} keeps no main output"
        for out in tx.outputs[2:]:
            assert out.script_pubkey in verified, f"{txid} pays what no verified burn asked for"
            burn, amount = verified[out.script_pubkey]
            assert out.amount == amount, f"{txid} pays {out.amount}, burn {burn} is {amount}"
            assert burn not in paid, f"burn {burn} is paid by {paid[burn]} and by {txid}"
            paid[burn] = txid


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_burn_is_paid_twice_whatever_the_coordinators_do(data: st.DataObject) -> None:
    parties = data.draw(st.integers(3, 7), label="n")
    threshold = data.draw(st.integers(2, parties), label="t")
    honest_count = parties - (threshold - 1)  # the adversary holds t-1 nodes
    wire = WireSimulator()
    bitcoin = Bitcoin()
    bitcoin.add(Spendable("ab" * 32, 0, 2_000, CHANGE, CUSTODY.custody.tweaks), "custody")
    for n in range(6):
        bitcoin.add(_deposit(n + 1, 200_000), "deposit")
    entries = [wire.burn(address(10 + i), 50_000 + 1_000 * i) for i in range(8)]
    verified = {payout_of(e).script: (burn_id(e), payout_of(e).amount) for e in entries}
    with tempfile.TemporaryDirectory(dir=SCRATCH) as scratch:
        stores = [Store(Path(scratch) / f"{i}.db") for i in range(honest_count)]
        honest = [HonestNode(s, wire.authority_key, bitcoin) for s in stores]
        signed: list[Transaction] = []
        try:
            for _ in range(data.draw(st.integers(5, 40), label="steps")):
                action = data.draw(
                    st.sampled_from(
                        ["propose"] * 3 + ["mine"] * 2 + ["sync"] * 2 + ["share", "lie"]
                    )
                )
                if action == "propose":
                    tx = _propose(data, bitcoin, honest, entries)
                    if tx is not None:
                        signed.append(tx)
                elif action == "mine" and any(bitcoin.valid(tx) for tx in signed):
                    valid = [tx for tx in signed if bitcoin.valid(tx)]
                    bitcoin.mine(data.draw(st.sampled_from(valid), label="mined"))
                    _assert_paid_at_most_once(bitcoin, verified)
                elif action == "sync":
                    for node in data.draw(st.lists(st.sampled_from(honest), unique_by=id)):
                        lagging = data.draw(st.booleans(), label="stays behind the tip")
                        low = bitcoin.height if not lagging else node.height
                        node.height = data.draw(st.integers(low, bitcoin.height))
                elif action == "share":
                    source, receiver = (data.draw(st.sampled_from(honest)) for _ in range(2))
                    for txid in bitcoin.confirmed:
                        burns = source.records.paid_burns(txid)
                        if burns is not None:
                            receiver.records.record_paid_burns(txid, burns, "peer")
                elif action == "catch up":  # the honest nodes' views and records meet
                    records = {
                        txid: burns
                        for node in honest
                        for txid in bitcoin.confirmed
                        if (burns := node.records.paid_burns(txid)) is not None
                    }
                    for node in honest:
                        node.height = bitcoin.height
                        for txid, burns in records.items():
                            node.records.record_paid_burns(txid, burns, "peer")
                elif action == "lie" and bitcoin.confirmed:
                    receiver = data.draw(st.sampled_from(honest))
                    txid = data.draw(st.sampled_from(sorted(bitcoin.confirmed)))
                    ids = sorted(burn_id(e) for e in entries)
                    lie = data.draw(st.lists(st.sampled_from(ids), unique=True))
                    receiver.records.record_paid_burns(txid, lie, "a lying peer")
            event(f"blocks mined: {min(bitcoin.height - 1, 3)}{'+' * (bitcoin.height > 3)}")
            event(f"burns paid: {len(paid_burns(bitcoin, verified))}")
            siblings = len(signed) - len({tx.inputs[0].prevout for tx in signed})
            event(f"signed transactions sharing a first input: {min(siblings, 2)}")
            target(float(bitcoin.height), label="blocks")
            _assert_paid_at_most_once(bitcoin, verified)
        finally:
            for store in stores:
                store.close()


def _propose(
    data: st.DataObject, bitcoin: Bitcoin, honest: list[HonestNode], entries: list[Any]
) -> Transaction | None:
    """One proposal of the adversary to some honest nodes; the transaction if one of them
    signs it (with the adversary's t-1 shares, that is a threshold)."""
    paid = set(paid_burns(bitcoin, {payout_of(e).script: (burn_id(e), 0) for e in entries}))
    unpaid = [e for e in entries if burn_id(e) not in paid]
    offered = unpaid if unpaid and data.draw(st.booleans(), label="unpaid burns only") else entries
    chosen = data.draw(
        st.lists(st.sampled_from(offered), min_size=1, max_size=3, unique_by=burn_id)
    )
    coins = [c.spendable for o, c in bitcoin.coins.items() if o not in bitcoin.spent]
    if data.draw(st.booleans(), label="spent outputs too"):
        coins = [c.spendable for c in bitcoin.coins.values()]
    tip = bitcoin.main_output(bitcoin.height)
    mains = [m for m in (bitcoin.main_output(n.height) for n in honest) if m is not None]
    choice = data.draw(st.sampled_from(["tip", "a view's", "any"]), label="first input")
    pool = [tip] if choice == "tip" and tip else mains if choice == "a view's" and mains else coins
    first = data.draw(st.sampled_from(pool))
    others = [c for c in coins if (c.txid, c.vout) != (first.txid, first.vout)]
    rate = data.draw(st.sampled_from([1_000, 2_000, 5_000]), label="msat/vB")
    payouts = [payout_of(e) for e in chosen]
    try:
        if data.draw(st.booleans(), label="minimal selection"):
            plan = build_withdrawal(payouts, first, others, CHANGE, rate / 1000)
        else:
            extras = data.draw(st.lists(st.sampled_from(others), unique=True, max_size=3))
            plan = spend_exactly(payouts, first, extras, CHANGE, rate / 1000)
    except WithdrawalError:
        return None
    request = payout_request(withdrawal_of(chosen, plan, rate), plan)
    asked = data.draw(st.lists(st.sampled_from(honest), unique_by=id, min_size=1))
    accepted = False
    for node in asked:
        try:
            check_payout(node, request)
            accepted = True
        except SigningRefused:
            pass
    event(f"proposal signed by an honest node: {accepted}")
    return plan.transaction if accepted else None


def test_an_honest_schedule_pays_every_burn_once(tmp_path) -> None:
    """The model is not vacuous: honest proposals, each on the synced chain, pay all."""
    wire = WireSimulator()
    bitcoin = Bitcoin()
    bitcoin.add(Spendable("ab" * 32, 0, 2_000, CHANGE, CUSTODY.custody.tweaks), "custody")
    bitcoin.add(_deposit(1, 500_000), "deposit")
    entries = [wire.burn(address(10 + i), 50_000) for i in range(3)]
    store = Store(tmp_path / "state.db")
    node = HonestNode(store, wire.authority_key, bitcoin)
    try:
        for entry in entries:
            main = node.payout_chain().main
            assert main is not None
            others = [
                c.spendable
                for o, c in bitcoin.coins.items()
                if o not in bitcoin.spent and o != (main.txid, main.vout)
            ]
            plan = build_withdrawal([payout_of(entry)], main, others, CHANGE, 2.0)
            check_payout(node, payout_request(withdrawal_of([entry], plan, 2_000), plan))
            bitcoin.mine(plan.transaction)
            node.height = bitcoin.height
            next_main = node.payout_chain().main
            assert next_main is not None
            again = build_withdrawal([payout_of(entry)], next_main, others, CHANGE, 2.0)
            request = payout_request(withdrawal_of([entry], again, 2_000), again)
            with pytest.raises(SigningRefused, match="is paid by"):
                check_payout(node, request)
        assert len(node.payout_chain().paid) == 3
    finally:
        store.close()
