"""The sealed-blob format: a secret encrypted by the HSM's key-encryption key.

    offset  size  field
    0       4     magic "WMSB" (wire-mpc sealed blob)
    4       1     format version, 1
    5       …     context: node id, key id, ciphersuite, purpose — each one length byte
                  followed by that many bytes of UTF-8
    …       12    AES-GCM nonce, drawn from the HSM's random number generator
    …       n+16  AES-256-GCM ciphertext of the n-byte secret, then the 16-byte tag

Everything before the nonce is the GCM additional data, so the context cannot be changed
without the tag failing; a blob also names its context in the clear, so a blob offered for
the wrong node, key or purpose is refused with a precise reason before decryption.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SealedBlobError

__all__ = ["FORMAT_VERSION", "MAGIC", "NONCE_SIZE", "TAG_SIZE", "SealContext", "parse_blob"]

MAGIC = b"WMSB"
FORMAT_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16


@dataclass(frozen=True)
class SealContext:
    """What a sealed secret is bound to."""

    node_id: str
    key_id: str
    ciphersuite: str
    purpose: str

    def header(self) -> bytes:
        fields = [self.node_id, self.key_id, self.ciphersuite, self.purpose]
        out = bytearray(MAGIC + bytes((FORMAT_VERSION,)))
        for value in fields:
            encoded = value.encode()
            if not 0 < len(encoded) < 256:
                raise SealedBlobError(f"seal context field {value!r} must be 1-255 bytes")
            out += bytes((len(encoded),)) + encoded
        return bytes(out)

    def __str__(self) -> str:
        return (
            f"node {self.node_id}, key {self.key_id}, "
            f"ciphersuite {self.ciphersuite}, purpose {self.purpose}"
        )


def parse_blob(blob: bytes) -> tuple[SealContext, bytes, bytes, bytes]:
    """Split a blob into (context, header = GCM additional data, nonce, ciphertext+tag)."""
    if len(blob) < 5 or blob[:4] != MAGIC:
        raise SealedBlobError("not a wire-mpc sealed blob (bad magic)")
    if blob[4] != FORMAT_VERSION:
        raise SealedBlobError(f"sealed blob format version {blob[4]} is not supported")
    offset = 5
    fields = []
    for _ in range(4):
        if offset >= len(blob):
            raise SealedBlobError("sealed blob is truncated in its context")
        size = blob[offset]
        value = blob[offset + 1 : offset + 1 + size]
        if size == 0 or len(value) != size:
            raise SealedBlobError("sealed blob is truncated in its context")
        try:
            fields.append(value.decode())
        except UnicodeDecodeError as exc:
            raise SealedBlobError("sealed blob context is not UTF-8") from exc
        offset += 1 + size
    header = bytes(blob[:offset])
    nonce = bytes(blob[offset : offset + NONCE_SIZE])
    ciphertext = bytes(blob[offset + NONCE_SIZE :])
    if len(nonce) != NONCE_SIZE or len(ciphertext) < TAG_SIZE + 1:
        raise SealedBlobError("sealed blob is truncated")
    return SealContext(*fields), header, nonce, ciphertext
