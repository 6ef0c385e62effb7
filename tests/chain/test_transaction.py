"""Transactions and the BIP341 signature hash against the BIP341 wallet vectors."""

from __future__ import annotations

import pytest

from appliance.chain.transaction import (
    EncodingError,
    TxOut,
    parse_transaction,
    taproot_sighash,
)
from appliance.frost import SECP256K1_TR, signing_key, taproot_tweak
from appliance.frost.keys import PublicKeyPackage


def key_path_vectors(vectors):
    return vectors.json("bip341/wallet-test-vectors.json")["keyPathSpending"]


def test_bip341_key_path_signature_hashes(vectors) -> None:
    checked = 0
    for case in key_path_vectors(vectors):
        raw = bytes.fromhex(case["given"]["rawUnsignedTx"])
        tx = parse_transaction(raw)
        assert tx.serialize() == raw
        spent = [
            TxOut(u["amountSats"], bytes.fromhex(u["scriptPubKey"]))
            for u in case["given"]["utxosSpent"]
        ]
        for spend in case["inputSpending"]:
            given = spend["given"]
            sighash = taproot_sighash(tx, given["txinIndex"], spent, given["hashType"])
            assert sighash.hex() == spend["intermediary"]["sigHash"]
            # The expected witness verifies (BIP340) under the output key for that sighash.
            signature = bytes.fromhex(spend["expected"]["witness"][0])[:64]
            output_key = bytes.fromhex(spend["intermediary"]["internalPubkey"])
            merkle_root = bytes.fromhex(given["merkleRoot"] or "")
            tweak = taproot_tweak(output_key, merkle_root)
            assert tweak.value.to_bytes(32, "big").hex() == spend["intermediary"]["tweak"]
            public = PublicKeyPackage(SECP256K1_TR, 1, b"\x02" + output_key, ())
            key = signing_key(public, [tweak]).key
            assert SECP256K1_TR.verify(key, sighash, signature)
            checked += 1
    assert checked == 7


def test_bip341_script_pubkeys_of_internal_keys(vectors) -> None:
    """Our Taproot tweak yields the vectors' output keys, with and without script trees."""
    for case in vectors.json("bip341/wallet-test-vectors.json")["scriptPubKey"]:
        internal = bytes.fromhex(case["given"]["internalPubkey"])
        root = bytes.fromhex(case["intermediary"]["merkleRoot"] or "")
        tweak = taproot_tweak(internal, root)
        assert tweak.value.to_bytes(32, "big").hex() == case["intermediary"]["tweak"]
        public = PublicKeyPackage(SECP256K1_TR, 1, b"\x02" + internal, ())
        output = signing_key(public, [tweak]).key
        assert output[1:].hex() == case["intermediary"]["tweakedPubkey"]


def test_malformed_transactions_are_refused(vectors) -> None:
    raw = bytes.fromhex(key_path_vectors(vectors)[0]["given"]["rawUnsignedTx"])
    for cut in (0, 3, 4, 5, 40, len(raw) // 2, len(raw) - 1):
        with pytest.raises(EncodingError):
            parse_transaction(raw[:cut])
    with pytest.raises(EncodingError, match="trailing"):
        parse_transaction(raw + b"\x00")
    # A count field claiming a billion inputs is refused before anything is allocated.
    with pytest.raises(EncodingError):
        parse_transaction(raw[:4] + b"\xfe\x00\xca\x9a\x3b" + raw[5:])
