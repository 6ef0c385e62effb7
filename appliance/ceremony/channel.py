"""Point-to-point secrecy for DKG and refresh shares, with provable complaints.

Every participant publishes, signed in its round-1 message, an ephemeral Ed25519 point
E_i = e_i·G. The pair (i, j) shares S = e_j·E_i = e_i·E_j; the share i sends to j is
sealed with ChaCha20-Poly1305 under a key derived from S, the ceremony and the direction.

If j finds its share bad, it publishes S with a proof that it is e_j·E_i (a Chaum–Pedersen
proof of equal discrete logarithms) and i's signed envelope. Anyone can then derive the
key, open the ciphertext and check the share against i's commitment: the accused or the
complainer is proven faulty, and no other secret is revealed.
"""

from __future__ import annotations

import hashlib
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from appliance.frost.group import ED25519
from appliance.frost.keys import random_scalar

__all__ = [
    "ChannelError",
    "ephemeral_key",
    "open_share",
    "prove_shared_point",
    "seal_share",
    "shared_point",
    "verify_shared_point",
]

_GROUP = ED25519
_NONCE = bytes(12)  # every key seals exactly one message


class ChannelError(ValueError):
    """A ciphertext did not open, or a proof did not verify."""


def ephemeral_key() -> tuple[int, bytes]:
    """A fresh ephemeral secret e and its public point E = e·G."""
    e = random_scalar(_GROUP, secrets.token_bytes)
    return e, _GROUP.base_mul(e)


def shared_point(secret: int, peer_point: bytes) -> bytes:
    """e·E_peer; validates the peer's point in full."""
    return _GROUP.mul(_GROUP.decode_element(peer_point), secret)


def _key(point: bytes, context: bytes, sender: int, recipient: int) -> bytes:
    return hashlib.sha256(
        b"wire-mpc share channel v1\0"
        + point
        + context
        + sender.to_bytes(2, "big")
        + recipient.to_bytes(2, "big")
    ).digest()


def seal_share(
    point: bytes, context: bytes, sender: int, recipient: int, plaintext: bytes
) -> bytes:
    key = _key(point, context, sender, recipient)
    return ChaCha20Poly1305(key).encrypt(_NONCE, plaintext, context)


def open_share(
    point: bytes, context: bytes, sender: int, recipient: int, ciphertext: bytes
) -> bytes:
    key = _key(point, context, sender, recipient)
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE, ciphertext, context)
    except InvalidTag:
        raise ChannelError("share ciphertext does not open under the shared key") from None


def _challenge(mine: bytes, theirs: bytes, point: bytes, r1: bytes, r2: bytes) -> int:
    digest = hashlib.sha512(b"wire-mpc dleq v1\0" + mine + theirs + point + r1 + r2).digest()
    return int.from_bytes(digest, "little") % _GROUP.order


def prove_shared_point(secret: int, mine: bytes, theirs: bytes, point: bytes) -> bytes:
    """Prove log_G(mine) == log_theirs(point) without revealing the secret: (c, z)."""
    r = random_scalar(_GROUP, secrets.token_bytes)
    r1 = _GROUP.base_mul(r)
    r2 = _GROUP.mul(theirs, r)
    c = _challenge(mine, theirs, point, r1, r2)
    z = (r + c * secret) % _GROUP.order
    return _GROUP.encode_scalar(c) + _GROUP.encode_scalar(z)


def verify_shared_point(mine: bytes, theirs: bytes, point: bytes, proof: bytes) -> bool:
    """Check a `prove_shared_point` proof that `point` is the complainer's shared point."""
    if len(proof) != 64:
        return False
    try:
        c = _GROUP.decode_scalar(proof[:32])
        z = _GROUP.decode_scalar(proof[32:])
        for element in (mine, theirs, point):
            _GROUP.decode_element(element)
        r1 = _GROUP.linear_combination([(mine, -c)], base=z)
        r2 = _GROUP.linear_combination([(theirs, z), (point, -c)])
    except ValueError:
        return False
    return _challenge(mine, theirs, point, r1, r2) == c
