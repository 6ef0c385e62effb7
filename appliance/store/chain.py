"""What the node knows of the Bitcoin chain: every block it saw (canonical or not), the
outputs paying and the inputs spending the custody key's scripts per block, the deposits it
reported, and chain events (reorgs, forks). Flags (minting paused) are the store's.

Outputs and spends are recorded per block, so a reorg only flips `canonical` flags: the
custody UTXO set is always "outputs in canonical blocks not spent in canonical blocks".
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .database import Store

__all__ = ["ChainRecords", "DepositRow", "OutputRow", "WatchedScript"]


@dataclass(frozen=True)
class WatchedScript:
    script: bytes
    kind: str
    label: str
    tweaks: list[list[Any]]


@dataclass(frozen=True)
class OutputRow:
    txid: str
    vout: int
    amount: int
    script: bytes
    block_hash: str
    height: int


@dataclass(frozen=True)
class DepositRow:
    txid: str
    vout: int
    recipient: str
    amount: int
    block_hash: str
    height: int
    state: str


class ChainRecords:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.connection

    # -- blocks ------------------------------------------------------------------------------
    def tip(self) -> tuple[str, int] | None:
        row = self.db.execute(
            "SELECT hash, height FROM blocks WHERE canonical = 1 ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def canonical_at(self, height: int) -> str | None:
        row = self.db.execute(
            "SELECT hash FROM blocks WHERE canonical = 1 AND height = ?", (height,)
        ).fetchone()
        return None if row is None else str(row[0])

    def is_canonical(self, block_hash: str) -> bool:
        row = self.db.execute(
            "SELECT canonical FROM blocks WHERE hash = ?", (block_hash,)
        ).fetchone()
        return row is not None and row[0] == 1

    def known(self, block_hash: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
            is not None
        )

    def disconnect_above(self, height: int) -> list[str]:
        """Unmark the canonical blocks above `height`; returns their hashes, highest first."""
        hashes = [
            r[0]
            for r in self.db.execute(
                "SELECT hash FROM blocks WHERE canonical = 1 AND height > ? ORDER BY height DESC",
                (height,),
            )
        ]
        self.db.execute(
            "UPDATE blocks SET canonical = 0 WHERE canonical = 1 AND height > ?", (height,)
        )
        return hashes

    def connect(self, block_hash: str, height: int, previous: str) -> bool:
        """Mark a block canonical; True if it was seen (and scanned) before."""
        seen = self.known(block_hash)
        if seen:
            self.db.execute("UPDATE blocks SET canonical = 1 WHERE hash = ?", (block_hash,))
        else:
            self.db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, 1, ?)",
                (block_hash, height, previous, time.time()),
            )
        return seen

    # -- watched scripts, outputs and spends --------------------------------------------
    def watch(self, script: bytes, kind: str, label: str, tweaks: list[list[Any]]) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO watched_scripts VALUES (?, ?, ?, ?, ?)",
            (script, kind, label, json.dumps(tweaks), time.time()),
        )

    def watched(self) -> dict[bytes, WatchedScript]:
        rows = self.db.execute("SELECT script, kind, label, tweaks FROM watched_scripts")
        return {bytes(r[0]): WatchedScript(bytes(r[0]), r[1], r[2], json.loads(r[3])) for r in rows}

    def add_outputs(self, block_hash: str, outputs: Iterable[tuple[str, int, int, bytes]]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO outputs VALUES (?, ?, ?, ?, ?)",
            [(txid, vout, block_hash, amount, script) for txid, vout, amount, script in outputs],
        )

    def add_spends(self, block_hash: str, spends: Iterable[tuple[str, int, str]]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO spends VALUES (?, ?, ?, ?)",
            [(txid, vout, block_hash, spender) for txid, vout, spender in spends],
        )

    def output_canonical(self, txid: str, vout: int) -> bool:
        """Whether the output exists in a canonical block (spent or not)."""
        row = self.db.execute(
            "SELECT 1 FROM outputs o JOIN blocks b ON b.hash = o.block_hash AND b.canonical = 1"
            " WHERE o.txid = ? AND o.vout = ?",
            (txid, vout),
        ).fetchone()
        return row is not None

    def spender(self, txid: str, vout: int) -> tuple[str, int] | None:
        """The transaction spending an output in a canonical block, and that block's height."""
        row = self.db.execute(
            "SELECT s.spending_txid, b.height FROM spends s"
            " JOIN blocks b ON b.hash = s.block_hash AND b.canonical = 1"
            " WHERE s.txid = ? AND s.vout = ?",
            (txid, vout),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def add_spenders(self, spenders: Iterable[tuple[str, bytes | None, int]]) -> None:
        """What the payout chain needs of transactions spending watched outputs: the
        commitment of their output 1 (if any) and what they pay out beside output 0."""
        self.db.executemany(
            "INSERT OR IGNORE INTO spending_transactions VALUES (?, ?, ?)", list(spenders)
        )

    def spend_facts(self, txid: str, vout: int) -> tuple[str, int, float, bytes | None, int] | None:
        """The canonical spender of an output: its txid, block height and the block's
        `seen_at`, its commitment and what it pays out."""
        row = self.db.execute(
            "SELECT s.spending_txid, b.height, b.seen_at, t.commitment, t.paid_out FROM spends s"
            " JOIN blocks b ON b.hash = s.block_hash AND b.canonical = 1"
            " JOIN spending_transactions t ON t.txid = s.spending_txid"
            " WHERE s.txid = ? AND s.vout = ?",
            (txid, vout),
        ).fetchone()
        if row is None:
            return None
        commitment = None if row[3] is None else bytes(row[3])
        return str(row[0]), int(row[1]), float(row[2]), commitment, int(row[4])

    def custody_output(self, txid: str, vout: int) -> OutputRow | None:
        """The output if it pays the custody address itself, in a canonical block."""
        row = self.db.execute(
            "SELECT o.txid, o.vout, o.amount, o.script, o.block_hash, b.height FROM outputs o"
            " JOIN blocks b ON b.hash = o.block_hash AND b.canonical = 1"
            " JOIN watched_scripts w ON w.script = o.script AND w.kind = 'custody'"
            " WHERE o.txid = ? AND o.vout = ?",
            (txid, vout),
        ).fetchone()
        if row is None:
            return None
        return OutputRow(row[0], int(row[1]), int(row[2]), bytes(row[3]), row[4], int(row[5]))

    def first_custody_output(self, max_height: int) -> tuple[str, int] | None:
        """The earliest output to the custody address in a canonical block at or below
        `max_height` (by height, then outpoint): the payout chain's genesis."""
        row = self.db.execute(
            "SELECT o.txid, o.vout FROM outputs o"
            " JOIN blocks b ON b.hash = o.block_hash AND b.canonical = 1"
            " JOIN watched_scripts w ON w.script = o.script AND w.kind = 'custody'"
            " WHERE b.height <= ? ORDER BY b.height, o.txid, o.vout LIMIT 1",
            (max_height,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def watched_outpoints(self) -> set[tuple[str, int]]:
        return {(r[0], int(r[1])) for r in self.db.execute("SELECT txid, vout FROM outputs")}

    def unspent(self, kinds: Iterable[str] | None = None) -> list[OutputRow]:
        """Outputs of watched scripts in canonical blocks, not spent in a canonical block."""
        rows = self.db.execute(
            """
            SELECT o.txid, o.vout, o.amount, o.script, o.block_hash, b.height, w.kind
            FROM outputs o
            JOIN blocks b ON b.hash = o.block_hash AND b.canonical = 1
            JOIN watched_scripts w ON w.script = o.script
            WHERE NOT EXISTS (
                SELECT 1 FROM spends s JOIN blocks sb ON sb.hash = s.block_hash AND sb.canonical = 1
                WHERE s.txid = o.txid AND s.vout = o.vout
            )
            ORDER BY b.height, o.txid, o.vout
            """
        ).fetchall()
        wanted = set(kinds) if kinds is not None else None
        return [
            OutputRow(r[0], int(r[1]), int(r[2]), bytes(r[3]), r[4], int(r[5]))
            for r in rows
            if wanted is None or r[6] in wanted
        ]

    # -- deposits --------------------------------------------------------------------------
    def deposit_candidates(self, max_height: int) -> list[tuple[OutputRow, str]]:
        """Outputs to deposit addresses in canonical blocks at or below `max_height` that were
        are not reported (or were, and a reorg took them away), with their recipient."""
        rows = self.db.execute(
            """
            SELECT o.txid, o.vout, o.amount, o.script, o.block_hash, b.height, w.label
            FROM outputs o
            JOIN blocks b ON b.hash = o.block_hash AND b.canonical = 1
            JOIN watched_scripts w ON w.script = o.script AND w.kind = 'deposit'
            WHERE b.height <= ?
              AND NOT EXISTS (
                  SELECT 1 FROM deposits d
                  WHERE d.txid = o.txid AND d.vout = o.vout AND d.state != 'reorged'
              )
            ORDER BY b.height, o.txid, o.vout
            """,
            (max_height,),
        ).fetchall()
        return [
            (OutputRow(r[0], int(r[1]), int(r[2]), bytes(r[3]), r[4], int(r[5])), r[6])
            for r in rows
        ]

    def deposit_output(self, txid: str, vout: int) -> tuple[OutputRow, str] | None:
        """The output (txid, vout) to a deposit address in a canonical block, with its
        recipient: what this node's own chain shows, reported or not."""
        row = self.db.execute(
            """
            SELECT o.txid, o.vout, o.amount, o.script, o.block_hash, b.height, w.label
            FROM outputs o
            JOIN blocks b ON b.hash = o.block_hash AND b.canonical = 1
            JOIN watched_scripts w ON w.script = o.script AND w.kind = 'deposit'
            WHERE o.txid = ? AND o.vout = ?
            """,
            (txid, vout),
        ).fetchone()
        if row is None:
            return None
        output = OutputRow(row[0], int(row[1]), int(row[2]), bytes(row[3]), row[4], int(row[5]))
        return output, row[6]

    def report_deposit(self, output: OutputRow, recipient: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO deposits VALUES (?, ?, ?, ?, ?, ?, 'confirmed', ?, NULL)",
            (
                output.txid,
                output.vout,
                recipient,
                output.amount,
                output.block_hash,
                output.height,
                time.time(),
            ),
        )

    def deposits(self, state: str | None = None) -> list[DepositRow]:
        query = "SELECT txid, vout, recipient, amount, block_hash, height, state FROM deposits"
        parameters: tuple[Any, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            parameters = (state,)
        return [
            DepositRow(r[0], int(r[1]), r[2], int(r[3]), r[4], int(r[5]), r[6])
            for r in self.db.execute(query + " ORDER BY height, txid, vout", parameters)
        ]

    def set_deposit_state(self, txid: str, vout: int, state: str) -> None:
        attested = time.time() if state == "attested" else None
        self.db.execute(
            "UPDATE deposits SET state = ?, attested_at = COALESCE(?, attested_at)"
            " WHERE txid = ? AND vout = ?",
            (state, attested, txid, vout),
        )

    def deposits_in_blocks(self, block_hashes: Iterable[str]) -> list[DepositRow]:
        hashes = set(block_hashes)
        return [d for d in self.deposits() if d.block_hash in hashes]

    # -- chain events and flags ---------------------------------------------------------------
    def record_event(self, kind: str, height: int, detail: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO chain_events VALUES (?, ?, ?, ?)",
            (kind, height, json.dumps(detail, sort_keys=True), time.time()),
        )

    def events_since(self, height: int, kinds: Iterable[str]) -> list[tuple[str, int]]:
        wanted = list(kinds)
        marks = ",".join("?" for _ in wanted)
        rows = self.db.execute(
            f"SELECT kind, height FROM chain_events WHERE height >= ? AND kind IN ({marks})",  # noqa: S608
            (height, *wanted),
        ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def fork_tips(self) -> set[str]:
        rows = self.db.execute("SELECT detail FROM chain_events WHERE kind = 'fork'")
        return {str(json.loads(r[0]).get("tip")) for r in rows}
