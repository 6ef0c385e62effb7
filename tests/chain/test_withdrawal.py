"""Withdrawal building without a node: the shape every withdrawal has (the main custody
output spent first and made again as output 0, the commitment to the burns as output 1),
deterministic coin selection, the limits, replacement with the same inputs, fee rates, and
FROST signatures that verify as BIP340 signatures over the BIP341 sighash of every input."""

from __future__ import annotations

import dataclasses
import math
import random

import coincurve
import pytest

from appliance.chain.commitment import burns_digest, commitment_of, commitment_script
from appliance.chain.custody import CustodyKey
from appliance.chain.fees import bumped_fee_rate
from appliance.chain.withdrawal import (
    MAX_OUTPUTS,
    RBF_SEQUENCE,
    Payout,
    Spendable,
    WithdrawalError,
    build_withdrawal,
    replace_withdrawal,
    spend_exactly,
)
from appliance.frost import SECP256K1_TR, trusted_dealer_keygen
from tests.chain.helpers import CONFIG
from tests.frost.helpers import sign_with


@pytest.fixture(scope="module")
def custody():
    shares, package = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    return shares, CustodyKey(package.group_key, "regtest")


def spendables(key: CustodyKey, amounts: list[int]) -> list[Spendable]:
    rng = random.Random(7)
    out = []
    for i, amount in enumerate(amounts):
        output = key.deposit(f"wire:user{i}") if i % 2 else key.custody
        txid = rng.randbytes(32).hex()
        out.append(Spendable(txid, i % 3, amount, output.script, output.tweaks))
    return out


def main_output(key: CustodyKey, amount: int = 1_000) -> Spendable:
    return Spendable("aa" * 32, 0, amount, key.custody.script, key.custody.tweaks)


def payouts(count: int, amount: int = 10_000) -> list[Payout]:
    script = b"\x00\x14" + bytes(range(20))  # P2WPKH
    return [Payout(f"burn-{i:04d}", script, amount) for i in range(count)]


def test_selection_is_deterministic_and_largest_first(custody) -> None:
    _, key = custody
    main = main_output(key)
    utxos = spendables(key, [5_000, 80_000, 20_000, 60_000, 1_000])
    plan = build_withdrawal(payouts(10), main, utxos, key.custody.script, 2.0)
    shuffled = list(reversed(utxos))
    again = build_withdrawal(list(reversed(payouts(10))), main, shuffled, key.custody.script, 2.0)
    assert plan.transaction.serialize() == again.transaction.serialize()
    assert plan.spent[0] == main
    assert sorted(s.amount for s in plan.spent[1:]) == [60_000, 80_000]  # 100k paid + fee
    assert all(i.sequence == RBF_SEQUENCE for i in plan.transaction.inputs)
    out = plan.transaction.outputs
    assert out[0].script_pubkey == key.custody.script
    assert out[0].amount == plan.change
    assert sum(s.amount for s in plan.spent) == 100_000 + plan.change + plan.fee
    assert plan.fee_rate >= 2.0


def test_a_withdrawal_remakes_the_main_output_and_commits_to_its_burns(custody) -> None:
    _, key = custody
    main = main_output(key, 500_000)
    plan = build_withdrawal(payouts(3), main, [], key.custody.script, 1.0)
    assert [s.outpoint for s in plan.spent] == [main.outpoint]  # the main output alone pays
    change, commitment, *paid = plan.transaction.outputs
    assert (change.script_pubkey, change.amount) == (key.custody.script, plan.change)
    assert commitment.amount == 0
    assert commitment.script_pubkey == commitment_script(["burn-0000", "burn-0001", "burn-0002"])
    assert commitment_of(plan.transaction) == burns_digest(["burn-0002", "burn-0000", "burn-0001"])
    assert [o.amount for o in paid] == [10_000] * 3
    assert burns_digest(["burn-0000"]) != burns_digest(["burn-0001"])
    with pytest.raises(ValueError, match="twice"):
        burns_digest(["b", "b"])


def test_the_main_output_never_becomes_dust(custody) -> None:
    _, key = custody
    (utxo,) = spendables(key, [10_000 + 400])
    with pytest.raises(WithdrawalError, match="keep a main output"):
        build_withdrawal(payouts(1), main_output(key, 0), [utxo], key.custody.script, 1.0)
    plan = build_withdrawal(payouts(1), main_output(key, 1_000), [utxo], key.custody.script, 1.0)
    assert plan.change >= 330
    with pytest.raises(WithdrawalError, match="spent twice"):
        spend_exactly(payouts(1), utxo, [utxo], key.custody.script, 1.0)


