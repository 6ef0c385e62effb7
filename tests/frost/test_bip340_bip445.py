"""BIP340 verification vectors, and the parts of the BIP 445 vectors our Taproot suite
shares with BIP 445: key shares and their interpolation, tweaking (plain and x-only, with
its errors) and final signatures.

BIP 445's nonce generation, nonce aggregation and partial-signature values are not
checked: BIP 445 binds all signers with one MuSig2-style binding value over aggregated
nonces, while this suite (like the Zcash Foundation's frost-secp256k1-tr) follows RFC 9591
with a binding factor per signer, so partial signatures of one are not those of the other.
"""

from __future__ import annotations

import csv

import pytest
from coincurve import PublicKeyXOnly

from appliance.frost import (
    SECP256K1_TR,
    KeyShare,
    ParameterError,
    PublicKeyPackage,
    SecretScalar,
    SigningPackage,
    Tweak,
    aggregate,
    apply_tweaks,
    commit,
    sign,
)

GROUP = SECP256K1_TR.group


def libsecp256k1_verifies(x_only: bytes, message: bytes, signature: bytes) -> bool:
    try:
        key = PublicKeyXOnly(x_only)
    except ValueError:
        return False
    return key.verify(signature, message)


def test_bip340_vectors(vectors) -> None:
    with vectors.path("bip340/test-vectors.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 19
    for row in rows:
        key = bytes.fromhex(row["public key"])
        message = bytes.fromhex(row["message"])
        signature = bytes.fromhex(row["signature"])
        expected = row["verification result"] == "TRUE"
        assert SECP256K1_TR.verify(key, message, signature) is expected, row["index"]
        assert libsecp256k1_verifies(key, message, signature) is expected, row["index"]


def _bip445_groups(vectors, name: str) -> list[dict]:
    return vectors.json(f"bip445-frost-signing/{name}")["test_groups"]


def _public_package(group_vector: dict) -> PublicKeyPackage:
    """BIP 445 numbers signers 0..n-1 and evaluates their shares at x = id + 1."""
    n = group_vector["n"]
    shares = tuple((i + 1, bytes.fromhex(group_vector["pubshares"][i])) for i in range(n))
    return PublicKeyPackage(
        SECP256K1_TR, group_vector["t"], bytes.fromhex(group_vector["thresh_pk"]), shares
    )


def _tweaks(group_vector: dict, case: dict) -> list[Tweak]:
    values = [group_vector["tweaks"][k] for k in case["tweak_indices"]]
    return [Tweak(int(v, 16), x) for v, x in zip(values, case["is_xonly"], strict=True)]


def test_bip445_shares_interpolate_to_the_threshold_key(vectors) -> None:
    for g in _bip445_groups(vectors, "sign_verify_vectors.json"):
        public = _public_package(g)
        for i in range(g["n"]):
            secret = int(g["secshares"][i], 16)
            assert GROUP.base_mul(secret) == public.verifying_share(i + 1)
        for start in range(g["n"] - g["t"] + 1):
            signers = range(start + 1, start + 1 + g["t"])
            assert public.interpolated_group_key(signers) == public.group_key, g["tg_id"]


def test_bip445_tweaked_keys_verify_the_aggregate_signatures(vectors) -> None:
    checked = 0
    for g in _bip445_groups(vectors, "sig_agg_vectors.json"):
        key = bytes.fromhex(g["thresh_pk"])
        for case in g["valid_tests"]:
            tweaked = apply_tweaks(SECP256K1_TR, key, _tweaks(g, case))
            message = bytes.fromhex(case["msg"])
            signature = bytes.fromhex(case["expected"])
            assert SECP256K1_TR.verify(tweaked.key, message, signature), case["comment"]
            assert libsecp256k1_verifies(tweaked.key[1:], message, signature)
            checked += 1
    assert checked >= 12


def test_bip445_tweak_errors(vectors) -> None:
    messages = {"The tweak value is out of range.", "The result of tweaking cannot be infinity."}
    seen = set()
    for g in _bip445_groups(vectors, "tweak_vectors.json"):
        key = bytes.fromhex(g["thresh_pk"])
        for case in g["error_tests"]:
            if case["error"].get("message") not in messages:
                continue  # array-shape errors of BIP 445's API; our tweaks are typed values
            with pytest.raises(ParameterError) as caught:
                apply_tweaks(SECP256K1_TR, key, _tweaks(g, case))
            assert str(caught.value) == case["error"]["message"]
            seen.add(case["error"]["message"])
    assert seen == messages


def test_our_signing_with_bip445_key_material_and_tweaks(vectors) -> None:
    """Shares produced for BIP 445 sign with our protocol under every tweak list of the
    vectors; the result verifies under BIP 445's tweaked key with libsecp256k1."""
    for g in _bip445_groups(vectors, "tweak_vectors.json"):
        public = _public_package(g)
        shares = {
            i + 1: KeyShare(i + 1, SecretScalar(int(g["secshares"][i], 16)), public)
            for i in range(g["n"])
        }
        for case in g["valid_tests"]:
            signers = [i + 1 for i in case["ids"]]
            message = bytes.fromhex(case["msg"])
            tweaks = _tweaks(g, case)
            nonces = {i: commit(shares[i]) for i in signers}
            package = SigningPackage.create(
                SECP256K1_TR, message, [n.commitments for n in nonces.values()], tweaks
            )
            signature = aggregate(
                package, [sign(package, nonces[i], shares[i]) for i in signers], public
            )
            output_key = apply_tweaks(SECP256K1_TR, public.group_key, tweaks).key
            assert libsecp256k1_verifies(output_key[1:], message, signature), case["comment"]
