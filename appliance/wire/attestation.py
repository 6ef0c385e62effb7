"""Mint attestations: the message the cluster signs with the threshold Ed25519 key when a
deposit is confirmed, and on which the 0BTC Wire system mints.

An attestation is a fixed binary layout rather than JSON so that each fact has exactly one
byte string: a verifier on the Wire side cannot be handed two different encodings of one
deposit, and nobody has to agree on a JSON canonicalisation. The layout is documented byte
for byte in `README.md` beside this module.

Every `MintAttestation` that exists is valid: the fields are checked when it is built, so
`encode` cannot fail and `decode(a.encode()) == a` always holds.
"""

from __future__ import annotations

import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.strictjson import StrictObject

__all__ = [
    "DOMAIN",
    "NETWORKS",
    "VERSION",
    "AttestationError",
    "MintAttestation",
    "MintLedger",
    "verify",
]

NETWORKS = ("mainnet", "testnet", "signet", "regtest")
"""The Bitcoin networks, in the order of their one-byte codes (0, 1, 2, 3)."""

DOMAIN = b"wire-mpc mint-attestation\0"
"""The first bytes of every attestation. The attestation key signs nothing else that starts
with them (test messages start with b"wire-mpc test-signing v1\\0"), so a signature over an
attestation is never a signature over anything else, and the reverse."""

VERSION = 1

MAX_AMOUNT_SATS = 21_000_000 * 100_000_000
MAX_RECIPIENT_CHARACTERS = 128
MAX_RECIPIENT_BYTES = 4 * MAX_RECIPIENT_CHARACTERS  # UTF-8 spends at most 4 bytes a character

# Everything between the domain tag and the recipient, big-endian, no padding: version (byte
# 26), network (27), txid (28), vout (60), amount (64), block hash (72), sequence (104),
# recipient length (112). The recipient's UTF-8 bytes follow from byte 114.
_FIXED = struct.Struct(">BB32sIQ32sQH")
HEADER_SIZE = len(DOMAIN) + _FIXED.size
"""Bytes before the recipient's UTF-8 bytes (114)."""

_LOWER_HEX = frozenset("0123456789abcdef")


class AttestationError(ValueError):
    """A malformed or non-canonical attestation; the message names the field (and, for
    bytes, the offset) at fault."""


def _network(value: Any) -> None:
    if not isinstance(value, str) or value not in NETWORKS:
        raise ValueError(f"must be one of {', '.join(NETWORKS)}")


def _hash_hex(value: Any) -> None:
    # Lowercase only: "AB.." and "ab.." would be two spellings of one fact.
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _LOWER_HEX:
        raise ValueError("must be 64 lowercase hex characters")


