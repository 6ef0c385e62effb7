"""What a withdrawal says on chain about the burns it pays: one OP_RETURN output, second in
every withdrawal, carrying a digest of the sorted burn ids.

Any node, from its own chain view alone, then knows which digest each withdrawal of the
payout chain committed to; a list of burn ids from anyone (a peer, its own records) is
believed only if it hashes to that digest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from appliance.frost import tagged_hash

from .transaction import Transaction

__all__ = [
    "COMMITMENT_INDEX",
    "MAGIC",
    "burns_digest",
    "commitment_of",
    "commitment_script",
]

MAGIC: Final = b"wmpc"
"""Marks the bridge's commitments in a hex dump; the digest alone is what is checked."""
COMMITMENT_INDEX: Final = 1
"""Output 0 of a withdrawal is the next main custody output, output 1 its commitment."""
_TAG: Final = "wire-mpc/paid-burns"
_OP_RETURN: Final = 0x6A


def burns_digest(burn_ids: Iterable[str]) -> bytes:
    """The 32-byte digest of a set of burn ids: sorted, each length-prefixed, so no two sets
    share an encoding (ids are ASCII, at most 128 characters)."""
    ordered = sorted(burn_ids)
    if len(set(ordered)) != len(ordered):
        raise ValueError("a burn id appears twice")
    body = b"".join(len(i).to_bytes(1, "big") + i.encode("ascii") for i in ordered)
    return tagged_hash(_TAG, body)


def commitment_script(burn_ids: Iterable[str]) -> bytes:
    """OP_RETURN <magic ‖ digest>: 38 bytes, within every Bitcoin Core relay policy's limit
    (83 bytes before v30)."""
    data = MAGIC + burns_digest(burn_ids)
    return bytes((_OP_RETURN, len(data))) + data


def commitment_of(tx: Transaction) -> bytes | None:
    """The digest a transaction commits to in the bridge's place for it, or None."""
    if len(tx.outputs) <= COMMITMENT_INDEX:
        return None
    output = tx.outputs[COMMITMENT_INDEX]
    script = output.script_pubkey
    if output.amount != 0 or len(script) != 38 or script[:6] != bytes((_OP_RETURN, 36)) + MAGIC:
        return None
    return script[6:]
