"""Mint attestations: the encoding round-trips and is strict in both directions, signatures
verify and refuse tampering, test-signing messages can never pass for attestations, FROST
signatures verify as plain Ed25519, and the README's worked example is what the code does."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.frost import ED25519_SHA512, trusted_dealer_keygen
from appliance.wire.attestation import (
    DOMAIN,
    NETWORKS,
    VERSION,
    AttestationError,
    MintAttestation,
    MintLedger,
    verify,
)
from tests.frost.helpers import sign_with

README = Path(__file__).resolve().parents[2] / "appliance" / "wire" / "README.md"
TEST_SIGNING_PREFIX = b"wire-mpc test-signing v1\0"  # appliance/ceremony/requests.py

EXAMPLE = MintAttestation(
    network="testnet",
    txid="f0" * 31 + "0a",
    vout=3,
    amount_sats=123_456,
    recipient="wire:alice",
    block_hash="00" * 4 + "ab" * 28,
    sequence=7,
)
HEADER = 114


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def with_byte(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


def with_recipient(data: bytes, recipient: bytes) -> bytes:
    """`data` with its recipient replaced by raw bytes and the length fixed up to match."""
    return data[: HEADER - 2] + struct.pack(">H", len(recipient)) + recipient


# Round trips


def test_layout_and_round_trip() -> None:
    data = EXAMPLE.encode()
    assert data.startswith(DOMAIN)
    assert len(DOMAIN) == 26
    assert data[26] == VERSION
    assert data[27] == NETWORKS.index("testnet") == 1
    assert data[28:60].hex() == EXAMPLE.txid  # displayed order: no reversal
    assert data[72:104].hex() == EXAMPLE.block_hash
    assert len(data) == HEADER + len("wire:alice")
    assert MintAttestation.decode(data) == EXAMPLE


@pytest.mark.parametrize(
    "changes",
    [{"network": network} for network in NETWORKS]
    + [
        {"vout": 2**32 - 1, "amount_sats": 21_000_000 * 10**8, "sequence": 2**64 - 1},
        {"vout": 0, "amount_sats": 1, "sequence": 0},
        {"recipient": "x" * 128},
        {"recipient": "𝔷" * 128},  # 4 UTF-8 bytes each: the longest recipient, 512 bytes
        {"recipient": "wire:zoë Ωμέγα 東京"},
    ],
)
def test_round_trips_at_the_bounds(changes: dict[str, Any]) -> None:
    attestation = replace(EXAMPLE, **changes)
    assert MintAttestation.decode(attestation.encode()) == attestation
    document = json.loads(json.dumps(attestation.to_json()))
    assert document["version"] == 1
    assert MintAttestation.from_json(document) == attestation


def test_json_form() -> None:
    assert EXAMPLE.to_json() == {
        "version": 1,
        "network": "testnet",
        "txid": EXAMPLE.txid,
        "vout": 3,
        "amount_sats": 123_456,
        "recipient": "wire:alice",
        "block_hash": EXAMPLE.block_hash,
        "sequence": 7,
    }


# Fields out of bounds


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("network", "Mainnet"),
        ("network", "liquid"),
        ("network", 0),
        ("txid", "F0" * 32),
        ("txid", "f0" * 31),
        ("txid", "f0" * 33),
        ("txid", "g0" * 32),
        ("txid", bytes(32)),
        ("vout", -1),
        ("vout", 2**32),
        ("vout", True),
        ("vout", "0"),
        ("amount_sats", 0),
        ("amount_sats", 21_000_000 * 10**8 + 1),
        ("amount_sats", 1.0),
        ("recipient", ""),
        ("recipient", "x" * 129),
        ("recipient", "wire:\nalice"),
        ("recipient", "wire:\u200balice"),  # zero-width space: format character
        ("recipient", "wire:\u00a0alice"),  # no-break space: a separator other than U+0020
        ("recipient", "wire:zoe\u0308"),  # e + combining diaeresis: NFD, not NFC
        ("recipient", b"wire:alice"),
        ("block_hash", "AB" * 32),
        ("block_hash", ""),
        ("sequence", -1),
        ("sequence", 2**64),
        ("sequence", None),
    ],
)
def test_fields_out_of_bounds_are_refused(field: str, value: Any) -> None:
    with pytest.raises(AttestationError, match=rf"^{field}: "):
        replace(EXAMPLE, **{field: value})
    document = EXAMPLE.to_json() | {field: value}
    if isinstance(value, bytes):
        return  # not JSON
    with pytest.raises(AttestationError, match=rf"^{field}: "):
        MintAttestation.from_json(json.loads(json.dumps(document)))


def test_from_json_is_strict() -> None:
    document = EXAMPLE.to_json()
    with pytest.raises(AttestationError, match=r"must be an object"):
        MintAttestation.from_json([document])
    for name in document:
        with pytest.raises(AttestationError, match=rf"^{name}: missing"):
            MintAttestation.from_json({k: v for k, v in document.items() if k != name})
    with pytest.raises(AttestationError, match=r"^signature: unknown field"):
        MintAttestation.from_json(document | {"signature": "00"})
    for version in (2, 0, "1", 1.0, True, None):
        with pytest.raises(AttestationError, match=r"^version: unsupported"):
            MintAttestation.from_json(document | {"version": version})


# Strict decoding


def test_decode_refuses_truncation_and_trailing_bytes() -> None:
    data = EXAMPLE.encode()
    for size in range(len(data)):
        with pytest.raises(AttestationError):
            MintAttestation.decode(data[:size])
    with pytest.raises(AttestationError, match=r"shorter than the 114-byte header"):
        MintAttestation.decode(data[:113])
    with pytest.raises(AttestationError, match=r"^recipient at byte 114: length says 10 bytes, 11"):
        MintAttestation.decode(data + b"\0")
    with pytest.raises(AttestationError, match=r"must be bytes"):
        MintAttestation.decode(bytearray(data))  # type: ignore[arg-type]


def test_decode_refuses_another_domain_version_or_network() -> None:
    data = EXAMPLE.encode()
    for offset in range(len(DOMAIN)):
        with pytest.raises(AttestationError, match=r"^domain at byte 0"):
            MintAttestation.decode(with_byte(data, offset, data[offset] ^ 0x20))
    for version in (0, 2, 255):
        with pytest.raises(
            AttestationError, match=rf"^version at byte 26: unknown version {version}"
        ):
            MintAttestation.decode(with_byte(data, 26, version))
    for code in (4, 255):
        with pytest.raises(
            AttestationError, match=rf"^network at byte 27: unknown network code {code}"
        ):
            MintAttestation.decode(with_byte(data, 27, code))


def test_decode_refuses_amounts_out_of_range() -> None:
    data = EXAMPLE.encode()
    for amount in (0, 21_000_000 * 10**8 + 1, 2**64 - 1):
        bad = data[:64] + struct.pack(">Q", amount) + data[72:]
        with pytest.raises(AttestationError, match=r"^amount_sats at byte 64: "):
            MintAttestation.decode(bad)


def test_decode_refuses_bad_recipient_lengths() -> None:
    data = EXAMPLE.encode()
    overrun = data[: HEADER - 2] + struct.pack(">H", 11) + data[HEADER:]
    with pytest.raises(AttestationError, match=r"length says 11 bytes, 10 follow"):
        MintAttestation.decode(overrun)
    with pytest.raises(AttestationError, match=r"^recipient length at byte 112: 0"):
        MintAttestation.decode(with_recipient(data, b""))
    with pytest.raises(AttestationError, match=r"^recipient length at byte 112: 513"):
        MintAttestation.decode(with_recipient(data, b"x" * 513))
    with pytest.raises(AttestationError, match=r"^recipient at byte 114: .*1 to 128 characters"):
        MintAttestation.decode(with_recipient(data, b"x" * 129))


@pytest.mark.parametrize(
    ("recipient", "offset"),
    [
        (b"wire:\xff", 119),  # never valid in UTF-8
        (b"wire:zo\xc3", 121),  # truncated sequence
        (b"wire:\xc0\xaf", 119),  # overlong encoding of "/"
        (b"wire:\xed\xa0\x80", 119),  # an encoded surrogate
    ],
)
def test_decode_refuses_invalid_utf8(recipient: bytes, offset: int) -> None:
    with pytest.raises(AttestationError, match=rf"^recipient at byte {offset}: invalid UTF-8"):
        MintAttestation.decode(with_recipient(EXAMPLE.encode(), recipient))


def test_decode_refuses_non_nfc_and_unprintable_recipients() -> None:
    data = EXAMPLE.encode()
    nfd = "wire:zoe\u0308".encode()
    with pytest.raises(AttestationError, match=r"^recipient at byte 114: .*NFC"):
        MintAttestation.decode(with_recipient(data, nfd))
    assert MintAttestation.decode(with_recipient(data, "wire:zoë".encode())).recipient == "wire:zoë"
    for control in (b"\x00", b"\t", b"\x7f", "\u202e".encode()):
        with pytest.raises(AttestationError, match=r"^recipient at byte 114: .*printable"):
            MintAttestation.decode(with_recipient(data, b"wire:" + control))


# Signatures


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_verify_accepts_a_real_signature(key: Ed25519PrivateKey) -> None:
    data = EXAMPLE.encode()
    assert verify(data, key.sign(data), public_bytes(key)) == EXAMPLE


def test_verify_refuses_any_flipped_bit(key: Ed25519PrivateKey) -> None:
    data = EXAMPLE.encode()
    signature = key.sign(data)
    group_key = public_bytes(key)
    for offset in range(len(data)):
        for bit in (0x01, 0x80):
            with pytest.raises(AttestationError, match=r"^signature: does not verify"):
                verify(with_byte(data, offset, data[offset] ^ bit), signature, group_key)
    for offset in range(len(signature)):
        for bit in (0x01, 0x80):
            with pytest.raises(AttestationError, match=r"^signature: does not verify"):
                verify(data, with_byte(signature, offset, signature[offset] ^ bit), group_key)
    other = public_bytes(Ed25519PrivateKey.generate())
    with pytest.raises(AttestationError, match=r"^signature: does not verify"):
        verify(data, signature, other)


def test_verify_refuses_malformed_arguments(key: Ed25519PrivateKey) -> None:
    data = EXAMPLE.encode()
    signature = key.sign(data)
    with pytest.raises(AttestationError, match=r"^signature: must be 64 bytes"):
        verify(data, signature[:63], public_bytes(key))
    with pytest.raises(AttestationError, match=r"^group_key: must be 32 bytes"):
        verify(data, signature, public_bytes(key) + b"\0")


def test_verify_refuses_signed_bytes_that_are_no_attestation(key: Ed25519PrivateKey) -> None:
    """A good signature over bytes that do not decode proves nothing about a deposit."""
    data = EXAMPLE.encode() + b"\0"
    with pytest.raises(AttestationError, match=r"^recipient at byte 114"):
        verify(data, key.sign(data), public_bytes(key))


def test_test_signing_messages_never_pass_for_attestations(key: Ed25519PrivateKey) -> None:
    """The attestation key also signs operators' test messages, prefixed with their own tag.
    Whatever the test message, even an attestation's own bytes, the signed bytes start with
    the test-signing tag, which differs from the attestation tag within both tags' length:
    they can never decode, and the signature never verifies over the attestation."""
    attestation = EXAMPLE.encode()
    assert TEST_SIGNING_PREFIX[:9] == DOMAIN[:9]
    assert TEST_SIGNING_PREFIX[9] != DOMAIN[9]
    group_key = public_bytes(key)
    for message in (attestation, attestation[len(DOMAIN) :], DOMAIN, b""):
        signed = TEST_SIGNING_PREFIX + message
        signature = key.sign(signed)
        with pytest.raises(AttestationError, match=r"^signature: does not verify"):
            verify(attestation, signature, group_key)
        with pytest.raises(AttestationError, match=r"^domain at byte 0|shorter than"):
            verify(signed, signature, group_key)


def test_frost_signatures_verify_as_ed25519() -> None:
    """A 2-of-3 threshold signature from the repository's FROST is a plain Ed25519 one."""
    shares, public = trusted_dealer_keygen(ED25519_SHA512, 2, 3)
    data = EXAMPLE.encode()
    for signers in ([1, 2], [1, 3], [2, 3]):
        signature = sign_with(shares, signers, data)
        assert verify(data, signature, public.group_key) == EXAMPLE
    with pytest.raises(AttestationError, match=r"^signature: does not verify"):
        verify(with_byte(data, 64, data[64] ^ 1), signature, public.group_key)


