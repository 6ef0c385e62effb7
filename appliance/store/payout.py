"""Burns this node verified and the transactions that pay them.

A burn is queued when this node has verified it, bound to one withdrawal when this node
first agrees to sign it, and paid when that withdrawal confirms. A withdrawal keeps its
burns and inputs forever; only its fee can change, by a revision spending the same inputs,
so two transactions paying one burn always conflict and at most one can confirm.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .database import Store

__all__ = ["BurnRow", "PayoutRecords", "RevisionRow", "WithdrawalRow"]

Outpoint = tuple[str, int]


@dataclass(frozen=True)
class BurnRow:
    burn_id: str
    entry: dict[str, Any]  # the feed entry as verified: {"record": {...}, "signature": ...}
    script: bytes
    amount: int
    state: str
    withdrawal: str | None
    paid_txid: str | None
    reported: bool


@dataclass(frozen=True)
class WithdrawalRow:
    id: str
    kind: str
    burns: tuple[str, ...]
    inputs: tuple[Outpoint, ...]
    amount: int
    state: str
    created_at: float
    broadcast_height: int | None
    confirmed_txid: str | None
    confirmed_height: int | None


@dataclass(frozen=True)
class RevisionRow:
    withdrawal: str
    revision: int
    txid: str
    fee_rate: float
    unsigned: bytes
    proposal: dict[str, Any]  # what was proposed, to propose it again after a crash
    signed: bytes | None


_BURN = "SELECT burn_id, entry, script, amount, state, withdrawal, paid_txid, reported FROM burns"
_WITHDRAWAL = (
    "SELECT id, kind, burns, inputs, amount, state, created_at, broadcast_height,"
    " confirmed_txid, confirmed_height FROM withdrawals"
)
_REVISION = (
    "SELECT withdrawal, revision, txid, fee_rate, unsigned, proposal, signed"
    " FROM withdrawal_revisions"
)
OPEN = ("proposed", "signed", "broadcast")


class PayoutRecords:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.connection

    # -- burns -------------------------------------------------------------------------------
    def seen(self, burn_id: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM burns WHERE burn_id = ?", (burn_id,)).fetchone()
            is not None
        )

    def queue(self, burn_id: str, entry: dict[str, Any], script: bytes, amount: int) -> bool:
        """Take a verified burn on; False if it was known already."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO burns (burn_id, entry, script, amount, state, received_at)"
            " VALUES (?, ?, ?, ?, 'queued', ?)",
            (burn_id, json.dumps(entry, sort_keys=True), script, amount, time.time()),
        )
        return cursor.rowcount == 1

    def burn(self, burn_id: str) -> BurnRow | None:
        rows = self._burns(self.db.execute(f"{_BURN} WHERE burn_id = ?", (burn_id,)))
        return rows[0] if rows else None

    def burns(
        self, state: str | None = None, limit: int = 1000, newest_first: bool = False
    ) -> list[BurnRow]:
        order = "DESC" if newest_first else ""
        where, parameters = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        return self._burns(self.db.execute(
            f"{_BURN} {where} ORDER BY received_at {order}, burn_id {order} LIMIT ?",
            (*parameters, limit),
        ))  # fmt: skip

    def unreported(self) -> list[BurnRow]:
        return self._burns(
            self.db.execute(f"{_BURN} WHERE state = 'paid' AND reported = 0 ORDER BY burn_id")
        )

    def mark_reported(self, burn_id: str) -> None:
        with self.store.transaction():
            self.db.execute("UPDATE burns SET reported = 1 WHERE burn_id = ?", (burn_id,))

    # -- approvals -----------------------------------------------------------------------------
    def add_approval(self, burn_id: str, approver: int, signature: bytes) -> None:
        with self.store.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO burn_approvals VALUES (?, ?, ?, ?)",
                (burn_id, approver, signature, time.time()),
            )

    def approvals(self, burn_id: str) -> dict[int, bytes]:
        rows = self.db.execute(
            "SELECT approver, signature FROM burn_approvals WHERE burn_id = ? ORDER BY approver",
            (burn_id,),
        )
        return {int(r[0]): bytes(r[1]) for r in rows}

    # -- withdrawals ---------------------------------------------------------------------------
    def bind(
        self,
        withdrawal_id: str,
        kind: str,
        burns: Sequence[str],
        inputs: Sequence[Outpoint],
        amount: int,
        revision: RevisionRow,
    ) -> str | None:
        """Bind burns and inputs to a withdrawal, and record one revision of it; the
        conflict, if a burn, an input or the revision is bound otherwise (then nothing is
        recorded)."""
        with self.store.transaction():
            known = self.withdrawal(withdrawal_id)
            if known is not None:
                if (known.kind, known.burns, known.inputs) != (kind, tuple(burns), tuple(inputs)):
                    return f"withdrawal {withdrawal_id} was bound with other burns or inputs"
            else:
                for burn_id in burns:
                    row = self.burn(burn_id)
                    if row is None:
                        return f"burn {burn_id} is not known to this node"
                    if row.state != "queued":
                        return f"burn {burn_id} is {row.state} in withdrawal {row.withdrawal}"
                for txid, vout in inputs:
                    other = self.db.execute(
                        "SELECT withdrawal FROM reserved_inputs WHERE txid = ? AND vout = ?",
                        (txid, vout),
                    ).fetchone()
                    if other is not None:
                        return f"input {txid}:{vout} is spent by withdrawal {other[0]}"
            existing = self.revision(withdrawal_id, revision.revision)
            if existing is not None:
                if existing.txid != revision.txid:
                    return (
                        f"revision {revision.revision} of {withdrawal_id} was bound to "
                        f"transaction {existing.txid}"
                    )
                return None
            if known is None:
                self.db.execute(
                    "INSERT INTO withdrawals (id, kind, burns, inputs, amount, state, created_at)"
                    " VALUES (?, ?, ?, ?, ?, 'proposed', ?)",
                    (
                        withdrawal_id,
                        kind,
                        json.dumps(list(burns)),
                        json.dumps([list(i) for i in inputs]),
                        amount,
                        time.time(),
                    ),
                )
                self.db.executemany(
                    "INSERT INTO reserved_inputs VALUES (?, ?, ?)",
                    [(txid, vout, withdrawal_id) for txid, vout in inputs],
                )
                self.db.executemany(
                    "UPDATE burns SET state = 'bound', withdrawal = ? WHERE burn_id = ?",
                    [(withdrawal_id, burn_id) for burn_id in burns],
                )
            self.db.execute(
                "INSERT INTO withdrawal_revisions VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (
                    withdrawal_id,
                    revision.revision,
                    revision.txid,
                    revision.fee_rate,
                    revision.unsigned,
                    json.dumps(revision.proposal, sort_keys=True),
                ),
            )
        return None

    def withdrawal(self, withdrawal_id: str) -> WithdrawalRow | None:
        rows = self._withdrawals(self.db.execute(f"{_WITHDRAWAL} WHERE id = ?", (withdrawal_id,)))
        return rows[0] if rows else None

    def withdrawals(
        self, states: Iterable[str] | None = None, limit: int = 1000
    ) -> list[WithdrawalRow]:
        if states is None:
            return self._withdrawals(
                self.db.execute(f"{_WITHDRAWAL} ORDER BY created_at DESC LIMIT ?", (limit,))
            )
        wanted = list(states)
        marks = ", ".join("?" * len(wanted))
        return self._withdrawals(
            self.db.execute(
                f"{_WITHDRAWAL} WHERE state IN ({marks}) ORDER BY created_at, id LIMIT ?",
                (*wanted, limit),
            )
        )

    def revision(self, withdrawal_id: str, revision: int) -> RevisionRow | None:
        rows = self._revisions(
            self.db.execute(
                f"{_REVISION} WHERE withdrawal = ? AND revision = ?", (withdrawal_id, revision)
            )
        )
        return rows[0] if rows else None

    def revisions(self, withdrawal_id: str) -> list[RevisionRow]:
        return self._revisions(
            self.db.execute(f"{_REVISION} WHERE withdrawal = ? ORDER BY revision", (withdrawal_id,))
        )

    def latest(self, withdrawal_id: str) -> RevisionRow:
        return self.revisions(withdrawal_id)[-1]

    def record_signed(self, withdrawal_id: str, revision: int, signed: bytes) -> None:
        """The signed transaction of a revision: from now on it may reach the network."""
        with self.store.transaction():
            self.db.execute(
                "UPDATE withdrawal_revisions SET signed = ? WHERE withdrawal = ? AND revision = ?",
                (signed, withdrawal_id, revision),
            )
            self.db.execute(
                "UPDATE withdrawals SET state = 'signed' WHERE id = ? AND state IN"
                " ('proposed', 'broadcast')",
                (withdrawal_id,),
            )

    def record_broadcast(self, withdrawal_id: str, height: int) -> None:
        with self.store.transaction():
            self.db.execute(
                "UPDATE withdrawals SET state = 'broadcast', broadcast_height = ? WHERE id = ?"
                " AND state IN ('proposed', 'signed')",
                (height, withdrawal_id),
            )

    def record_confirmed(self, withdrawal_id: str, txid: str, height: int) -> None:
        """The withdrawal confirmed as `txid`: its burns are paid."""
        with self.store.transaction():
            self.db.execute(
                "UPDATE withdrawals SET state = 'confirmed', confirmed_txid = ?,"
                " confirmed_height = ? WHERE id = ?",
                (txid, height, withdrawal_id),
            )
            self.db.execute(
                "UPDATE burns SET state = 'paid', paid_txid = ? WHERE withdrawal = ?",
                (txid, withdrawal_id),
            )
            self.db.execute("DELETE FROM reserved_inputs WHERE withdrawal = ?", (withdrawal_id,))

    def record_conflicted(self, withdrawal_id: str, spender: str) -> None:
        """An input was spent by a transaction that is none of the withdrawal's revisions:
        none of them can ever confirm. Its burns stay bound (an operator decides)."""
        with self.store.transaction():
            self.db.execute(
                "UPDATE withdrawals SET state = 'conflicted', confirmed_txid = ? WHERE id = ?",
                (spender, withdrawal_id),
            )

    def outflow_since(self, since: float, excluding: str | None = None) -> int:
        row = self.db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM withdrawals WHERE created_at >= ?"
            " AND id IS NOT ? AND state != 'conflicted'",
            (since, excluding),
        ).fetchone()
        return int(row[0])

    def reserved(self) -> set[Outpoint]:
        return {
            (r[0], int(r[1])) for r in self.db.execute("SELECT txid, vout FROM reserved_inputs")
        }

    @staticmethod
    def _burns(rows: Iterable[Any]) -> list[BurnRow]:
        return [
            BurnRow(r[0], json.loads(r[1]), bytes(r[2]), int(r[3]), r[4], r[5], r[6], bool(r[7]))
            for r in rows
        ]

    @staticmethod
    def _withdrawals(rows: Iterable[Any]) -> list[WithdrawalRow]:
        return [
            WithdrawalRow(
                r[0],
                r[1],
                tuple(json.loads(r[2])),
                tuple((str(t), int(v)) for t, v in json.loads(r[3])),
                int(r[4]),
                r[5],
                float(r[6]),
                r[7],
                r[8],
                r[9],
            )
            for r in rows
        ]

    @staticmethod
    def _revisions(rows: Iterable[Any]) -> list[RevisionRow]:
        return [
            RevisionRow(
                r[0],
                int(r[1]),
                r[2],
                float(r[3]),
                bytes(r[4]),
                json.loads(r[5]),
                None if r[6] is None else bytes(r[6]),
            )
            for r in rows
        ]
