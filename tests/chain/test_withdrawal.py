"""Withdrawal building without a node: deterministic coin selection, change and dust, the
limits, replacement with the same inputs, fee rates, and FROST signatures that verify as
BIP340 signatures over the BIP341 sighash of every input."""

from __future__ import annotations

import dataclasses
import math
import random

import coincurve
import pytest

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


def payouts(count: int, amount: int = 10_000) -> list[Payout]:
    script = b"\x00\x14" + bytes(range(20))  # P2WPKH
    return [Payout(f"burn-{i:04d}", script, amount) for i in range(count)]


def test_selection_is_deterministic_and_largest_first(custody) -> None:
    _, key = custody
    utxos = spendables(key, [5_000, 80_000, 20_000, 60_000, 1_000])
    plan = build_withdrawal(payouts(10), utxos, key.custody.script, 2.0)
    shuffled = list(reversed(utxos))
    again = build_withdrawal(list(reversed(payouts(10))), shuffled, key.custody.script, 2.0)
    assert plan.transaction.serialize() == again.transaction.serialize()
    assert sorted(s.amount for s in plan.spent) == [60_000, 80_000]  # 100k paid + fee
    assert all(i.sequence == RBF_SEQUENCE for i in plan.transaction.inputs)
    out = plan.transaction.outputs
    assert out[-1].script_pubkey == key.custody.script
    assert out[-1].amount == plan.change
    assert sum(s.amount for s in plan.spent) == 100_000 + plan.change + plan.fee
    assert plan.fee_rate >= 2.0


def test_dust_change_goes_to_the_fee(custody) -> None:
    _, key = custody
    (utxo,) = spendables(key, [10_000 + 400])
    plan = build_withdrawal(payouts(1), [utxo], key.custody.script, 1.0)
    assert plan.change == 0
    assert len(plan.transaction.outputs) == 1
    assert plan.fee == 400
    assert plan.fee_rate >= 1.0


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
            build_withdrawal(batch, utxos, key.custody.script, 1.0)


def test_input_and_size_limits(custody) -> None:
    _, key = custody
    utxos = spendables(key, [600] * 600)  # 500 inputs (the most) hold only 300,000 sat
    with pytest.raises(WithdrawalError, match="in at most 500 inputs"):
        build_withdrawal(payouts(1, 350_000), utxos, key.custody.script, 1.0)
    # The largest transaction the limits allow (500 inputs, 1000 Taproot outputs) stays
    # well under 100 kvB, and so under the standardness limit of 400,000 WU.
    many = spendables(key, [2_001_000] * 500)
    p2tr = [Payout(f"burn-{i:04d}", key.reservoir.script, 1_000_000) for i in range(1000)]
    plan = build_withdrawal(p2tr, many, key.custody.script, 1.0)
    assert len(plan.spent) == 500
    assert plan.transaction.vsize < 100_000
    signed = plan.signed([bytes(64)] * 500)
    assert signed.vsize == math.ceil(plan.fee / plan.fee_rate - 1e-9)  # the size paid for


def test_replacement_spends_the_same_inputs_at_a_higher_fee(custody) -> None:
    _, key = custody
    utxos = spendables(key, [70_000, 40_000, 30_000])
    plan = build_withdrawal(payouts(5), utxos, key.custody.script, 3.0)
    rate = bumped_fee_rate(plan.fee_rate, 1.0, CONFIG)
    assert rate is not None
    assert rate >= plan.fee_rate * 1.25
    bumped = replace_withdrawal(plan, rate, key.custody.script)
    assert [i.prevout for i in bumped.transaction.inputs] == [
        i.prevout for i in plan.transaction.inputs
    ]
    assert bumped.payouts == plan.payouts
    assert bumped.fee - plan.fee >= bumped.transaction.vsize  # BIP125 rule 4 at 1 sat/vB
    with pytest.raises(WithdrawalError, match="higher fee rate"):
        replace_withdrawal(plan, plan.fee_rate, key.custody.script)
    with pytest.raises(WithdrawalError, match="cannot pay"):
        replace_withdrawal(plan, 400.0, key.custody.script)


def test_bumped_rate_stops_at_the_ceiling() -> None:
    assert bumped_fee_rate(10.0, 50.0, CONFIG) == 50.0
    assert bumped_fee_rate(10.0, 1.0, CONFIG) == 12.5
    assert bumped_fee_rate(0.5, 0.5, CONFIG) == 1.5
    assert bumped_fee_rate(450.0, 1.0, CONFIG) == CONFIG.fee_ceiling_sat_vb
    assert bumped_fee_rate(CONFIG.fee_ceiling_sat_vb, 1.0, CONFIG) is None


def test_frost_signatures_verify_per_input(custody) -> None:
    shares, key = custody
    utxos = spendables(key, [30_000, 25_000, 20_000])
    plan = build_withdrawal(payouts(6), utxos, key.custody.script, 1.0)
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
