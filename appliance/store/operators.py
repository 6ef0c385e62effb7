"""The operator registry's rows: each operator of this node with its role, whether it is
disabled, its TOTP seed as the HSM sealed it, and the last TOTP step it had accepted."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from .database import Store

__all__ = ["OperatorRecords", "OperatorRow"]


@dataclass(frozen=True)
class OperatorRow:
    username: str
    role: str
    totp_sealed: bytes
    disabled: bool
    created_at: float
    created_by: str | None
    last_step: int


class OperatorRecords:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.connection

    def get(self, username: str) -> OperatorRow | None:
        row = self.db.execute("SELECT * FROM operators WHERE username = ?", (username,)).fetchone()
        return None if row is None else _row(row)

    def all(self) -> list[OperatorRow]:
        rows = self.db.execute("SELECT * FROM operators ORDER BY created_at, username")
        return [_row(row) for row in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM operators").fetchone()[0])

    def enabled_admins(self) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM operators WHERE role = 'admin' AND disabled = 0"
        ).fetchone()
        return int(row[0])

    def add(self, username: str, role: str, totp_sealed: bytes, created_by: str | None) -> float:
        now = time.time()
        with self.store.transaction():
            self.db.execute(
                "INSERT INTO operators (username, role, totp_sealed, created_at, created_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (username, role, totp_sealed, now, created_by),
            )
        return now

    def disable(self, username: str) -> None:
        with self.store.transaction():
            self.db.execute("UPDATE operators SET disabled = 1 WHERE username = ?", (username,))

    def accept_step(self, username: str, step: int) -> bool:
        """Record `step` as the last one accepted, only if it is later than the one recorded
        (durably, before the command it proves runs): False if it is not."""
        with self.store.transaction():
            done = self.db.execute(
                "UPDATE operators SET last_step = ? WHERE username = ? AND last_step < ?",
                (step, username, step),
            )
        return done.rowcount == 1


def _row(row: sqlite3.Row) -> OperatorRow:
    return OperatorRow(
        username=row["username"],
        role=row["role"],
        totp_sealed=bytes(row["totp_sealed"]),
        disabled=bool(row["disabled"]),
        created_at=float(row["created_at"]),
        created_by=row["created_by"],
        last_step=int(row["last_step"]),
    )