def _integer(low: int, high: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        # bool is an int in Python; True as an amount is a bug upstream, not 1 satoshi.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")

    return check


def _recipient(value: Any) -> None:
    """Printable (no control, format, separator other than the ASCII space, private-use or
    unassigned characters) and NFC: the characters an operator sees are the characters
    signed, and one visible name has one encoding."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_RECIPIENT_CHARACTERS:
        raise ValueError(f"must be a string of 1 to {MAX_RECIPIENT_CHARACTERS} characters")
    if not value.isprintable():
        raise ValueError("must contain printable characters only")
    if not unicodedata.is_normalized("NFC", value):
        raise ValueError("must be in Unicode normalisation form NFC")


_CHECKS: dict[str, Callable[[Any], None]] = {
    "network": _network,
    "txid": _hash_hex,
    "vout": _integer(0, 2**32 - 1),
    "amount_sats": _integer(1, MAX_AMOUNT_SATS),
    "recipient": _recipient,
    "block_hash": _hash_hex,
    "sequence": _integer(0, 2**64 - 1),
}


def _check(name: str, value: Any, where: str = "") -> None:
    try:
        _CHECKS[name](value)
    except ValueError as exc:
        raise AttestationError(f"{name}{where}: {exc}") from None


@dataclass(frozen=True)
class MintAttestation:
    """The cluster's statement that `amount_sats` were deposited for `recipient` in output
    `vout` of `txid`, confirmed in block `block_hash` of `network`.

    `sequence` numbers the cluster's attestations so that the Wire side can notice one it
    never received; keeping it monotonic is the caller's job, not this class's.
    """

    network: str
    txid: str
    vout: int
    amount_sats: int
    recipient: str
    block_hash: str
    sequence: int

    def __post_init__(self) -> None:
        for name in _CHECKS:
            _check(name, getattr(self, name))

    def encode(self) -> bytes:
        """The exact bytes that are signed."""
        recipient = self.recipient.encode("utf-8")
        return (
            DOMAIN
            + _FIXED.pack(
                VERSION,
                NETWORKS.index(self.network),
                bytes.fromhex(self.txid),
                self.vout,
                self.amount_sats,
                bytes.fromhex(self.block_hash),
                self.sequence,
                len(recipient),
            )
            + recipient
        )

    @classmethod
    def decode(cls, data: bytes) -> MintAttestation:
        """The attestation `data` encodes, refusing any byte string `encode` would not
        produce: a verifier that accepted a second spelling of a fact could be made to
        count it twice."""
        if not isinstance(data, bytes):
            raise AttestationError("attestation: must be bytes")
        if len(data) < HEADER_SIZE:
            raise AttestationError(
                f"attestation: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header"
            )
        if data[: len(DOMAIN)] != DOMAIN:
            raise AttestationError("domain at byte 0: not the mint-attestation domain tag")
        version, code, txid, vout, amount, block_hash, sequence, size = _FIXED.unpack_from(
            data, len(DOMAIN)
        )
        if version != VERSION:
            raise AttestationError(f"version at byte 26: unknown version {version}")
        if code >= len(NETWORKS):
            raise AttestationError(f"network at byte 27: unknown network code {code}")
        _check("amount_sats", amount, " at byte 64")
        if not 1 <= size <= MAX_RECIPIENT_BYTES:
            raise AttestationError(
                f"recipient length at byte 112: {size}, must be 1 to {MAX_RECIPIENT_BYTES}"
            )
        if len(data) != HEADER_SIZE + size:
            raise AttestationError(
                f"recipient at byte {HEADER_SIZE}: length says {size} bytes, "
                f"{len(data) - HEADER_SIZE} follow"
            )
        try:
            recipient = data[HEADER_SIZE:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AttestationError(
                f"recipient at byte {HEADER_SIZE + exc.start}: invalid UTF-8"
            ) from None
        _check("recipient", recipient, f" at byte {HEADER_SIZE}")
        return cls(
            network=NETWORKS[code],
            txid=txid.hex(),
            vout=vout,
            amount_sats=amount,
            recipient=recipient,
            block_hash=block_hash.hex(),
            sequence=sequence,
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON object for the APIs, with the format's version."""
        return {"version": VERSION} | {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, value: Any) -> MintAttestation:
        """The attestation `to_json` produced; missing, unknown or ill-typed fields are
        refused with the field's name."""
        document = StrictObject(value, "", AttestationError)
        version = document.take("version", lambda v, path: v)
        if type(version) is not int or version != VERSION:
            raise AttestationError(f"version: unsupported version {version!r}")
        values = {f.name: document.take(f.name, lambda v, path: v) for f in fields(cls)}
        document.done()
        return cls(**values)


def verify(attestation_bytes: bytes, signature: bytes, group_key: bytes) -> MintAttestation:
    """The attestation in `attestation_bytes`, once its Ed25519 `signature` verifies under
    the 32-byte `group_key` (a FROST(Ed25519, SHA-512) signature is a plain RFC 8032 one).

    The signature is checked before the bytes are parsed, so nothing unauthenticated reaches
    the decoder; the bytes are still decoded strictly, since a valid signature over bytes
    that are not an attestation proves nothing about a deposit.
    """
    if not isinstance(group_key, bytes) or len(group_key) != 32:
        raise AttestationError("group_key: must be 32 bytes")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise AttestationError("signature: must be 64 bytes")
    if not isinstance(attestation_bytes, bytes):
        raise AttestationError("attestation: must be bytes")
    try:
        key = Ed25519PublicKey.from_public_bytes(group_key)
        key.verify(signature, attestation_bytes)
    except InvalidSignature:
        raise AttestationError("signature: does not verify under the group key") from None
    except ValueError as exc:
        raise AttestationError(f"group_key: not an Ed25519 public key ({exc})") from None
    return MintAttestation.decode(attestation_bytes)


class MintLedger:
    """The rule the Wire system must apply, as a reference: verify under the pinned group key,
    parse strictly, check the network, and mint at most once per deposit output, keyed on
    (network, txid, vout) and nothing else.

    The cluster may sign more than one attestation of a deposit: a coordinator with t-1
    colluders can have two disjoint sets of honest nodes each sign one (under different
    sequence numbers), and after a reorg the same output is confirmed in another block. All
    of them state the same output, amount and recipient, which every honest signer checked
    against its own chain; only the mint-once rule makes them one mint.
    """

    def __init__(self, group_key: bytes, network: str) -> None:
        if network not in NETWORKS:
            raise AttestationError(f"network: must be one of {', '.join(NETWORKS)}")
        self.group_key = group_key
        self.network = network
        self.minted: dict[tuple[str, str, int], MintAttestation] = {}

    def mint(self, attestation_bytes: bytes, signature: bytes) -> MintAttestation | None:
        """The attestation to mint for, or None if its deposit output was minted already;
        raises `AttestationError` for anything that is not a valid attestation of this
        network."""
        attestation = verify(attestation_bytes, signature, self.group_key)
        if attestation.network != self.network:
            raise AttestationError(
                f"network: the attestation is for {attestation.network}, this Wire system "
                f"serves {self.network}"
            )
        output = (attestation.network, attestation.txid, attestation.vout)
        if output in self.minted:
            return None
        self.minted[output] = attestation
        return attestation
