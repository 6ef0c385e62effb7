"""The SQLite connection and the operations the engine performs on it."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import MIGRATIONS

__all__ = ["CeremonyRow", "KeyRow", "Store", "StoreError", "TranscriptRow"]


class StoreError(RuntimeError):
    """The database refused an operation or holds something it should not."""


@dataclass(frozen=True)
class CeremonyRow:
    id: str
    kind: str
    role: str
    state: str
    request_id: str | None
    detail: dict[str, Any]
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class TranscriptRow:
    position: int
    ceremony_id: str
    direction: str
    sender: int
    round: str
    envelope: bytes


@dataclass(frozen=True)
class KeyRow:
    """One epoch of a threshold key as this node recorded it: its public package (the
    verifying shares are empty for keys recorded before schema 6), its state, and the
    ceremony that made it."""

    name: str
    epoch: int
    ciphersuite: str
    group_key: bytes
    fingerprint: str
    threshold: int
    state: str
    ceremony_id: str
    verifying_shares: tuple[tuple[int, bytes], ...] = ()


class Store:
    """One node's database. Every public method is one durable transaction unless it runs
    inside `transaction()`. Transcript records and the opening of a ceremony wait in memory
    and are written with the next transaction (`flush()` forces one): the engine flushes
    before anything leaves the node, so they cost no commit of their own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._depth = 0
        self._deferred: list[tuple[str, tuple[Any, ...]]] = []
        # The latest accepted sequence per peer, written with the next transaction: one
        # entry per peer however many envelopes arrive meanwhile.
        self._sequences: dict[int, int] = {}
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode ({mode})")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def close(self) -> None:
        self.flush()
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """For the store's other repositories (appliance.store.chain); write inside
        `transaction()`."""
        return self._db

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        known = MIGRATIONS[-1][0]
        if current > known:
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this software ({known})"
            )
        for version, sql in MIGRATIONS:
            if version > current:
                with self.transaction():
                    for statement in sql.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {version:d}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A durable transaction; nested calls join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        carried, self._deferred = self._deferred, []
        sequences, self._sequences = self._sequences, {}
        try:
            for sql, parameters in carried:
                self._db.execute(sql, parameters)
            if sequences:
                self._db.executemany(
                    "INSERT OR REPLACE INTO peer_sequences VALUES (?, ?)", sequences.items()
                )
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            # What waited before this transaction waits again; what it queued is dropped.
            self._deferred = carried
            self._sequences = sequences | self._sequences
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    def _write(self, sql: str, parameters: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self.transaction():
            return self._db.execute(sql, parameters)

    # -- ceremonies ------------------------------------------------------------------
    def open_ceremony(
        self, ceremony_id: str, kind: str, role: str, request_id: str | None = None
    ) -> None:
        """Record a new ceremony (written with the next transaction, before any message)."""
        if self.ceremony(ceremony_id) is not None:
            raise StoreError(f"ceremony {ceremony_id!r} exists already")
        self._deferred.append(
            (
                "INSERT INTO ceremonies (id, kind, role, state, request_id, started_at) "
                "VALUES (?, ?, ?, 'open', ?, ?)",
                (ceremony_id, kind, role, request_id, time.time()),
            )
        )

    def finish_ceremony(self, ceremony_id: str, state: str, detail: dict[str, Any]) -> None:
        self._write(
            "UPDATE ceremonies SET state = ?, detail = ?, finished_at = ? WHERE id = ?",
            (state, json.dumps(detail, sort_keys=True), time.time(), ceremony_id),
        )

    def ceremony(self, ceremony_id: str) -> CeremonyRow | None:
        if any(p[0] == ceremony_id for sql, p in self._deferred if "INTO ceremonies" in sql):
            self.flush()
        row = self._db.execute("SELECT * FROM ceremonies WHERE id = ?", (ceremony_id,)).fetchone()
        return None if row is None else _ceremony(row)

    def ceremonies(self, limit: int = 50) -> list[CeremonyRow]:
        rows = self._db.execute(
            "SELECT * FROM ceremonies ORDER BY started_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_ceremony(r) for r in rows]

    def abandon_open_ceremonies(self) -> list[str]:
        """Mark every ceremony left open by a previous run as abandoned; their nonces died
        with that process, so they can only be retried as new ceremonies."""
        with self.transaction():
            ids = [r[0] for r in self._db.execute("SELECT id FROM ceremonies WHERE state = 'open'")]
            self._db.execute(
                "UPDATE ceremonies SET state = 'abandoned', finished_at = ?, "
                "detail = '{\"reason\": \"engine restarted\"}' WHERE state = 'open'",
                (time.time(),),
            )
        return ids

    # -- replay protection ---------------------------------------------------------------
    def remember_sequence(self, sender: int, sequence: int) -> None:
        """The latest sequence accepted from a peer (written with the next transaction)."""
        self._sequences[sender] = sequence

    def peer_sequences(self) -> dict[int, int]:
        self.flush()
        rows = self._db.execute("SELECT sender, sequence FROM peer_sequences").fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    # -- transcripts and blame ------------------------------------------------------------
    def record_envelope(
        self, ceremony_id: str, direction: str, sender: int, round_name: str, envelope: bytes
    ) -> None:
        """Queue an envelope for the transcript; it is written by the next transaction."""
        self._deferred.append(
            (
                "INSERT INTO transcript (ceremony_id, direction, sender, round, envelope,"
                " recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                (ceremony_id, direction, sender, round_name, envelope, time.time()),
            )
        )

    def flush(self) -> None:
        """Write the queued records now (durably)."""
        if self._deferred or self._sequences:
            with self.transaction():
                pass

    def transcript(self, ceremony_id: str | None = None) -> list[TranscriptRow]:
        self.flush()
        query = "SELECT * FROM transcript"
        parameters: tuple[Any, ...] = ()
        if ceremony_id is not None:
            query += " WHERE ceremony_id = ?"
            parameters = (ceremony_id,)
        rows = self._db.execute(query + " ORDER BY position", parameters).fetchall()
        return [
            TranscriptRow(
                r["position"],
                r["ceremony_id"],
                r["direction"],
                r["sender"],
                r["round"],
                bytes(r["envelope"]),
            )
            for r in rows
        ]

    def record_blame(
        self, ceremony_id: str, participant: int, reason: str, evidence: dict[str, Any]
    ) -> None:
        self._write(
            "INSERT INTO blame (ceremony_id, participant, reason, evidence, recorded_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (ceremony_id, participant, reason, json.dumps(evidence, sort_keys=True), time.time()),
        )

    def blame(self, ceremony_id: str) -> list[tuple[int, str]]:
        rows = self._db.execute(
            "SELECT participant, reason FROM blame WHERE ceremony_id = ? ORDER BY rowid",
            (ceremony_id,),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    # -- the signing guard and approvals -------------------------------------------------
    def guard_signing(
        self, request_id: str, kind: str, content_hash: bytes, ceremony_id: str
    ) -> None:
        """Record that this node signs `content_hash` for `request_id`; refuse if it signed
        different content under that id before (a request is paid once, one way)."""
        with self.transaction():
            row = self._db.execute(
                "SELECT kind, content_hash, first_ceremony FROM signed_requests"
                " WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO signed_requests VALUES (?, ?, ?, ?, ?)",
                    (request_id, kind, content_hash, ceremony_id, time.time()),
                )
            elif row[0] != kind or bytes(row[1]) != content_hash:
                raise StoreError(
                    f"request {request_id!r} was signed with different content in ceremony "
                    f"{row[2]!r}; refusing to sign other content for it"
                )

    def approve(self, kind: str, content_hash: bytes, actor: str, expires_at: float) -> None:
        self._write(
            "INSERT OR REPLACE INTO approvals VALUES (?, ?, ?, ?)",
            (kind, content_hash, actor, expires_at),
        )

    def approved(self, kind: str, content_hash: bytes, now: float) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM approvals WHERE kind = ? AND content_hash = ? AND expires_at > ?",
            (kind, content_hash, now),
        ).fetchone()
        return row is not None

    # -- flags: the node's switches and cursors (minting paused, service disabled, ...) ----
    def set_flag(self, name: str, value: str, reason: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO flags VALUES (?, ?, ?, ?)", (name, value, reason, time.time())
        )

    def flag(self, name: str) -> tuple[str, str] | None:
        """(value, reason) of a flag, or None if it is not set."""
        row = self._db.execute("SELECT value, reason FROM flags WHERE name = ?", (name,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def clear_flag(self, name: str) -> None:
        self._write("DELETE FROM flags WHERE name = ?", (name,))

    # -- keys ------------------------------------------------------------------------------
    def add_key(self, key: KeyRow) -> None:
        """Record a key epoch; a second active epoch of one key is refused (StoreError)."""
        shares = {str(i): share.hex() for i, share in key.verifying_shares}
        try:
            self._write(
                "INSERT INTO keys (name, epoch, ciphersuite, group_key, fingerprint, threshold,"
                " state, ceremony_id, created_at, verifying_shares)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.name,
                    key.epoch,
                    key.ciphersuite,
                    key.group_key,
                    key.fingerprint,
                    key.threshold,
                    key.state,
                    key.ceremony_id,
                    time.time(),
                    json.dumps(shares, sort_keys=True) if shares else None,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"key {key.name} epoch {key.epoch} refused: {exc}") from exc

    def set_key_state(self, name: str, epoch: int, state: str) -> None:
        self._write("UPDATE keys SET state = ? WHERE name = ? AND epoch = ?", (state, name, epoch))

    def key_records(self, state: str | None = None) -> list[KeyRow]:
        parameters: tuple[Any, ...]
        query, parameters = "SELECT * FROM keys", ()
        if state is not None:
            query, parameters = query + " WHERE state = ?", (state,)
        rows = self._db.execute(query + " ORDER BY name, epoch", parameters).fetchall()
        return [_key(r) for r in rows]

    def key(self, name: str, epoch: int) -> KeyRow | None:
        row = self._db.execute(
            "SELECT * FROM keys WHERE name = ? AND epoch = ?", (name, epoch)
        ).fetchone()
        return None if row is None else _key(row)

    def active_key(self, name: str) -> KeyRow | None:
        """The one active epoch of a key (the schema allows no second one)."""
        row = self._db.execute(
            "SELECT * FROM keys WHERE name = ? AND state = 'active'", (name,)
        ).fetchone()
        return None if row is None else _key(row)


def _key(row: sqlite3.Row) -> KeyRow:
    shares = json.loads(row["verifying_shares"] or "{}")
    return KeyRow(
        row["name"],
        row["epoch"],
        row["ciphersuite"],
        bytes(row["group_key"]),
        row["fingerprint"],
        row["threshold"],
        row["state"],
        row["ceremony_id"],
        tuple(sorted((int(i), bytes.fromhex(share)) for i, share in shares.items())),
    )


def _ceremony(row: sqlite3.Row) -> CeremonyRow:
    return CeremonyRow(
        row["id"],
        row["kind"],
        row["role"],
        row["state"],
        row["request_id"],
        json.loads(row["detail"]),
        row["started_at"],
        row["finished_at"],
    )
