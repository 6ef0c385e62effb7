"""RFC 9591 Appendix E and Zcash Foundation signing vectors, replayed step by step:
dealer split, round-1 nonces and commitments, binding factors, signature shares, signature."""

from __future__ import annotations

import pytest
from nacl.signing import VerifyKey

from appliance.frost import (
    ED25519_SHA512,
    SECP256K1_SHA256,
    SECP256K1_TR,
    Ciphersuite,
    SigningPackage,
    aggregate,
    commit,
    sign,
    signing_key,
    split,
)
from appliance.frost.signing import _session

from .scripted import ScriptedRandom, scalar_draw

SIGNING_VECTORS = [
    ("rfc9591-ed25519/frost-ed25519-sha512.json", ED25519_SHA512),
    ("rfc9591-secp256k1/frost-secp256k1-sha256.json", SECP256K1_SHA256),
    ("zcash-frost-ed25519/vectors.json", ED25519_SHA512),
    ("zcash-frost-ed25519/vectors-big-identifier.json", ED25519_SHA512),
    ("zcash-frost-secp256k1/vectors.json", SECP256K1_SHA256),
    ("zcash-frost-secp256k1/vectors-big-identifier.json", SECP256K1_SHA256),
    ("zcash-frost-secp256k1-tr/vectors.json", SECP256K1_TR),
    # Upstream this file repeats vectors.json (same blob); kept so a future real one runs.
    ("zcash-frost-secp256k1-tr/vectors-big-identifier.json", SECP256K1_TR),
]


@pytest.mark.parametrize(("path", "suite"), SIGNING_VECTORS, ids=[p for p, _ in SIGNING_VECTORS])
def test_signing_vector(vectors, path: str, suite: Ciphersuite) -> None:
    v = vectors.json(path)
    group = suite.group
    inputs = v["inputs"]
    threshold = int(v["config"]["MIN_PARTICIPANTS"])
    max_signers = int(v["config"]["MAX_PARTICIPANTS"])
    secret = group.decode_scalar(bytes.fromhex(inputs["group_secret_key"]))
    coefficients = [
        group.decode_scalar(bytes.fromhex(c)) for c in inputs["share_polynomial_coefficients"]
    ]
    expected_key = bytes.fromhex(inputs.get("group_public_key") or inputs["verifying_key_key"])
    message = bytes.fromhex(inputs["message"])

    # Trusted-dealer split with the vector's polynomial.
    rng = ScriptedRandom(scalar_draw(c) for c in coefficients)
    shares, public = split(suite, secret, threshold, range(1, max_signers + 1), rng)
    assert rng.exhausted()
    assert public.group_key == expected_key
    for entry in inputs["participant_shares"]:
        share = shares[entry["identifier"]]
        assert group.encode_scalar(share.signing_share.reveal()).hex() == entry["participant_share"]
        share.check()

    # Round one with the vector's randomness.
    signers = inputs["participant_list"]
    nonces = {}
    for out in v["round_one_outputs"]["outputs"]:
        i = out["identifier"]
        rng = ScriptedRandom(
            [
                bytes.fromhex(out["hiding_nonce_randomness"]),
                bytes.fromhex(out["binding_nonce_randomness"]),
            ]
        )
        nonces[i] = commit(shares[i], rng)
        assert nonces[i].commitments.hiding.hex() == out["hiding_nonce_commitment"]
        assert nonces[i].commitments.binding.hex() == out["binding_nonce_commitment"]
    assert sorted(nonces) == sorted(signers)

    package = SigningPackage.create(suite, message, [n.commitments for n in nonces.values()])
    session = _session(package, public)
    for out in v["round_one_outputs"]["outputs"]:
        factor = session.binding_factors[out["identifier"]]
        assert group.encode_scalar(factor).hex() == out["binding_factor"]

    # Round two and aggregation.
    sig_shares = []
    for out in v["round_two_outputs"]["outputs"]:
        i = out["identifier"]
        sig_share = sign(package, nonces[i], shares[i])
        assert group.encode_scalar(sig_share.share).hex() == out["sig_share"]
        sig_shares.append(sig_share)
    signature = aggregate(package, sig_shares, public)
    assert signature.hex() == v["final_output"]["sig"]
    assert suite.verify(signing_key(public).key, message, signature)


def test_ed25519_vector_signature_verifies_with_rfc8032_verifiers(vectors) -> None:
    """The RFC's FROST signature is an ordinary Ed25519 signature (libsodium, OpenSSL)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    v = vectors.json("rfc9591-ed25519/frost-ed25519-sha512.json")
    key = bytes.fromhex(v["inputs"]["group_public_key"])
    message = bytes.fromhex(v["inputs"]["message"])
    signature = bytes.fromhex(v["final_output"]["sig"])
    VerifyKey(key).verify(message, signature)
    Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
