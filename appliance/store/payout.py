"""Burns this node verified, the withdrawals it agreed to, and the ledger of which burns
each payout transaction pays.

What a node records here is its own bookkeeping, not what keeps a burn from being paid
twice: that is the payout chain on Bitcoin (`appliance.chain.payout_chain`), which the
ledger serves with the burn ids of each transaction. A burn is queued once verified, bound
while a withdrawal this node agreed to (or a shallow link of the chain) pays it, and paid
once a link paying it has the confirmations payouts need.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
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

    def approvals_of_unknown_burns(self, approver: int) -> int:
        """How many approvals of `approver` wait for a burn this node does not hold."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM burn_approvals a WHERE a.approver = ?"
            " AND NOT EXISTS (SELECT 1 FROM burns b WHERE b.burn_id = a.burn_id)",
            (approver,),
        ).fetchone()
        return int(row[0])

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
        """Record a withdrawal this node agrees to sign, and one revision of it; the conflict,
        if the withdrawal or the revision was recorded with other content (then nothing is
        recorded). A burn or input in another withdrawal is no conflict: every withdrawal
        spends the main custody output, so Bitcoin lets at most one of them confirm."""
        with self.store.transaction():
            known = self.withdrawal(withdrawal_id)
            if known is not None:
                if (known.kind, known.burns, known.inputs) != (kind, tuple(burns), tuple(inputs)):
                    return f"withdrawal {withdrawal_id} was bound with other burns or inputs"
            else:
                missing = [b for b in burns if self.burn(b) is None]
                if missing:
                    return f"burn {missing[0]} is not known to this node"
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
                    "INSERT OR REPLACE INTO reserved_inputs VALUES (?, ?, ?)",
                    [(txid, vout, withdrawal_id) for txid, vout in inputs],
                )
                self.db.executemany(
                    "UPDATE burns SET state = 'bound', withdrawal = ? WHERE burn_id = ?"
                    " AND state != 'paid'",
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
            if kind == "withdrawal":
                self._record_paid_burns(revision.txid, burns, "agreed")
        return None

    # -- the ledger: which burns each payout transaction pays ---------------------------------
    def record_paid_burns(self, txid: str, burns: Sequence[str], source: str) -> None:
        """The burn ids a payout transaction commits to, checked against the commitment by
        the caller (and again by the payout chain whenever it reads them)."""
        with self.store.transaction():
            self._record_paid_burns(txid, burns, source)

    def _record_paid_burns(self, txid: str, burns: Sequence[str], source: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO payout_ledger VALUES (?, ?, ?, ?)",
            (txid, json.dumps(sorted(burns)), source, time.time()),
        )

    def paid_burns(self, txid: str) -> list[str] | None:
        row = self.db.execute("SELECT burns FROM payout_ledger WHERE txid = ?", (txid,)).fetchone()
        return None if row is None else [str(b) for b in json.loads(row[0])]

    def settle_burns(
        self, paid: Mapping[str, str], pending: Mapping[str, str | None]
    ) -> tuple[list[BurnRow], list[BurnRow]]:
        """Set every burn's state from the payout chain: `paid` maps the burns of links with
        the confirmations payouts need to their transaction; `pending` the burns of shallow
        links and of open withdrawals to the withdrawal, if this node holds one. Returns the
        burns newly paid, and those paid before that the chain no longer pays so (a reorg
        deeper than the confirmations payouts need)."""
        newly_paid: list[BurnRow] = []
        unpaid: list[BurnRow] = []
        with self.store.transaction():
            rows = self._burns(self.db.execute(f"{_BURN} ORDER BY received_at, burn_id"))
            for burn in rows:
                target: tuple[str, str | None, str | None]
                if burn.burn_id in paid:
                    target = ("paid", burn.withdrawal, paid[burn.burn_id])
                elif burn.burn_id in pending:
                    target = ("bound", pending[burn.burn_id] or burn.withdrawal, None)
                else:
                    target = ("queued", None, None)
                if target == (burn.state, burn.withdrawal, burn.paid_txid):
                    continue
                if target[0] == "paid":
                    newly_paid.append(burn)
                if burn.state == "paid":
                    unpaid.append(burn)
                self.db.execute(
                    "UPDATE burns SET state = ?, withdrawal = ?, paid_txid = ?, reported = 0"
                    " WHERE burn_id = ?",
                    (*target, burn.burn_id),
                )
        return newly_paid, unpaid

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
        """The withdrawal confirmed as `txid` (its burns are settled from the chain)."""
        with self.store.transaction():
            self.db.execute(
                "UPDATE withdrawals SET state = 'confirmed', confirmed_txid = ?,"
                " confirmed_height = ? WHERE id = ?",
                (txid, height, withdrawal_id),
            )
            self.db.execute("DELETE FROM reserved_inputs WHERE withdrawal = ?", (withdrawal_id,))

    def record_conflicted(self, withdrawal_id: str, spender: str) -> None:
        """An input was spent by a transaction that is none of the withdrawal's revisions:
        none of them can ever confirm. Its burns go back to what the chain says of them."""
        with self.store.transaction():
            self.db.execute(
                "UPDATE withdrawals SET state = 'conflicted', confirmed_txid = ? WHERE id = ?",
                (spender, withdrawal_id),
            )
            self.db.execute("DELETE FROM reserved_inputs WHERE withdrawal = ?", (withdrawal_id,))

    def consolidated_since(self, since: float, excluding: str | None = None) -> int:
        """What the consolidations this node agreed to since `since` move (withdrawals are
        counted from the payout chain instead)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM withdrawals WHERE created_at >= ?"
            " AND id IS NOT ? AND state != 'conflicted' AND kind = 'consolidation'",
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
