"""The attestations this node bound and signed: each deposit bound to one sequence number,
forever, and the signed ones kept as the outbox the Wire system reads."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .database import Store

__all__ = ["AttestationRecords", "AttestationRow"]

_SELECT = "SELECT sequence, txid, vout, message, signature, request_id FROM attestations"


class Attestation(Protocol):
    @property
    def txid(self) -> str: ...

    @property
    def vout(self) -> int: ...

    @property
    def sequence(self) -> int: ...

    def encode(self) -> bytes: ...


@dataclass(frozen=True)
class AttestationRow:
    sequence: int
    txid: str
    vout: int
    message: bytes
    signature: bytes | None
    request_id: str | None


class AttestationRecords:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.connection

    def bind(self, attestations: Sequence[Attestation]) -> str | None:
        """Bind each deposit to its sequence; the conflict, if one was bound otherwise
        (then nothing is recorded)."""
        with self.store.transaction():
            for a in attestations:
                row = self.db.execute(
                    "SELECT sequence, message FROM attestations WHERE txid = ? AND vout = ?",
                    (a.txid, a.vout),
                ).fetchone()
                if row is not None and (row[0] != a.sequence or bytes(row[1]) != a.encode()):
                    return (f"deposit {a.txid}:{a.vout} is bound to attestation {row[0]}, "
                            f"not {a.sequence}")  # fmt: skip
                other = self.db.execute(
                    "SELECT txid, vout FROM attestations WHERE sequence = ?", (a.sequence,)
                ).fetchone()
                if other is not None and (other[0], other[1]) != (a.txid, a.vout):
                    return f"attestation {a.sequence} is bound to deposit {other[0]}:{other[1]}"
            for a in attestations:
                self.db.execute(
                    "INSERT OR IGNORE INTO attestations (sequence, txid, vout, message, state,"
                    " bound_at) VALUES (?, ?, ?, ?, 'bound', ?)",
                    (a.sequence, a.txid, a.vout, a.encode(), time.time()),
                )
        return None

    def next_sequence(self) -> int:
        row = self.db.execute("SELECT MAX(sequence) FROM attestations").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def bound(self, txid: str, vout: int) -> int | None:
        row = self.db.execute(
            "SELECT sequence FROM attestations WHERE txid = ? AND vout = ?", (txid, vout)
        ).fetchone()
        return None if row is None else int(row[0])

    def unsigned(self) -> list[AttestationRow]:
        return self._rows(self.db.execute(
            f"{_SELECT} WHERE state = 'bound' ORDER BY sequence"
        ))  # fmt: skip

    def signed(self, after: int, limit: int) -> list[AttestationRow]:
        return self._rows(self.db.execute(
            f"{_SELECT} WHERE state = 'signed' AND sequence > ? ORDER BY sequence LIMIT ?",
            (after, limit),
        ))  # fmt: skip

    def record_signature(self, sequence: int, signature: bytes, request_id: str) -> None:
        self.db.execute(
            "UPDATE attestations SET signature = ?, state = 'signed', request_id = ?,"
            " signed_at = ? WHERE sequence = ?",
            (signature, request_id, time.time(), sequence),
        )

    @staticmethod
    def _rows(rows: Iterable[Any]) -> list[AttestationRow]:
        return [
            AttestationRow(int(r[0]), r[1], int(r[2]), bytes(r[3]),
                           None if r[4] is None else bytes(r[4]), r[5])
            for r in rows
        ]  # fmt: skip
