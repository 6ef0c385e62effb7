"""Audit records: one structured journald entry per event, the one way to write them.

Every record carries `WIRE_EVENT`, `WIRE_OUTCOME` and, where they apply, `WIRE_ACTOR`,
`WIRE_ROLE` and `WIRE_CEREMONY`, plus the stable `MESSAGE_ID` of its event kind from
`EVENTS` below (the catalog). A record that cannot be written raises
`AuditUnavailableError`; callers refuse the state change it would have recorded. Secrets
never appear in records: callers pass identifiers, names and reasons only.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from systemd import journal

__all__ = ["EVENTS", "AuditEvent", "AuditUnavailableError", "audit"]

IDENTIFIER = "wire-mpc"
# libsystemd silently drops records when journald is not running; look for its socket first.
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


@dataclass(frozen=True)
class AuditEvent:
    message_id: str
    priority: int
    description: str


# The catalog. A MESSAGE_ID never changes once shipped; new kinds get new ids.
EVENTS: Final[dict[str, AuditEvent]] = {
    "engine.started": AuditEvent(
        "fa33c8989c004d209b70845af3aabe49", journal.LOG_NOTICE, "the engine started"
    ),
    "engine.stopped": AuditEvent(
        "8beab476e04c4fbb842aadd3a9ec32e6", journal.LOG_NOTICE, "the engine stopped"
    ),
    "mesh.connection-refused": AuditEvent(
        "856d2672df1d4b28848032af67a5d26a",
        journal.LOG_WARNING,
        "a connection with a CURVE key outside the cluster was refused",
    ),
    "mesh.message-rejected": AuditEvent(
        "28222f5163bc4261b33c757d5b37c29d",
        journal.LOG_WARNING,
        "a mesh message was dropped (malformed, replayed, foreign, unsigned, oversized)",
    ),
    "ceremony.started": AuditEvent(
        "3dc2e8642133436ab48bf87d8eaf1e49", journal.LOG_INFO, "a ceremony started"
    ),
    "ceremony.completed": AuditEvent(
        "2635e9d12e5340c0a1ecd76440677327", journal.LOG_NOTICE, "a ceremony completed"
    ),
    "ceremony.failed": AuditEvent(
        "7eb5b01c92fe425aa625963914be7652", journal.LOG_ERR, "a ceremony failed"
    ),
    "ceremony.abandoned": AuditEvent(
        "53e66c412fc5416e88029b6792572eee",
        journal.LOG_WARNING,
        "an open ceremony was abandoned by a restart",
    ),
    "ceremony.blame": AuditEvent(
        "c37fce0f6b7e416789e70a9d43e036f1",
        journal.LOG_ERR,
        "a participant was proven faulty in a ceremony",
    ),
    "key.verified": AuditEvent(
        "05575f11b0af4712bd02b1bf88354e9f",
        journal.LOG_NOTICE,
        "a threshold key passed its verification round; its share is sealed",
    ),
    "key.shares-retired": AuditEvent(
        "62ae89bc39a44fb490a84f56c42358c4",
        journal.LOG_NOTICE,
        "old shares were deleted after every participant confirmed new ones",
    ),
    "signing.shares-released": AuditEvent(
        "87e79f89de2748a7898dd660b0404660",
        journal.LOG_INFO,
        "this node released signature shares for a request",
    ),
    "signing.refused": AuditEvent(
        "cbb5cba17fe446138f4acfa8d46eca37",
        journal.LOG_WARNING,
        "this node refused to sign a request",
    ),
    "keystore.tamper-detected": AuditEvent(
        "e7c92373599a478c93014806d87ba8ba",
        journal.LOG_CRIT,
        "a sealed share failed authentication",
    ),
    "chain.reorg": AuditEvent(
        "c7a0f3b9abbe4d0290e465042e05d175",
        journal.LOG_WARNING,
        "the canonical chain was reorganised",
    ),
    "chain.fork": AuditEvent(
        "5bc14792c771404f8f6452514ed56934",
        journal.LOG_WARNING,
        "bitcoind knows a competing branch; deposits need more confirmations",
    ),
    "chain.deposit-address": AuditEvent(
        "a9326ec8e209494c9abc135395cab94d",
        journal.LOG_NOTICE,
        "a Wire recipient's deposit address is watched",
    ),
    "chain.deposit-confirmed": AuditEvent(
        "bdc480c534bf4e6186b3d7ceba2c9fed",
        journal.LOG_NOTICE,
        "a deposit reached its required confirmations",
    ),
    "chain.deposit-reorged": AuditEvent(
        "e48951d1370744c09849d382ef38c8b1",
        journal.LOG_CRIT,
        "a reported deposit was removed by a reorg",
    ),
    "chain.sync-state": AuditEvent(
        "26e0a9805e57451cbcffae047363279c",
        journal.LOG_NOTICE,
        "this node's view of bitcoind changed state (synced, behind, unreachable)",
    ),
    "chain.garbage": AuditEvent(
        "b9d6b6c78ef44fb8a17d9aa0ff8214c6",
        journal.LOG_WARNING,
        "bitcoind's RPC or ZMQ sent something that is not what it should be",
    ),
    "chain.broadcast": AuditEvent(
        "2a0462fc770b4642aa2f9d489a241add",
        journal.LOG_NOTICE,
        "a transaction was broadcast",
    ),
    "chain.broadcast-refused": AuditEvent(
        "dac5ac63855d403a86428e949dc263b5",
        journal.LOG_WARNING,
        "bitcoind refused a transaction",
    ),
    "service.switched": AuditEvent(
        "63b6d7c8ef264d1795829083bceb0578",
        journal.LOG_WARNING,
        "an operator enabled or disabled the service",
    ),
    "bitcoind.stop": AuditEvent(
        "f369c6e953d34e57aeccc0abfd289766",
        journal.LOG_WARNING,
        "an admin stopped the node's bitcoind: the node signs nothing until it runs again",
    ),
    "bitcoind.start": AuditEvent(
        "3cb5c74014c94e39a986f58efb8d4929",
        journal.LOG_NOTICE,
        "an admin started the node's bitcoind",
    ),
    "bitcoind.restart": AuditEvent(
        "f85aecf98abf4779a21516ee31ae14b7",
        journal.LOG_WARNING,
        "an admin restarted the node's bitcoind",
    ),
    "key.backup": AuditEvent(
        "7e2186a9fce94012aae73474cd4f3170",
        journal.LOG_NOTICE,
        "an encrypted backup of a key share was released to the admin who approved it",
    ),
    "key.restore": AuditEvent(
        "44a6be64122f4aac830f6c742662fac2",
        journal.LOG_WARNING,
        "a key share was restored from a backup (or the restore was refused)",
    ),
    "key.backup-requested": AuditEvent(
        "43a8c6212a1d4028a7e4275358a0c301",
        journal.LOG_WARNING,
        "an admin asked for a backup of a key share; it waits for a second admin's approval",
    ),
    "operator.enrolled": AuditEvent(
        "0fb503e7baeb4658805905f2cf18bc5d",
        journal.LOG_NOTICE,
        "an operator was enrolled in the engine's registry (role and sealed TOTP seed)",
    ),
    "operator.disabled": AuditEvent(
        "4d070682db0e4c8fb52387baa57f5e19",
        journal.LOG_NOTICE,
        "an operator was disabled in the engine's registry",
    ),
    "operator.proof-refused": AuditEvent(
        "5d69427333794234af8e3f254b8efc58",
        journal.LOG_WARNING,
        "a command that needs an operator's fresh TOTP code came without a valid one",
    ),
    "operator.code-refused": AuditEvent(
        "3765f87720334c8d99d179c9868d52e1",
        journal.LOG_WARNING,
        "a login's TOTP code was wrong or used before, after a right password",
    ),
    "api.request": AuditEvent(
        "dbdf7f8a518a45e693bbab5702dd7bd7",
        journal.LOG_INFO,
        "a request reached the control API",
    ),
    "api.login": AuditEvent(
        "145d9d5c7ec949d48961796bfb4cc656",
        journal.LOG_NOTICE,
        "an operator logged in to the control API, or failed to",
    ),
    "api.user": AuditEvent(
        "8c38513381d14073adba27a7140257ae",
        journal.LOG_NOTICE,
        "an operator account was created or disabled",
    ),
    "mint.attested": AuditEvent(
        "4fff0f57182d49b499a310b50dcd48f2",
        journal.LOG_NOTICE,
        "a deposit's mint attestation was signed by the cluster",
    ),
    "burn.accepted": AuditEvent(
        "4192b34cf3ec4208849ca815130f3f4e",
        journal.LOG_NOTICE,
        "a burn from the Wire system was verified and queued for payment",
    ),
    "burn.refused": AuditEvent(
        "3cd8b1fbf75041eab932ca3b1ef96b9b",
        journal.LOG_WARNING,
        "a burn record failed verification and will never be paid",
    ),
    "burn.approved": AuditEvent(
        "86a186fda988414daa0f98f9f3f70a6d",
        journal.LOG_NOTICE,
        "an operator approved paying a burn above the approval amount",
    ),
    "burn.paid": AuditEvent(
        "71e49b1971964136b7a065c7eb5852e6",
        journal.LOG_NOTICE,
        "a burn's withdrawal confirmed and was reported to the Wire system",
    ),
    "burn.unpaid": AuditEvent(
        "60e17d607d3f4a1d9097cc7fa4d16213",
        journal.LOG_CRIT,
        "a burn reported paid is no longer paid by the payout chain (a deep reorg)",
    ),
    "payout.record-learned": AuditEvent(
        "f8b765f23b854d479475ad0052604ff3",
        journal.LOG_INFO,
        "the burn ids of a payout transaction were learned from a peer, matching its commitment",
    ),
    "withdrawal.signed": AuditEvent(
        "b0cf3201dcd44f32b1fb847c31debcaf",
        journal.LOG_NOTICE,
        "the cluster signed a withdrawal or consolidation transaction",
    ),
    "withdrawal.confirmed": AuditEvent(
        "1487babceca74b0a9742be6d47b6b9c9",
        journal.LOG_NOTICE,
        "a withdrawal or consolidation reached its confirmations",
    ),
    "withdrawal.replaced": AuditEvent(
        "c463289332db4faea575f20a07497320",
        journal.LOG_NOTICE,
        "a stuck withdrawal was replaced at a higher fee rate",
    ),
    "withdrawal.conflicted": AuditEvent(
        "ec829178f4a24f5485639f600e951a01",
        journal.LOG_CRIT,
        "an input of a withdrawal was spent by another transaction",
    ),
    "withdrawal.failed": AuditEvent(
        "dfb84d6e41844dcaba45beccf1b2519b",
        journal.LOG_WARNING,
        "a withdrawal round could not be carried out",
    ),
    "policy.changed": AuditEvent(
        "5882e9e3346c43d789a08aa21413238c",
        journal.LOG_NOTICE,
        "an admin changed this node's signing policy",
    ),
    "control.refused": AuditEvent(
        "619d1ca07ac14fc4828a48baec2e6de5",
        journal.LOG_WARNING,
        "a process without permission tried the engine's control socket",
    ),
    "control.request": AuditEvent(
        "904f02810675427cae66143fedc93aea",
        journal.LOG_INFO,
        "a command reached the engine's control socket",
    ),
    "node.provisioned": AuditEvent(
        "e42d255a7f854be4b080270dac3985dd",
        journal.LOG_NOTICE,
        "boot: the HSM token and identity key were checked or created",
    ),
    "journal.sealing-started": AuditEvent(
        "56ebd5c31f7b4be8bfa5e20e285ff72b",
        journal.LOG_NOTICE,
        "first boot: Forward Secure Sealing keys were made; the journal is sealed from now on",
    ),
    "journal.verification-key-fetched": AuditEvent(
        "b7e20328fb224b35a17fdfe1789aafca",
        journal.LOG_WARNING,
        "an admin took the journal's sealing verification key (it leaves the node once)",
    ),
    "breakglass.opened": AuditEvent(
        "3f55cb333d4245ada42ba99f2db6f14f",
        journal.LOG_CRIT,
        "the kernel command line asked for the break-glass console; a root console is open",
    ),
}


class AuditUnavailableError(RuntimeError):
    """journald did not accept the record."""


def audit(
    event: str,
    outcome: str,
    message: str,
    *,
    actor: str | None = None,
    role: str | None = None,
    ceremony: str | None = None,
    **fields: str | int,
) -> None:
    """Write one audit record; raise `AuditUnavailableError` if journald refuses it."""
    kind = EVENTS[event]
    record: dict[str, str] = {
        "MESSAGE_ID": kind.message_id,
        "PRIORITY": str(kind.priority),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "WIRE_EVENT": event,
        "WIRE_OUTCOME": outcome,
    }
    for name, given in (("WIRE_ACTOR", actor), ("WIRE_ROLE", role), ("WIRE_CEREMONY", ceremony)):
        if given is not None:
            record[name] = given
    for name, value in fields.items():
        record[f"WIRE_{name.upper()}"] = str(value)
    try:
        if not stat.S_ISSOCK(JOURNAL_SOCKET.stat().st_mode):
            raise OSError(f"{JOURNAL_SOCKET} is not a socket")
        journal.send(message, **record)
    except OSError as exc:
        raise AuditUnavailableError(f"journald refused the audit record {event}: {exc}") from exc
