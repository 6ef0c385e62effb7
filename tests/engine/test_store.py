"""The store: durable settings, migrations, the signing guard and restart behaviour."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.store import Store, StoreError
from appliance.store.database import KeyRow
from appliance.store.schema import MIGRATIONS


def test_wal_full_sync_and_migrations(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.schema_version == MIGRATIONS[-1][0]
    store.close()
    Store(tmp_path / "state.db").close()  # reopening applies nothing twice
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(f"PRAGMA user_version = {MIGRATIONS[-1][0] + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this software"):
        Store(tmp_path / "state.db")


def test_the_signing_guard_refuses_other_content_for_a_request(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.guard_signing("withdrawal-17", "withdrawal", b"\x01" * 32, "ceremony-a")
    store.guard_signing("withdrawal-17", "withdrawal", b"\x01" * 32, "ceremony-b")  # same: fine
    with pytest.raises(StoreError, match="different content"):
        store.guard_signing("withdrawal-17", "withdrawal", b"\x02" * 32, "ceremony-c")
    store.close()
    reopened = Store(tmp_path / "state.db")  # the guard survives a restart
    with pytest.raises(StoreError, match="ceremony-a"):
        reopened.guard_signing("withdrawal-17", "withdrawal", b"\x02" * 32, "ceremony-d")


def test_open_ceremonies_are_abandoned_on_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.open_ceremony("c1", "sign", "participant")
    store.open_ceremony("c2", "dkg", "peer")
    store.finish_ceremony("c2", "completed", {"ok": True})
    store.close()
    store = Store(tmp_path / "state.db")
    assert store.abandon_open_ceremonies() == ["c1"]
    assert store.ceremony("c1").state == "abandoned"
    assert store.ceremony("c2").state == "completed"
    with pytest.raises(StoreError, match="exists already"):
        store.open_ceremony("c1", "sign", "participant")


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")

    def crash_inside_a_transaction() -> None:
        with store.transaction():
            store.open_ceremony("c1", "sign", "coordinator")
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        crash_inside_a_transaction()
    assert store.ceremony("c1") is None


def test_a_key_has_one_active_epoch_and_keeps_its_verifying_shares(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    shares = ((1, b"\x02" * 33), (2, b"\x03" * 33))
    made = KeyRow("custody", 1, "suite", b"\x02" * 33, "f1", 2, "active", "dkg-1", shares)
    store.add_key(made)
    assert store.active_key("custody") == made
    assert store.key("custody", 1) == made
    with pytest.raises(StoreError, match="custody epoch 0 refused"):
        store.add_key(KeyRow("custody", 0, "suite", b"\x03" * 33, "f0", 2, "active", "x"))
    assert store.key("custody", 0) is None
    store.add_key(KeyRow("custody", 2, "suite", b"\x02" * 33, "f1", 2, "pending", "refresh-1"))
    assert store.active_key("custody") == made


def test_migration_retires_an_active_key_no_ceremony_made_beside_the_dkg_key(
    tmp_path: Path,
) -> None:
    """A store written before schema 6, where a restore had added an operator's key as
    custody epoch 0 beside the DKG's epoch 1 (the lowest active epoch was used)."""
    db = sqlite3.connect(tmp_path / "state.db")
    for _version, sql in MIGRATIONS[:5]:
        db.executescript(sql)
    db.execute("PRAGMA user_version = 5")
    db.execute(
        "INSERT INTO ceremonies (id, kind, role, state, started_at)"
        " VALUES ('dkg-1', 'dkg', 'peer', 'completed', 0)"
    )
    rows = [
        ("custody", 0, "restored"),  # the operator's key
        ("custody", 1, "dkg-1"),
        ("attestation", 1, "dkg-1"),
        ("lonely", 0, "restored"),  # a restored key with nothing beside it stays
    ]
    for name, epoch, ceremony in rows:
        db.execute(
            "INSERT INTO keys VALUES (?, ?, 'suite', X'02', 'f', 2, 'active', ?, 0)",
            (name, epoch, ceremony),
        )
    db.commit()
    db.close()
    store = Store(tmp_path / "state.db")
    assert store.schema_version == MIGRATIONS[-1][0]
    assert store.active_key("custody").epoch == 1
    assert store.key("custody", 0).state == "retired"
    assert store.active_key("attestation").epoch == 1
    assert store.active_key("lonely").epoch == 0
    assert store.key("custody", 1).verifying_shares == ()