def test_refusals_say_why(custody) -> None:
    _, key = custody
    utxos = spendables(key, [50_000])
    cases = {
        "needs payouts": [],
        "dust": [Payout("b", b"\x00\x14" + bytes(20), 293)],
        "twice": [Payout("b", b"\x00\x14" + bytes(20), 1000)] * 2,
        "non-standard": [Payout("b", b"\x6a\x01\x00", 1000)],
        "cannot pay": payouts(6),
        "exceed the limit": payouts(MAX_OUTPUTS + 1, 546),
    }
    for reason, batch in cases.items():
        with pytest.raises(WithdrawalError, match=reason):
            build_withdrawal(batch, main_output(key), utxos, key.custody.script, 1.0)


def test_input_and_size_limits(custody) -> None:
    _, key = custody
    utxos = spendables(key, [600] * 600)  # 500 inputs (the most) hold only 300,000 sat
    with pytest.raises(WithdrawalError, match="in at most 500 inputs"):
        build_withdrawal(payouts(1, 350_000), main_output(key, 600), utxos, key.custody.script, 1)
    # The largest transaction the limits allow (500 inputs, 1000 Taproot outputs) stays
    # well under 100 kvB, and so under the standardness limit of 400,000 WU.
    many = spendables(key, [2_001_000] * 499)
    p2tr = [Payout(f"burn-{i:04d}", key.reservoir.script, 1_000_000) for i in range(1000)]
    plan = build_withdrawal(p2tr, main_output(key, 2_001_000), many, key.custody.script, 1.0)
    assert len(plan.spent) == 500
    assert plan.transaction.vsize < 100_000
    signed = plan.signed([bytes(64)] * 500)
    assert signed.vsize == math.ceil(plan.fee / plan.fee_rate - 1e-9)  # the size paid for


def test_replacement_spends_the_same_inputs_at_a_higher_fee(custody) -> None:
    _, key = custody
    utxos = spendables(key, [70_000, 40_000, 30_000])
    plan = build_withdrawal(payouts(5), main_output(key), utxos, key.custody.script, 3.0)
    rate = bumped_fee_rate(plan.fee_rate, 1.0, CONFIG, 1.0)
    assert rate is not None
    assert rate >= plan.fee_rate * 1.25
    bumped = replace_withdrawal(plan, rate, key.custody.script)
    assert [i.prevout for i in bumped.transaction.inputs] == [
        i.prevout for i in plan.transaction.inputs
    ]
    assert bumped.payouts == plan.payouts
    assert (
        bumped.fee - plan.fee >= bumped.transaction.vsize
    )  # BIP125 rule 4 at an increment of 1 sat/vB
    with pytest.raises(WithdrawalError, match="higher fee rate"):
        replace_withdrawal(plan, plan.fee_rate, key.custody.script)
    with pytest.raises(WithdrawalError, match="cannot pay"):
        replace_withdrawal(plan, 400.0, key.custody.script)


def test_bumped_rate_stops_at_the_ceiling() -> None:
    assert bumped_fee_rate(10.0, 50.0, CONFIG, 1.0) == 50.0
    assert bumped_fee_rate(10.0, 1.0, CONFIG, 1.0) == 12.5
    assert bumped_fee_rate(0.5, 0.5, CONFIG, 1.0) == 1.5
    assert bumped_fee_rate(0.5, 0.5, CONFIG, 0.1) == 0.625  # Bitcoin Core 29's increment
    assert bumped_fee_rate(450.0, 1.0, CONFIG, 1.0) == CONFIG.fee_ceiling_sat_vb
    assert bumped_fee_rate(CONFIG.fee_ceiling_sat_vb, 1.0, CONFIG, 1.0) is None


def test_frost_signatures_verify_per_input(custody) -> None:
    shares, key = custody
    utxos = spendables(key, [30_000, 25_000, 20_000])
    plan = build_withdrawal(payouts(6), main_output(key), utxos, key.custody.script, 1.0)
    sighashes = plan.sighashes()
    signatures = [
        sign_with(shares, [1, 3], digest, spent.tweaks)
        for spent, digest in zip(plan.spent, sighashes, strict=True)
    ]
    tx = plan.signed(signatures)
    for spent, digest, txin in zip(plan.spent, sighashes, tx.inputs, strict=True):
        output_key = coincurve.PublicKeyXOnly(spent.script[2:])
        assert output_key.verify(txin.witness[0], digest)
    with pytest.raises(WithdrawalError):
        plan.signed(signatures[:-1])
    tampered = dataclasses.replace(plan.spent[0], amount=plan.spent[0].amount + 1)
    other = dataclasses.replace(plan, spent=(tampered, *plan.spent[1:]))
    assert other.sighashes()[0] != sighashes[0]  # amounts are committed (BIP341)