# The README's worked example


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Worked example\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def labelled_hex(section: str, label: str) -> bytes:
    match = re.search(rf"^- {re.escape(label)}[^`\n]*: `([0-9a-f]+)`$", section, re.MULTILINE)
    assert match, f"README example: no '{label}' line"
    return bytes.fromhex(match[1])


def test_readme_example_matches_the_code() -> None:
    section = readme_example()
    [fields] = fenced(section, "json")
    attestation = MintAttestation.from_json(json.loads(fields))
    encoded = attestation.encode()

    # The annotated dump: offset, hex, description on each line.
    [dump] = fenced(section, "text")
    offsets, chunks = zip(*(line.split()[:2] for line in dump.splitlines()), strict=True)
    assert bytes.fromhex("".join(chunks)) == encoded
    assert [int(o) for o in offsets] == [0, 26, 27, 28, 60, 64, 72, 104, 112, 114]
    assert f"Encoded message ({len(encoded)} bytes)" in section

    # The key really is RFC 8032 test 1's, and the signature is the one it makes.
    secret = labelled_hex(section, "Secret key")
    assert secret.hex() == "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    public_key = labelled_hex(section, "Public key")
    signature = labelled_hex(section, "Signature")
    private = Ed25519PrivateKey.from_private_bytes(secret)
    assert public_bytes(private) == public_key
    assert private.sign(encoded) == signature
    assert verify(encoded, signature, public_key) == attestation

    # The snippets run as printed and verify these very values.
    snippets = fenced(section, "python")
    assert len(snippets) in (1, 2)
    assert all(len(snippet.strip().splitlines()) <= 8 for snippet in snippets)
    namespace: dict[str, Any] = {}
    exec(snippets[0], namespace)  # noqa: S102 - our own README
    assert namespace["message"] == encoded
    assert namespace["public_key"] == public_key
    assert namespace["signature"] == signature
    if len(snippets) == 2:
        exec(snippets[1], namespace)  # noqa: S102


def test_the_mint_ledger_mints_once_per_output_whatever_the_sequence() -> None:
    key = Ed25519PrivateKey.generate()
    group_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ledger = MintLedger(group_key, "regtest")
    fields = ("regtest", "ab" * 32, 1, 5_000, "wire:alice", "cd" * 32)
    first = MintAttestation(*fields, 7).encode()
    again = MintAttestation(*fields, 8).encode()  # another number for the same output
    moved = MintAttestation(*fields[:5], "ef" * 32, 9).encode()  # after a reorg
    assert ledger.mint(first, key.sign(first)) is not None
    assert ledger.mint(again, key.sign(again)) is None
    assert ledger.mint(moved, key.sign(moved)) is None
    other = MintAttestation("regtest", "ab" * 32, 2, 5_000, "wire:alice", "cd" * 32, 7).encode()
    assert ledger.mint(other, key.sign(other)) is not None  # another output of the same tx
    mainnet = MintAttestation("mainnet", *fields[1:], 10).encode()
    with pytest.raises(AttestationError, match="this Wire system serves regtest"):
        ledger.mint(mainnet, key.sign(mainnet))
    with pytest.raises(AttestationError, match="does not verify"):
        ledger.mint(other, Ed25519PrivateKey.generate().sign(other))
