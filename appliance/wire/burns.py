"""Burn records of the Wire system, and the checks each must pass before the bridge pays it.

Every node verifies every record on its own: the feed it was read from is not trusted, only
the burn authority's Ed25519 signature over the record's canonical bytes (and, if configured,
an external proof verifier). What is refused raises `BurnRefused` with a stable reason code,
so the caller can audit it and move on to the next record; nothing refused is ever paid.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.chain.address import (
    DUST,
    HRP,
    AddressError,
    address_of_script,
    script_of_address,
    script_type,
)

__all__ = [
    "CANONICAL_PREFIX",
    "REASONS",
    "BurnPolicy",
    "BurnRecord",
    "BurnRefused",
    "VerifiedBurn",
    "verify_burn",
]

CANONICAL_PREFIX: Final = b"wire-mpc burn v1\0"
NETWORKS: Final = tuple(HRP)
REASONS: Final = (
    "malformed",
    "bad-signature",
    "external-proof-refused",
    "wrong-network",
    "bad-destination",
    "below-dust",
    "amount-out-of-bounds",
    "duplicate",
)
# An id goes into audit records, file names and log lines: a short, printable alphabet only.
_BURN_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SIGNATURE: Final = re.compile(r"[0-9a-fA-F]{128}")
_FIELDS: Final = frozenset(
    ("burn_id", "network", "destination", "amount_sats", "wire_height", "burned_at")
)
_INT_MAX: Final = 2**63 - 1
_MAX_DESTINATION: Final = 256
_MAX_STDERR: Final = 200
_SEGWIT: Final = frozenset(("p2tr", "p2wsh", "p2wpkh"))
# Stands for the burn id when the record does not carry a well-formed one.
UNKNOWN_ID: Final = "?"


class BurnRefused(Exception):
    """A burn record that must not be paid.

    `reason` is one of `REASONS`, stable for audit and metrics; the message says what was
    wrong and where (the field, the address, the verifier's complaint).
    """

    def __init__(self, burn_id: str, reason: str, message: str) -> None:
        super().__init__(f"burn {burn_id} refused ({reason}): {message}")
        self.burn_id = burn_id
        self.reason = reason
        self.message = message


def _id_of(value: Any) -> str:
    """The burn id of raw record data, if it is well-formed enough to be quoted safely."""
    burn_id = value.get("burn_id") if isinstance(value, dict) else None
    if isinstance(burn_id, str) and _BURN_ID.fullmatch(burn_id):
        return burn_id
    return UNKNOWN_ID


def _is_int(value: Any, low: int = 0, high: int = _INT_MAX) -> bool:
    # JSON true/false are Python ints; an amount of `true` satoshis is not an amount.
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _problem_of(fields: dict[str, Any]) -> str | None:
    """What is structurally wrong with a record's fields (`field: why`), or None."""
    burn_id = fields["burn_id"]
    if not isinstance(burn_id, str) or not _BURN_ID.fullmatch(burn_id):
        return "burn_id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
    if fields["network"] not in NETWORKS:
        return f"network: must be one of {', '.join(NETWORKS)}"
    destination = fields["destination"]
    if not isinstance(destination, str) or not 0 < len(destination) <= _MAX_DESTINATION:
        return f"destination: must be a string of 1 to {_MAX_DESTINATION} characters"
    for name in ("amount_sats", "wire_height", "burned_at"):
        if not _is_int(fields[name]):
            return f"{name}: must be an integer between 0 and {_INT_MAX}"
    return None


@dataclass(frozen=True)
class BurnRecord:
    """One burn on the Wire system, as its burn authority signed it.

    A record that exists is well-formed (the constructor checks it); whether it may be paid
    is `verify_burn`'s question.
    """

    burn_id: str
    network: str
    destination: str
    amount_sats: int
    wire_height: int
    burned_at: int

    def __post_init__(self) -> None:
        fields: dict[str, Any] = dict(vars(self))
        problem = _problem_of(fields)
        if problem is not None:
            raise BurnRefused(_id_of(fields), "malformed", f"record.{problem}")

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (the form the feed carries it in)."""
        return dataclasses.asdict(self)

    def canonical(self) -> bytes:
        """The bytes the burn authority signs.

        `b"wire-mpc burn v1\\0"` followed by the record's six fields as a JSON object with
        keys sorted, no whitespace (separators `,` and `:`), non-ASCII escaped as `\\uXXXX`
        and integers in plain decimal. The prefix keeps a burn signature from being valid
        for any other message the authority's key might sign; the fixed encoding means the
        signature is checked over what was parsed, not over the bytes the feed happened to
        send.
        """
        body = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return CANONICAL_PREFIX + body.encode("ascii")

    @classmethod
    def from_json(cls, value: Any) -> BurnRecord:
        """A record from parsed JSON: exactly the six fields, each of its type and range."""
        if not isinstance(value, dict):
            raise BurnRefused(UNKNOWN_ID, "malformed", "record: must be an object")
        missing = sorted(_FIELDS - value.keys())
        if missing:
            message = f"record: missing {', '.join(missing)}"
            raise BurnRefused(_id_of(value), "malformed", message)
        unknown = sorted(repr(key) for key in value.keys() - _FIELDS)
        if unknown:
            message = f"record: unknown field {', '.join(unknown)}"
            raise BurnRefused(_id_of(value), "malformed", message)
        return cls(**value)


@dataclass(frozen=True)
class BurnPolicy:
    """What this node accepts: the network it pays on, whose signature makes a burn, the
    amounts it pays, and optionally an external command that must vouch for each burn (for
    instance one checking a proof of the burn against the Wire chain itself).

    `proof_verifier` is an argv (no shell); it gets `{"record": {...}, "signature": "<hex>"}`
    on stdin and accepts by exiting 0 within `verifier_timeout` seconds.
    """

    network: str
    authority_key: bytes
    min_amount_sats: int = 10_000
    max_amount_sats: int = 100_000_000_000
    proof_verifier: tuple[str, ...] | None = None
    verifier_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}")
        if len(self.authority_key) != 32:
            raise ValueError("the burn authority key is a 32-byte Ed25519 public key")
        Ed25519PublicKey.from_public_bytes(self.authority_key)
        if not 0 <= self.min_amount_sats <= self.max_amount_sats:
            raise ValueError("amount bounds must satisfy 0 <= min_amount_sats <= max_amount_sats")
        if self.proof_verifier is not None and not self.proof_verifier:
            raise ValueError("proof_verifier must be None or a non-empty argv")
        if not self.verifier_timeout > 0:
            raise ValueError("verifier_timeout must be positive")


@dataclass(frozen=True)
class VerifiedBurn:
    """A burn that passed every check, with the output script it is to be paid to."""

    record: BurnRecord
    script: bytes
    script_type: str


def _parse_item(item: Any) -> tuple[BurnRecord, str]:
    if not isinstance(item, dict):
        raise BurnRefused(UNKNOWN_ID, "malformed", "entry: must be an object")
    burn_id = _id_of(item.get("record"))
    if set(item) != {"record", "signature"}:
        fields = ", ".join(sorted(repr(key) for key in item))
        message = f"entry: must have exactly record and signature, has {fields}"
        raise BurnRefused(burn_id, "malformed", message)
    signature = item["signature"]
    if not isinstance(signature, str):
        raise BurnRefused(burn_id, "malformed", "entry.signature: must be a string")
    return BurnRecord.from_json(item["record"]), signature


def _check_signature(record: BurnRecord, signature: str, policy: BurnPolicy) -> bytes:
    # bytes.fromhex would skip whitespace; only the exact 128 hex digits are a signature.
    if not _SIGNATURE.fullmatch(signature):
        message = "signature: must be 64 bytes as 128 hex digits"
        raise BurnRefused(record.burn_id, "bad-signature", message)
    raw = bytes.fromhex(signature)
    try:
        Ed25519PublicKey.from_public_bytes(policy.authority_key).verify(raw, record.canonical())
    except InvalidSignature:
        message = "signature: not the burn authority's signature of this record"
        raise BurnRefused(record.burn_id, "bad-signature", message) from None
    return raw


def _check_external_proof(
    record: BurnRecord, signature: bytes, argv: tuple[str, ...], timeout: float
) -> None:
    document = {"record": record.to_json(), "signature": signature.hex()}
    stdin = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    refused = "external-proof-refused"
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        message = f"proof verifier {argv[0]} did not answer within {timeout:g} s"
        raise BurnRefused(record.burn_id, refused, message) from None
    except (OSError, ValueError) as exc:
        message = f"proof verifier {argv[0]} could not be started: {exc}"
        raise BurnRefused(record.burn_id, refused, message) from None
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", "replace").strip()[:_MAX_STDERR]
        message = f"proof verifier {argv[0]} exited with status {done.returncode}: {stderr!r}"
        raise BurnRefused(record.burn_id, refused, message)


def _check_destination(record: BurnRecord, network: str) -> tuple[bytes, str]:
    try:
        script = script_of_address(record.destination, network)
    except AddressError as exc:
        raise BurnRefused(record.burn_id, "bad-destination", f"destination: {exc}") from None
    except Exception as exc:
        # The address parser is a third-party library; whatever else it raises on a string
        # it cannot parse still means the string is not an address we can pay.
        message = f"destination: {record.destination!r} could not be parsed: {exc!r}"
        raise BurnRefused(record.burn_id, "bad-destination", message) from None
    kind = script_type(script)
    if kind is None:
        message = f"destination: {record.destination!r} pays to a non-standard script"
        raise BurnRefused(record.burn_id, "bad-destination", message)
    if kind in _SEGWIT and address_of_script(script, network) != record.destination.lower():
        # The parser infers the output type from the program's length and drops the witness
        # version: a version 2 address with a 32-byte program would come back as a Taproot
        # script, a version 1 address with 20 bytes as P2WPKH. Paying either would send the
        # coins to an output the user did not name; only an address that is exactly the
        # encoding of the script we would pay to is accepted.
        message = f"destination: {record.destination!r} does not encode a {kind} output"
        raise BurnRefused(record.burn_id, "bad-destination", message)
    return script, kind


def verify_burn(item: Any, policy: BurnPolicy, seen: Callable[[str], bool]) -> VerifiedBurn:
    """Verify one feed entry `{"record": {...}, "signature": "<hex>"}` under `policy`.

    The checks run from the cheapest and least trusting to the most specific: shape, the
    authority's signature, the external proof, network, destination, amount, and last
    whether `seen` says this burn id was already taken on (so a replayed entry is reported
    as a duplicate only once everything else about it is known to be genuine). Bad input
    only ever raises `BurnRefused`.
    """
    record, signature_hex = _parse_item(item)
    signature = _check_signature(record, signature_hex, policy)
    if policy.proof_verifier is not None:
        _check_external_proof(record, signature, policy.proof_verifier, policy.verifier_timeout)
    if record.network != policy.network:
        message = f"network: the burn is for {record.network}, this bridge pays on {policy.network}"
        raise BurnRefused(record.burn_id, "wrong-network", message)
    script, kind = _check_destination(record, policy.network)
    if record.amount_sats < DUST[kind]:
        message = (
            f"amount_sats: {record.amount_sats} is below the {kind} dust limit of {DUST[kind]}"
        )
        raise BurnRefused(record.burn_id, "below-dust", message)
    if not policy.min_amount_sats <= record.amount_sats <= policy.max_amount_sats:
        message = (
            f"amount_sats: {record.amount_sats} is outside "
            f"{policy.min_amount_sats}..{policy.max_amount_sats}"
        )
        raise BurnRefused(record.burn_id, "amount-out-of-bounds", message)
    if seen(record.burn_id):
        message = "burn_id: this burn was already taken on"
        raise BurnRefused(record.burn_id, "duplicate", message)
    return VerifiedBurn(record, script, kind)
