"""The one envelope format of the mesh, signed by the sender's HSM identity key.

    offset  size  field
    0       1     protocol version, 1
    1       1+n   cluster id (length byte, UTF-8)
    …       1+n   ceremony id (length byte, UTF-8; empty for mesh-level messages)
    …       1+n   round (length byte, ASCII, e.g. "dkg.round1")
    …       2     sender identifier (big-endian)
    …       8     sender's sequence number (big-endian, strictly increasing)
    …       4+n   payload (length, big-endian, then the bytes)
    …       64    Ed25519 signature over "wire-mpc envelope v1\\0" and everything above

A signed envelope is the evidence blame rests on: it is stored exactly as received.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from hsm.identity import verify_identity_signature

__all__ = ["ENVELOPE_VERSION", "Envelope", "EnvelopeError", "open_envelope", "seal_envelope"]

ENVELOPE_VERSION = 1
DOMAIN = b"wire-mpc envelope v1\x00"
SIGNATURE_SIZE = 64
_ROUND = re.compile(r"[a-z0-9.-]{1,40}")
_ID = re.compile(r"[A-Za-z0-9._-]{0,80}")


class EnvelopeError(ValueError):
    """An envelope is malformed; `reason` is the short audit category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Envelope:
    cluster_id: str
    ceremony_id: str
    round: str
    sender: int
    sequence: int
    payload: bytes
    signature: bytes
    raw: bytes

    @property
    def signed_part(self) -> bytes:
        return self.raw[:-SIGNATURE_SIZE]

    def signed_by(self, identity_public_key: bytes) -> bool:
        return verify_identity_signature(
            identity_public_key, DOMAIN + self.signed_part, self.signature
        )


def _text(value: str, pattern: re.Pattern[str], what: str) -> bytes:
    if not pattern.fullmatch(value):
        raise EnvelopeError("malformed", f"{what} {value!r} is not allowed")
    return bytes((len(value),)) + value.encode()


def seal_envelope(
    cluster_id: str,
    ceremony_id: str,
    round_name: str,
    sender: int,
    sequence: int,
    payload: bytes,
    sign: Callable[[bytes], bytes],
) -> bytes:
    """Encode and sign an envelope (`sign` is the HSM identity signature)."""
    body = (
        bytes((ENVELOPE_VERSION,))
        + _text(cluster_id, _ID, "cluster id")
        + _text(ceremony_id, _ID, "ceremony id")
        + _text(round_name, _ROUND, "round")
        + struct.pack(">HQI", sender, sequence, len(payload))
        + payload
    )
    return body + sign(DOMAIN + body)


def open_envelope(data: bytes) -> Envelope:
    """Parse an envelope; the caller checks cluster, sender, signature and sequence."""
    if not data:
        raise EnvelopeError("malformed", "empty message")
    if data[0] != ENVELOPE_VERSION:
        raise EnvelopeError("unknown-version", f"protocol version {data[0]}")
    offset = 1
    texts = []
    for what, pattern in (("cluster id", _ID), ("ceremony id", _ID), ("round", _ROUND)):
        if offset >= len(data):
            raise EnvelopeError("malformed", f"truncated before the {what}")
        size = data[offset]
        chunk = data[offset + 1 : offset + 1 + size]
        if len(chunk) != size:
            raise EnvelopeError("malformed", f"truncated in the {what}")
        try:
            text = chunk.decode("ascii")
        except UnicodeDecodeError:
            raise EnvelopeError("malformed", f"{what} is not ASCII") from None
        if not pattern.fullmatch(text):
            raise EnvelopeError("malformed", f"{what} {text!r} is not allowed")
        texts.append(text)
        offset += 1 + size
    header = data[offset : offset + 14]
    if len(header) != 14:
        raise EnvelopeError("malformed", "truncated in the sender, sequence or length")
    sender, sequence, size = struct.unpack(">HQI", header)
    offset += 14
    payload = data[offset : offset + size]
    signature = data[offset + size :]
    if len(payload) != size or len(signature) != SIGNATURE_SIZE:
        raise EnvelopeError("malformed", "payload or signature has the wrong length")
    return Envelope(texts[0], texts[1], texts[2], sender, sequence, payload, signature, data)
