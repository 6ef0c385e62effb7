"""Dual control of key-share backups: what one admin asks for is released only to a second,
different admin of the node who approves it within the approval window.

The backup is made when it is asked for, so the passphrase is used at once and kept
nowhere; the encrypted backup then waits in the engine's memory (never on disk) and goes
only to the approver's call. With a passphrase, the requester knows the passphrase and the
approver holds the backup: neither alone can open it. A restart of the engine drops every
pending request (ask again). Two accounts of one person defeat this; accounts are per person.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import CommandError

__all__ = ["KeyExports", "PendingExport"]

MAX_PENDING = 8

# Makes a backup: (key name, passphrase, recipient) -> key, epoch, fingerprint, protection,
# backup (base64); the caller audits (`Engine.backup_key_share`).
MakeBackup = Callable[[str, str | None, str | None], dict[str, Any]]
ActiveEpoch = Callable[[str], int | None]
Audit = Callable[..., None]


@dataclass
class PendingExport:
    export_id: str
    key: str
    epoch: int
    fingerprint: str
    protection: str
    requested_by: str
    requested_at: float
    expires_at: float
    backup: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "export_id": self.export_id,
            "key": self.key,
            "epoch": self.epoch,
            "fingerprint": self.fingerprint,
            "protection": self.protection,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
        }


class KeyExports:
    def __init__(
        self,
        make_backup: MakeBackup,
        active_epoch: ActiveEpoch,
        audit: Audit,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.make_backup = make_backup
        self.active_epoch = active_epoch
        self.audit = audit
        self.window = float(window)
        self._clock = clock
        self._pending: dict[str, PendingExport] = {}

    def request(
        self, key: str, passphrase: str | None, recipient: str | None, admin: str
    ) -> dict[str, Any]:
        """Make the backup `admin` asks for and hold it for a second admin's approval."""
        now = self._clock()
        for stale in [e for e, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[stale]
        if len(self._pending) >= MAX_PENDING:
            raise CommandError(
                "too-many-exports",
                f"{MAX_PENDING} backups already wait for approval; approve them or let them expire",
            )
        made = self.make_backup(key, passphrase, recipient)
        pending = PendingExport(
            export_id=secrets.token_hex(8),
            key=made["key"],
            epoch=int(made["epoch"]),
            fingerprint=made["fingerprint"],
            protection=made["protection"],
            requested_by=admin,
            requested_at=now,
            expires_at=now + self.window,
            backup=made["backup"],
        )
        self.audit(
            "key.backup-requested",
            "success",
            f"{admin} asked for a backup of {pending.key}-{pending.epoch} "
            f"({pending.fingerprint}) under a {pending.protection}; export "
            f"{pending.export_id} waits for another admin's approval for {self.window:g} s",
            actor=admin,
            key=pending.key,
            fingerprint=pending.fingerprint,
            export=pending.export_id,
        )
        self._pending[pending.export_id] = pending
        return {
            **pending.to_json(),
            "note": "another admin of this node approves it with "
            "approve-backup within the window; the backup goes to them",
        }

    def pending(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [{**p.to_json(), "expired": p.expires_at <= now} for p in self._pending.values()]

    def approve(self, export_id: str, admin: str) -> dict[str, Any]:
        """Release a pending backup to `admin`, who must not be the one who asked for it."""
        pending = self._pending.get(export_id) if isinstance(export_id, str) else None
        if pending is None:
            raise CommandError("not-found", f"no backup {export_id!r} waits for approval")
        if admin == pending.requested_by:
            raise CommandError(
                "same-admin",
                f"{admin} asked for backup {export_id}: another admin of this node must approve it",
            )
        if pending.expires_at <= self._clock():
            del self._pending[export_id]
            raise CommandError(
                "export-expired",
                f"backup {export_id} was not approved within {self.window:g} s; ask again",
            )
        if self.active_epoch(pending.key) != pending.epoch:
            del self._pending[export_id]
            raise CommandError(
                "export-stale",
                f"the {pending.key} key changed since backup {export_id} was asked for; ask again",
            )
        self.audit(
            "key.backup",
            "success",
            f"backup of {pending.key}-{pending.epoch} ({pending.fingerprint}) asked for by "
            f"{pending.requested_by}, approved by {admin} and released to {admin}",
            actor=admin,
            key=pending.key,
            fingerprint=pending.fingerprint,
            export=export_id,
            requested_by=pending.requested_by,
        )
        del self._pending[export_id]
        return {**pending.to_json(), "approved_by": admin, "backup": pending.backup}
