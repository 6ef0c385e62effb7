"""The envelope codec and the share channel: strict parsing, signatures, proofs."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.ceremony.channel import (
    ChannelError,
    ephemeral_key,
    open_share,
    prove_shared_point,
    seal_share,
    shared_point,
    verify_shared_point,
)
from appliance.mesh.envelope import EnvelopeError, open_envelope, seal_envelope

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()


def envelope(**overrides) -> bytes:
    fields = {
        "cluster_id": "c1",
        "ceremony_id": "dkg-1",
        "round_name": "dkg.round1",
        "sender": 2,
        "sequence": 7,
        "payload": b'{"a":1}',
    }
    fields.update(overrides)
    return seal_envelope(**fields, sign=KEY.sign)


def test_an_envelope_round_trips_and_verifies() -> None:
    data = envelope()
    parsed = open_envelope(data)
    assert (parsed.cluster_id, parsed.ceremony_id, parsed.round) == ("c1", "dkg-1", "dkg.round1")
    assert (parsed.sender, parsed.sequence, parsed.payload) == (2, 7, b'{"a":1}')
    assert parsed.signed_by(PUBLIC)
    assert not parsed.signed_by(Ed25519PrivateKey.generate().public_key().public_bytes_raw())


def test_every_truncation_and_every_flipped_byte_is_caught() -> None:
    data = envelope()
    for cut in range(len(data)):
        with pytest.raises(EnvelopeError):
            open_envelope(data[:cut])
    for i in range(len(data)):
        altered = bytearray(data)
        altered[i] ^= 0x01
        try:
            parsed = open_envelope(bytes(altered))
        except EnvelopeError:
            continue
        assert not parsed.signed_by(PUBLIC), f"flipping byte {i} went unnoticed"


def test_unknown_version_and_bad_fields() -> None:
    with pytest.raises(EnvelopeError, match="unknown-version"):
        open_envelope(b"\x02" + envelope()[1:])
    with pytest.raises(EnvelopeError, match="not allowed"):
        envelope(round_name="DKG ROUND 1")
    with pytest.raises(EnvelopeError, match="not allowed"):
        envelope(cluster_id="c1\x00")


def test_the_share_channel_and_its_proofs() -> None:
    a_secret, a_point = ephemeral_key()
    b_secret, b_point = ephemeral_key()
    ab = shared_point(a_secret, b_point)
    assert ab == shared_point(b_secret, a_point)
    context = b"cluster\0ceremony\0dkg"
    sealed = seal_share(ab, context, 1, 2, b"share bytes")
    assert open_share(ab, context, 1, 2, sealed) == b"share bytes"
    with pytest.raises(ChannelError):
        open_share(ab, context, 2, 1, sealed)  # the direction is part of the key
    proof = prove_shared_point(b_secret, b_point, a_point, ab)
    assert verify_shared_point(b_point, a_point, ab, proof)
    _, c_point = ephemeral_key()
    assert not verify_shared_point(b_point, a_point, c_point, proof)  # another point
    assert not verify_shared_point(c_point, a_point, ab, proof)  # another prover
    assert not verify_shared_point(b_point, a_point, ab, proof[:32] + bytes(32))
