"""The API's request metrics, written for the engine to export.

`wire-api` runs as several gunicorn worker processes and serves no metrics endpoint of its own:
each worker writes its counters and histograms to memory-mapped files in a shared directory
(prometheus_client's multiprocess mode), and the engine's `/metrics` merges them into the
node's one scrape (`appliance.metrics.EngineMetrics(api_metrics_dir=...)`).

Deployment, in short: the gunicorn master calls `configure` at startup (workers inherit the
variable it sets, and its `child_exit` hook calls `worker_exit`); each worker then creates one
`ApiMetrics`. The engine reads the files through a shared group, so the directory is 0770 and
wire-api runs with a umask that keeps files group-readable (0007). Files accumulate one per
worker pid until the directory is emptied, which is done when wire-api starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from prometheus_client import Counter, Histogram, multiprocess, values

__all__ = ["ApiMetrics", "configure", "worker_exit"]

# Most calls answer from the engine's socket in milliseconds; a DKG or a key rotation answers
# only when its ceremony ends, up to gunicorn's 15-minute worker timeout.
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 900)
# The method comes from the client; anything unexpected is folded so it cannot add series.
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _multiprocess_mode() -> bool:
    return values.ValueClass is not values.MutexValue


def configure(directory: Path) -> None:
    """Switch this process to multiprocess metrics in `directory` (created 0770 if missing).

    Call it before any metric is created in the process. prometheus_client chooses how metric
    values are stored (in memory or in files under `PROMETHEUS_MULTIPROC_DIR`) when its value
    classes are imported, which happens with the first `import prometheus_client`, and each
    metric keeps the choice current at its construction. This function sets the variable and,
    when prometheus_client was already imported without it, makes the library choose again.
    That is why this module creates its metrics lazily, in `ApiMetrics`, never at import:
    a metric created before `configure` would count in this process's memory only and never
    reach the engine's scrape.
    """
    try:
        directory.mkdir(mode=0o770, parents=True)
    except FileExistsError:
        if not directory.is_dir():
            raise NotADirectoryError(f"{directory} is not a directory") from None
    else:
        directory.chmod(0o770)  # mkdir's mode passes through the umask
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    if not _multiprocess_mode():
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class ApiMetrics:
    """The metrics one API worker records; create exactly one per process, after `configure`.

    Two instances in one process would each keep their own copy of the same file entries and
    overwrite each other's counts.
    """

    def __init__(self) -> None:
        if not _multiprocess_mode():
            raise RuntimeError("api.metrics.configure() must be called before ApiMetrics()")
        # registry=None: in multiprocess mode the files are the registry; the engine reads them.
        self._requests = Counter(
            "wire_mpc_api_requests",
            "API requests answered, by route template, method and HTTP status.",
            ["route", "method", "status"],
            registry=None,
        )
        self._seconds = Histogram(
            "wire_mpc_api_request_duration_seconds",
            "Time to answer an API request, by route template.",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=None,
        )
        self._login_failures = Counter(
            "wire_mpc_api_login_failures",
            "Refused logins (wrong password or TOTP code, unknown or locked user).",
            registry=None,
        )

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one answered request.

        `route` must be the route template (`/v1/ceremonies/{ceremony_id}`), never the raw
        path: every distinct label value is a new series kept forever in every worker's file,
        so labels must come from a bounded set, and raw paths carry ids chosen by clients.
        Requests that match no route are recorded under one fixed template by the caller.
        """
        method = method.upper()
        if method not in METHODS:
            method = "OTHER"
        self._requests.labels(route, method, str(status)).inc()
        self._seconds.labels(route).observe(seconds)

    def login_failed(self) -> None:
        self._login_failures.inc()


def worker_exit(pid: int) -> None:
    """Tidy up after a dead worker; for gunicorn's `child_exit` hook, in the master.

    Only live-gauge files are removed: the counts of a dead worker stay, since counters that
    went down when a worker is recycled would read as resets to Prometheus.
    """
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
