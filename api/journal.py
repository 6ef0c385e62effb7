"""Reading the node's audit records back from journald, for `audit` queries and reports.

Only records of the `wire-mpc` identifier are read, and only their audit fields leave this
module (records never hold secrets, but the journal holds other things)."""

from __future__ import annotations

import collections
import datetime
from typing import Any

from systemd import journal

from appliance.audit import IDENTIFIER

__all__ = ["PERIODS", "query", "summarise"]

FIELDS = ("WIRE_EVENT", "WIRE_OUTCOME", "WIRE_ACTOR", "WIRE_ROLE", "WIRE_CEREMONY", "MESSAGE")
PERIODS = {"daily": 1, "weekly": 7, "monthly": 30}
MAX_RECORDS = 1000


def _reader(since: float) -> journal.Reader:
    reader = journal.Reader()
    reader.add_match(SYSLOG_IDENTIFIER=IDENTIFIER)
    try:
        reader.seek_realtime(datetime.datetime.fromtimestamp(since, datetime.UTC))
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"since {since} is not a usable time") from exc
    return reader


def query(
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
    for entry in _reader(since):
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
        record = {"time": round(stamp, 3), "event": name}
        for field in FIELDS[1:]:
            if field in entry:
                record[field.removeprefix("WIRE_").lower()] = str(entry[field])
        records.append(record)
        if len(records) >= min(limit, MAX_RECORDS):
            break
    return records


def summarise(since: float, until: float) -> dict[str, Any]:
    """Counts of audit records by event and outcome over a period, and the refusals."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    actors: collections.Counter[str] = collections.Counter()
    refusals = 0
    for entry in _reader(since):
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
