"""A Taproot key-path spend signed by the threshold custody key is valid under Bitcoin
Core's own consensus rules (libbitcoinkernel via py-bitcoinkernel).

The transaction and its BIP341 signature hash come from embit, which shares no code with
appliance.frost; one input spends the custody output key, one a per-recipient deposit key.
"""

from __future__ import annotations

import hashlib

import pbk
import pytest
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput
from pbk.script import PrecomputedTransactionData
from pbk.script import ScriptVerificationFlags as Flags

from appliance.frost import SECP256K1_TR, Tweak, signing_key, taproot_tweak

from .helpers import run_dkg, sign_with


def p2tr(output_key: bytes) -> Script:
    return Script(b"\x51\x20" + output_key[1:])


def consensus_valid(tx: Transaction, spent: list[tuple[Script, int]]) -> list[bool]:
    raw = tx.serialize()
    kernel_tx = pbk.Transaction(raw)
    outputs = [pbk.TransactionOutput(pbk.ScriptPubkey(s.data), amount) for s, amount in spent]
    precomputed = PrecomputedTransactionData(kernel_tx, outputs)
    return [
        bool(pbk.ScriptPubkey(script.data).verify(amount, kernel_tx, precomputed, i, Flags.ALL))
        for i, (script, amount) in enumerate(spent)
    ]


@pytest.mark.parametrize(("t", "n", "signers"), [(2, 3, [1, 3]), (3, 5, [2, 4, 5])])
def test_threshold_taproot_spend_is_valid_for_bitcoin_core(t, n, signers) -> None:
    shares = run_dkg(SECP256K1_TR, t, n)
    public = shares[1].public
    internal = public.group_key
    custody_tweaks = [taproot_tweak(internal)]
    recipient = Tweak(int.from_bytes(hashlib.sha256(b"wire:alice").digest(), "big"), False)
    deposit_internal = signing_key(public, [recipient]).key
    deposit_tweaks = [recipient, taproot_tweak(deposit_internal)]

    spent = [
        (p2tr(signing_key(public, custody_tweaks).key), 150_000),
        (p2tr(signing_key(public, deposit_tweaks).key), 60_000),
    ]
    tx = Transaction(
        vin=[
            TransactionInput(hashlib.sha256(b"funding-a").digest(), 0, sequence=0xFFFFFFFD),
            TransactionInput(hashlib.sha256(b"funding-b").digest(), 3, sequence=0xFFFFFFFD),
        ],
        vout=[TransactionOutput(200_000, Script(b"\x00\x14" + bytes(20)))],
    )
    scripts = [s for s, _ in spent]
    amounts = [a for _, a in spent]
    for index, tweaks in enumerate([custody_tweaks, deposit_tweaks]):
        sighash = tx.sighash_taproot(index, scripts, amounts)
        signature = sign_with(shares, signers, sighash, tweaks)
        tx.vin[index].witness = Witness([signature])
    assert consensus_valid(tx, spent) == [True, True]

    # One flipped bit in a signature, or a signature for the untweaked key, is refused.
    good = tx.vin[0].witness.items[0]
    tx.vin[0].witness = Witness([good[:-1] + bytes((good[-1] ^ 1,))])
    assert consensus_valid(tx, spent) == [False, True]
    sighash = tx.sighash_taproot(0, scripts, amounts)
    tx.vin[0].witness = Witness([sign_with(shares, signers, sighash)])
    assert consensus_valid(tx, spent) == [False, True]
