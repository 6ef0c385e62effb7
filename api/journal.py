"""Reading the node's audit records back from journald, for `audit` queries and reports.

A record is the node's only if journald's trusted fields say one of the configured writers
sent it (`api.audit_writers`): `_UID` of the writer's user and, where the writer names units,
`_SYSTEMD_UNIT`. Any local process can set `SYSLOG_IDENTIFIER`, none can set those, so a
record another process wrote with the audit identifier is never shown. Only audit fields
leave this module (records never hold secrets, but the journal holds other things)."""

from __future__ import annotations

import collections
import datetime
import logging
import pwd
from collections.abc import Iterator
from typing import Any

from systemd import journal

from appliance.audit import IDENTIFIER
from appliance.config import AuditWriter

__all__ = ["PERIODS", "query", "summarise"]

log = logging.getLogger(__name__)
FIELDS = ("WIRE_EVENT", "WIRE_OUTCOME", "WIRE_ACTOR", "WIRE_ROLE", "WIRE_CEREMONY", "MESSAGE")
PERIODS = {"daily": 1, "weekly": 7, "monthly": 30}
MAX_RECORDS = 1000

# uid -> (writer's user, its units or None for any unit)
Writers = dict[int, tuple[str, frozenset[str] | None]]


def _writers(configured: tuple[AuditWriter, ...]) -> Writers:
    writers: Writers = {}
    for writer in configured:
        try:
            uid = pwd.getpwnam(writer.user).pw_uid
        except KeyError:
            log.warning("audit writer %s: no such user on this machine", writer.user)
            continue
        writers[uid] = (writer.user, None if writer.units is None else frozenset(writer.units))
    return writers


def _records(configured: tuple[AuditWriter, ...], since: float) -> Iterator[dict[str, Any]]:
    """Entries of the audit identifier from `since` on whose trusted fields name a writer,
    each with `writer` (the user, and the unit when it was required) added."""
    writers = _writers(configured)
    if not writers:
        names = ", ".join(w.user for w in configured)
        raise RuntimeError(f"api.audit_writers: none of {names} is a user of this machine")
    reader = journal.Reader()
    # journald narrows the reading down; every entry is still checked below.
    for uid, (_, units) in writers.items():
        for unit in sorted(units) if units is not None else [None]:
            reader.add_match(SYSLOG_IDENTIFIER=IDENTIFIER, _UID=str(uid))
            if unit is not None:
                reader.add_match(_SYSTEMD_UNIT=unit)
            reader.add_disjunction()
    try:
        reader.seek_realtime(datetime.datetime.fromtimestamp(since, datetime.UTC))
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"since {since} is not a usable time") from exc
    for entry in reader:
        if entry.get("SYSLOG_IDENTIFIER") != IDENTIFIER or "_UID" not in entry:
            continue
        writer = writers.get(int(entry["_UID"]))
        if writer is None:
            continue
        user, units = writer
        unit = entry.get("_SYSTEMD_UNIT")
        if units is not None and unit not in units:
            continue
        yield {**entry, "writer": user if units is None else f"{user} ({unit})"}


def query(
    writers: tuple[AuditWriter, ...],
    since: float,
    until: float | None = None,
    actor: str | None = None,
    event: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit records from `since` (epoch seconds) to `until`, oldest first, filtered by actor
    and event (an event ending in `.` or `*` matches its whole family)."""
    prefix = event.rstrip("*") if event and event.endswith(("*", ".")) else None
    records: list[dict[str, Any]] = []
    for entry in _records(writers, since):
        stamp = entry["__REALTIME_TIMESTAMP"].timestamp()
        if until is not None and stamp > until:
            break
        name = entry.get("WIRE_EVENT")
        if name is None:
            continue
        if actor is not None and entry.get("WIRE_ACTOR") != actor:
            continue
        if event is not None and (name != event if prefix is None else not name.startswith(prefix)):
            continue
        record = {"time": round(stamp, 3), "event": name, "writer": entry["writer"]}
        for field in FIELDS[1:]:
            if field in entry:
                record[field.removeprefix("WIRE_").lower()] = str(entry[field])
        records.append(record)
        if len(records) >= min(limit, MAX_RECORDS):
            break
    return records


def summarise(writers: tuple[AuditWriter, ...], since: float, until: float) -> dict[str, Any]:
    """Counts of audit records by event and outcome over a period, and the refusals."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    actors: collections.Counter[str] = collections.Counter()
    refusals = 0
    for entry in _records(writers, since):
        if entry["__REALTIME_TIMESTAMP"].timestamp() > until:
            break
        name = entry.get("WIRE_EVENT")
        if name is None:
            continue
        outcome = str(entry.get("WIRE_OUTCOME", ""))
        counts[(name, outcome)] += 1
        refusals += outcome == "refused"
        if "WIRE_ACTOR" in entry:
            actors[str(entry["WIRE_ACTOR"])] += 1
    return {
        "events": [{"event": e, "outcome": o, "count": n} for (e, o), n in sorted(counts.items())],
        "refusals": refusals,
        "actors": dict(sorted(actors.items())),
    }
