"""The three FROST ciphersuites: hash functions, challenge, signature format and verification.

FROST(Ed25519, SHA-512) and FROST(secp256k1, SHA-256) are RFC 9591 §6.1 and §6.5; the
Taproot suite is FROST(secp256k1, SHA-256) with BIP340 challenges, x-only keys and even-y
nonces, the construction of the Zcash Foundation's `frost-secp256k1-tr`.
"""

from __future__ import annotations

import hashlib
from typing import Final

from .errors import EncodingError, InvalidElementError
from .group import ED25519, SECP256K1, Ed25519Group, Group, Secp256k1Group

__all__ = [
    "CIPHERSUITES",
    "ED25519_SHA512",
    "SECP256K1_SHA256",
    "SECP256K1_TR",
    "Ciphersuite",
    "TaprootCiphersuite",
    "tagged_hash",
]


def tagged_hash(tag: str, data: bytes) -> bytes:
    """BIP340 tagged hash: SHA256(SHA256(tag) || SHA256(tag) || data)."""
    tag_digest = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_digest + tag_digest + data).digest()


def _expand_message_xmd_sha256(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 §5.3.1 expand_message_xmd with SHA-256 (DST shorter than 256 bytes)."""
    ell = -(-length // 32)
    dst_prime = dst + bytes((len(dst),))
    b0 = hashlib.sha256(bytes(64) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime).digest()
    b0_int = int.from_bytes(b0, "big")
    blocks = [hashlib.sha256(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = (b0_int ^ int.from_bytes(blocks[-1], "big")).to_bytes(32, "big")
        blocks.append(hashlib.sha256(mixed + bytes((i,)) + dst_prime).digest())
    return b"".join(blocks)[:length]


class Ciphersuite:
    """A FROST ciphersuite (RFC 9591 §6): group, hashes and signature format."""

    name: str
    context: bytes
    group: Group

    # -- hash functions (RFC 9591 §6) -----------------------------------------------
    def hash_to_scalar(self, tag: bytes, message: bytes) -> int:
        raise NotImplementedError

    def hash_bytes(self, tag: bytes, message: bytes) -> bytes:
        raise NotImplementedError

    def H1(self, m: bytes) -> int:  # noqa: N802 - the RFC's names
        return self.hash_to_scalar(b"rho", m)

    def H2(self, m: bytes) -> int:  # noqa: N802
        return self.hash_to_scalar(b"chal", m)

    def H3(self, m: bytes) -> int:  # noqa: N802
        return self.hash_to_scalar(b"nonce", m)

    def H4(self, m: bytes) -> bytes:  # noqa: N802
        return self.hash_bytes(b"msg", m)

    def H5(self, m: bytes) -> bytes:  # noqa: N802
        return self.hash_bytes(b"com", m)

    def HDKG(self, m: bytes) -> int:  # noqa: N802
        return self.hash_to_scalar(b"dkg", m)

    def HID(self, m: bytes) -> int:  # noqa: N802
        return self.hash_to_scalar(b"id", m)

    # -- Schnorr signatures ----------------------------------------------------------
    @property
    def signature_size(self) -> int:
        return self.group.element_size + self.group.scalar_size

    def challenge(self, commitment: bytes, public_key: bytes, message: bytes) -> int:
        """c = H2(R || PK || msg) (RFC 9591 §4.6)."""
        return self.H2(commitment + public_key + message)

    def encode_signature(self, commitment: bytes, z: int) -> bytes:
        return commitment + self.group.encode_scalar(z)

    def decode_signature(self, signature: bytes) -> tuple[bytes, int]:
        if len(signature) != self.signature_size:
            raise EncodingError(
                f"{self.name} signature must be {self.signature_size} bytes, got {len(signature)}"
            )
        size = self.group.element_size
        return self.group.decode_element(signature[:size]), self.group.decode_scalar(
            signature[size:]
        )

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """Prime-order Schnorr verification: z·G == R + c·PK."""
        try:
            commitment, z = self.decode_signature(signature)
            c = self.challenge(commitment, public_key, message)
            return self.group.base_mul(z) == self.group.linear_combination(
                [(commitment, 1), (public_key, c)]
            )
        except EncodingError:
            return False

    # -- hooks the Taproot suite overrides ---------------------------------------------
    def even_nonce(self, k: int, commitment: bytes) -> tuple[int, bytes]:
        """Adjust a single-signer nonce and its commitment (BIP340 wants even y)."""
        return k, commitment

    def needs_negation(self, element: bytes) -> bool:
        """True where BIP340 demands the element (a key or nonce) be negated to even y."""
        return False

    def __repr__(self) -> str:
        return f"<ciphersuite {self.context.decode()}>"


class _Ed25519Sha512(Ciphersuite):
    name = "FROST(Ed25519, SHA-512)"
    context = b"FROST-ED25519-SHA512-v1"

    def hash_to_scalar(self, tag: bytes, message: bytes) -> int:
        digest = hashlib.sha512(self.context + tag + message).digest()
        return int.from_bytes(digest, "little") % self.group.order

    def hash_bytes(self, tag: bytes, message: bytes) -> bytes:
        return hashlib.sha512(self.context + tag + message).digest()

    def H2(self, m: bytes) -> int:  # noqa: N802 - RFC 8032's challenge, no context
        return int.from_bytes(hashlib.sha512(m).digest(), "little") % self.group.order

    group: Ed25519Group = ED25519

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """RFC 8032 verification by libsodium, a verifier the Wire system may well use."""
        return self.group.verify_rfc8032(public_key, message, signature)


class _Secp256k1Sha256(Ciphersuite):
    name = "FROST(secp256k1, SHA-256)"
    context = b"FROST-secp256k1-SHA256-v1"
    group: Group = SECP256K1

    def hash_to_scalar(self, tag: bytes, message: bytes) -> int:
        uniform = _expand_message_xmd_sha256(message, self.context + tag, 48)
        return int.from_bytes(uniform, "big") % self.group.order

    def hash_bytes(self, tag: bytes, message: bytes) -> bytes:
        return hashlib.sha256(self.context + tag + message).digest()


class TaprootCiphersuite(_Secp256k1Sha256):
    """FROST for BIP340: x-only keys, even-y group key and nonce, BIP340 challenge.

    Keys and commitments keep their 33-byte SEC1 encoding inside the protocol (binding
    factors hash them that way); only the final signature and the key a verifier sees are
    x-only.
    """

    name = "FROST(secp256k1, SHA-256, Taproot)"
    context = b"FROST-secp256k1-SHA256-TR-v1"
    group: Secp256k1Group = SECP256K1

    def H2(self, m: bytes) -> int:  # noqa: N802
        return int.from_bytes(tagged_hash("BIP0340/challenge", m), "big") % self.group.order

    @property
    def signature_size(self) -> int:
        return 64

    def challenge(self, commitment: bytes, public_key: bytes, message: bytes) -> int:
        return self.H2(commitment[1:] + public_key[1:] + message)

    def encode_signature(self, commitment: bytes, z: int) -> bytes:
        if not self.group.has_even_y(commitment):
            raise InvalidElementError("BIP340 signature commitment must have even y")
        return commitment[1:] + self.group.encode_scalar(z)

    def decode_signature(self, signature: bytes) -> tuple[bytes, int]:
        if len(signature) != 64:
            raise EncodingError(f"BIP340 signature must be 64 bytes, got {len(signature)}")
        return self.group.lift_x(signature[:32]), self.group.decode_scalar(signature[32:])

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """BIP340 verification by libsecp256k1; `public_key` is x-only or a 33-byte element."""
        x_only = public_key[1:] if len(public_key) == 33 else public_key
        return self.group.verify_bip340(x_only, message, signature)

    def even_nonce(self, k: int, commitment: bytes) -> tuple[int, bytes]:
        if self.group.has_even_y(commitment):
            return k, commitment
        return self.group.order - k, self.group.neg(commitment)

    def needs_negation(self, element: bytes) -> bool:
        return not self.group.has_even_y(element)


ED25519_SHA512: Final[Ciphersuite] = _Ed25519Sha512()
SECP256K1_SHA256: Final[Ciphersuite] = _Secp256k1Sha256()
SECP256K1_TR: Final[TaprootCiphersuite] = TaprootCiphersuite()

CIPHERSUITES: Final[dict[str, Ciphersuite]] = {
    suite.context.decode(): suite for suite in (ED25519_SHA512, SECP256K1_SHA256, SECP256K1_TR)
}
"""The suites by their RFC 9591 context string, the name stored with sealed shares."""
