"""Checking a node's identity signature from its public key alone (peers have no HSM of ours)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["verify_identity_signature"]


def verify_identity_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is the Ed25519 signature of `message` by `public_key`."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
