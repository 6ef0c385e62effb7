"""Dual control of key-share backups (`appliance.exports`), with a clock the tests move: a
request alone releases nothing, the requester cannot approve it, another admin can within
the window and not after, and a backup of a key that changed meanwhile is never released.
(The whole path, through the API and the engine's proofs, is in tests/api.)"""

from __future__ import annotations

from typing import Any

import pytest

from appliance.errors import CommandError
from appliance.exports import MAX_PENDING, KeyExports

WINDOW = 900.0


class Node:
    """What the exports need of the engine: backups, the active epoch, the audit trail."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.epoch = 1
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.made = 0

    def make_backup(
        self, key: str, passphrase: str | None, recipient: str | None
    ) -> dict[str, Any]:
        self.made += 1
        return {
            "key": key,
            "epoch": self.epoch,
            "fingerprint": "f" * 16,
            "protection": "passphrase" if passphrase else "recovery key",
            "backup": f"BLOB-{self.made}",
        }

    def audit(self, event: str, outcome: str, message: str, **fields: Any) -> None:
        self.records.append((event, fields))


@pytest.fixture
def node() -> Node:
    return Node()


@pytest.fixture
def exports(node: Node) -> KeyExports:
    return KeyExports(
        node.make_backup, lambda key: node.epoch, node.audit, WINDOW, lambda: node.now
    )


def code_of(work: Any) -> str:
    with pytest.raises(CommandError) as caught:
        work()
    return caught.value.code


def test_a_request_releases_nothing_until_another_admin_approves(
    exports: KeyExports, node: Node
) -> None:
    asked = exports.request("custody", "a long passphrase", None, "alice")
    assert "backup" not in asked
    assert [e for e, _ in node.records] == ["key.backup-requested"]
    assert all("backup" not in p for p in exports.pending())
    assert code_of(lambda: exports.approve(asked["export_id"], "alice")) == "same-admin"
    node.now += WINDOW - 1
    released = exports.approve(asked["export_id"], "bob")
    assert (released["backup"], released["approved_by"], released["requested_by"]) == (
        "BLOB-1",
        "bob",
        "alice",
    )
    event, fields = node.records[-1]
    assert (event, fields["actor"], fields["requested_by"]) == ("key.backup", "bob", "alice")
    # Released once: the request is gone.
    assert code_of(lambda: exports.approve(asked["export_id"], "carol")) == "not-found"


def test_after_the_window_nobody_can_approve(exports: KeyExports, node: Node) -> None:
    asked = exports.request("attestation", None, "ab" * 32, "alice")
    node.now += WINDOW
    assert exports.pending()[0]["expired"] is True
    assert code_of(lambda: exports.approve(asked["export_id"], "bob")) == "export-expired"
    assert code_of(lambda: exports.approve(asked["export_id"], "bob")) == "not-found"
    assert [e for e, _ in node.records] == ["key.backup-requested"]


def test_a_backup_of_a_key_that_changed_is_not_released(exports: KeyExports, node: Node) -> None:
    asked = exports.request("custody", "a long passphrase", None, "alice")
    node.epoch = 2  # a rotation since
    assert code_of(lambda: exports.approve(asked["export_id"], "bob")) == "export-stale"


def test_pending_requests_are_bounded(exports: KeyExports, node: Node) -> None:
    for _ in range(MAX_PENDING):
        exports.request("custody", "a long passphrase", None, "alice")
    assert code_of(lambda: exports.request("custody", "x" * 12, None, "alice")) == (
        "too-many-exports"
    )
    node.now += WINDOW  # expired ones make room
    assert exports.request("custody", "a long passphrase", None, "alice")["export_id"]
