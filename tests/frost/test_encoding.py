"""Strict decoding: every malformed scalar or element is refused with a typed error."""

from __future__ import annotations

import pytest
from nacl import bindings as sodium

from appliance.frost import (
    ED25519_SHA512,
    SECP256K1_SHA256,
    SECP256K1_TR,
    Ciphersuite,
    FaultyParticipantError,
    IdentityElementError,
    InvalidElementError,
    NonCanonicalScalarError,
    SignatureShare,
    SigningCommitments,
    SigningPackage,
    SmallOrderElementError,
    aggregate,
    commit,
    sign,
    trusted_dealer_keygen,
)
from appliance.frost.group import ED25519, SECP256K1

SUITES = {
    "ed25519": (ED25519_SHA512, "zcash-frost-ed25519"),
    "secp256k1": (SECP256K1_SHA256, "zcash-frost-secp256k1"),
    "secp256k1-tr": (SECP256K1_TR, "zcash-frost-secp256k1-tr"),
}

# The eight points of order dividing 8, canonically encoded (y, with the sign of x).
ED25519_SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]


@pytest.mark.parametrize("name", SUITES)
def test_zcash_samples_encode_canonically(vectors, name: str) -> None:
    suite, folder = SUITES[name]
    group = suite.group
    sample = vectors.json(f"{folder}/samples.json")
    assert group.encode_scalar(42).hex() == sample["identifier"]
    assert group.base_mul(1).hex() == sample["element1"]
    assert group.base_mul(2).hex() == sample["element2"]
    scalar = group.decode_scalar(bytes.fromhex(sample["scalar1"]))
    assert group.encode_scalar(scalar).hex() == sample["scalar1"]
    element1 = group.decode_element(bytes.fromhex(sample["element1"]))
    assert suite.encode_signature(element1, scalar).hex() == sample["proof_of_knowledge"]


@pytest.mark.parametrize("name", SUITES)
def test_zcash_invalid_element_is_refused_and_blamed(vectors, name: str) -> None:
    suite, folder = SUITES[name]
    invalid = bytes.fromhex(vectors.json(f"{folder}/elements.json")["elements"]["invalid_element"])
    with pytest.raises(InvalidElementError):
        suite.group.decode_element(invalid)
    shares, public = trusted_dealer_keygen(suite, 2, 3)
    for field in ("hiding", "binding"):
        nonces = commit(shares[1])
        bad = commit(shares[2]).commitments._replace(**{field: invalid})
        package = SigningPackage.create(suite, b"msg", [nonces.commitments, bad])
        with pytest.raises(FaultyParticipantError) as caught:
            sign(package, nonces, shares[1])
        assert caught.value.participant == 2
        with pytest.raises(FaultyParticipantError) as caught:
            aggregate(package, [SignatureShare(1, 1), SignatureShare(2, 1)], public)
        assert caught.value.participant == 2


@pytest.mark.parametrize("suite", [ED25519_SHA512, SECP256K1_SHA256], ids=["ed25519", "secp"])
def test_non_canonical_scalars_are_refused(suite: Ciphersuite) -> None:
    group = suite.group
    for value in (group.order, group.order + 1, 2**256 - 1):
        with pytest.raises(NonCanonicalScalarError):
            group.decode_scalar(value.to_bytes(32, group.scalar_byteorder))
    with pytest.raises(NonCanonicalScalarError):
        group.decode_scalar(bytes(31))
    assert group.decode_scalar((group.order - 1).to_bytes(32, group.scalar_byteorder))


def test_ed25519_identity_small_order_and_mixed_order_points_are_refused() -> None:
    with pytest.raises(IdentityElementError):
        ED25519.decode_element(b"\x01" + bytes(31))
    for encoding in ED25519_SMALL_ORDER:
        with pytest.raises(SmallOrderElementError):
            ED25519.decode_element(bytes.fromhex(encoding))
    # A prime-order point plus a torsion point is on the curve but of mixed order.
    torsion = bytes.fromhex(ED25519_SMALL_ORDER[3])
    mixed = sodium.crypto_core_ed25519_add(ED25519.base_mul(7), torsion)
    with pytest.raises(InvalidElementError) as caught:
        ED25519.decode_element(mixed)
    assert not isinstance(caught.value, SmallOrderElementError)
    # y >= p: non-canonical; a y with no x on the curve: off the curve.
    with pytest.raises(InvalidElementError):
        ED25519.decode_element((2**255 - 19 + 2).to_bytes(32, "little"))
    off_curve = next(
        y.to_bytes(32, "little")
        for y in range(2, 100)
        if not sodium.crypto_core_ed25519_is_valid_point(y.to_bytes(32, "little"))
        and y not in (0, 1)
    )
    with pytest.raises(InvalidElementError):
        ED25519.decode_element(off_curve)
    with pytest.raises(InvalidElementError):
        ED25519.decode_element(bytes(33))


def test_secp256k1_malformed_points_are_refused() -> None:
    with pytest.raises(IdentityElementError):
        SECP256K1.decode_element(bytes(33))
    g = SECP256K1.base_mul(1)
    with pytest.raises(InvalidElementError):
        SECP256K1.decode_element(b"\x04" + g[1:])  # not compressed
    with pytest.raises(InvalidElementError):
        SECP256K1.decode_element(g[:32])  # truncated
    p = 2**256 - 2**32 - 977
    with pytest.raises(InvalidElementError):
        SECP256K1.decode_element(b"\x02" + (p + 1).to_bytes(32, "big")[-32:])
    # x = 5 is not the x-coordinate of a curve point (5^3 + 7 is not a square mod p).
    with pytest.raises(InvalidElementError):
        SECP256K1.decode_element(b"\x02" + (5).to_bytes(32, "big"))


def test_commitments_from_a_stranger_or_twice_are_refused() -> None:
    shares, _ = trusted_dealer_keygen(ED25519_SHA512, 2, 3)
    c = commit(shares[1]).commitments
    with pytest.raises(ValueError, match="committed twice"):
        SigningPackage.create(ED25519_SHA512, b"m", [c, c])
    with pytest.raises(ValueError, match="non-zero scalar"):
        SigningPackage.create(ED25519_SHA512, b"m", [SigningCommitments(0, c.hiding, c.binding)])
