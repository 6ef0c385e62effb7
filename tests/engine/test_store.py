"""The store: durable settings, migrations, the signing guard and restart behaviour."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.store import Store, StoreError
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
