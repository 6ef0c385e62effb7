"""The engine's Prometheus metrics and the node's one scrape endpoint.

Prometheus scrapes a single address per node, `http://127.0.0.1:9101/metrics`, served here by
`wire-mpcd`. The engine's own counters and histograms live in a private registry (never the
process-global one, so nothing a library registers there leaks into the scrape); its gauges are
computed at scrape time from a `Snapshot` of engine state, so no gauge can go stale; and the
request metrics that the `wire-api` gunicorn workers write to their multiprocess directory are
merged into the same scrape.

The endpoint binds to loopback only: it reveals operational state (peer health, pending
deposits) and is never meant to leave the machine except through the node's own Prometheus.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CEREMONY_KINDS", "CEREMONY_OUTCOMES", "EngineMetrics", "Snapshot"]

log = logging.getLogger(__name__)

# Known label values are created at zero up front: `increase()` needs a sample before the first
# event, otherwise the first failure after a restart would never raise an alert.
CEREMONY_KINDS: Final = ("dkg", "sign", "refresh")
# The final states of a ceremony in the store; anything else is a caller's mistake.
CEREMONY_OUTCOMES: Final = ("completed", "failed", "abandoned")

# From a fast local signature (tens of ms) to a ceremony's deadline of several round timeouts.
CEREMONY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class Snapshot:
    """Engine state at one instant; each field becomes one gauge (see `EngineMetrics`).

    The bitcoind fields are None when no bitcoind is configured; their gauges are then left
    out rather than reported as 0, which would read as "not synced" or "height 0".
    """

    up: bool
    peers_total: int
    peers_connected: int
    peers_authenticated: int
    hsm_up: bool
    bitcoind_synced: bool | None
    bitcoind_height: int | None
    bitcoind_tip_age_seconds: float | None
    minting_paused: bool
    signing_blocked: bool
    pending_deposits: int
    pending_withdrawals: int
    open_ceremonies: int
    data_disk_free_bytes: int
    data_disk_size_bytes: int


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _snapshot_families(snap: Snapshot) -> Iterator[Metric]:
    yield _gauge("wire_mpc_up", "1 while the engine is running and serving ceremonies.", snap.up)
    peers = GaugeMetricFamily(
        "wire_mpc_peers",
        "Peers of this node: configured, connected, and connected with a verified identity.",
        labels=["state"],
    )
    peers.add_metric(["configured"], float(snap.peers_total))
    peers.add_metric(["connected"], float(snap.peers_connected))
    peers.add_metric(["authenticated"], float(snap.peers_authenticated))
    yield peers
    yield _gauge("wire_mpc_hsm_up", "1 while the HSM answers.", snap.hsm_up)
    if snap.bitcoind_synced is not None:
        yield _gauge(
            "wire_mpc_bitcoind_synced",
            "1 while bitcoind is synced to the network tip; signing is refused otherwise.",
            snap.bitcoind_synced,
        )
    if snap.bitcoind_height is not None:
        yield _gauge("wire_mpc_bitcoind_height", "Height of bitcoind's tip.", snap.bitcoind_height)
    if snap.bitcoind_tip_age_seconds is not None:
        yield _gauge(
            "wire_mpc_bitcoind_tip_age_seconds",
            "Seconds since the timestamp of bitcoind's tip block.",
            snap.bitcoind_tip_age_seconds,
        )
    yield _gauge("wire_mpc_minting_paused", "1 while minting is paused.", snap.minting_paused)
    yield _gauge(
        "wire_mpc_signing_blocked", "1 while this node refuses to sign.", snap.signing_blocked
    )
    yield _gauge(
        "wire_mpc_pending_deposits", "Deposits seen but not yet minted.", snap.pending_deposits
    )
    yield _gauge(
        "wire_mpc_pending_withdrawals",
        "Withdrawals requested but not yet confirmed on Bitcoin.",
        snap.pending_withdrawals,
    )
    yield _gauge("wire_mpc_open_ceremonies", "Ceremonies in progress.", snap.open_ceremonies)
    yield _gauge(
        "wire_mpc_data_disk_free_bytes",
        "Free bytes on the data partition.",
        snap.data_disk_free_bytes,
    )
    yield _gauge(
        "wire_mpc_data_disk_size_bytes",
        "Size in bytes of the data partition.",
        snap.data_disk_size_bytes,
    )


class _SnapshotCollector(Collector):
    """Gauges read from the engine at each scrape, so there is no gauge state to keep in sync.

    A scrape must never take the engine down and must still say something useful: if taking
    or rendering the snapshot fails, the only gauge exported is `wire_mpc_up 0`, which is what
    the node-down alert looks at.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        try:
            # Built in full before anything is returned, so a bad field cannot cut a scrape short.
            return list(_snapshot_families(self._snapshot()))
        except Exception:
            log.exception("the engine snapshot for metrics failed; exporting wire_mpc_up 0")
            return [_gauge("wire_mpc_up", "1 while the engine is running.", 0)]


def _require_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a name could resolve anywhere; only literal addresses are accepted
    if not loopback:
        raise ValueError(f"metrics are served on a loopback address only, not {host!r}")


class EngineMetrics:
    """The engine's metrics and the node's scrape endpoint.

    `snapshot` is called at every scrape (from the HTTP server's thread) and must be cheap and
    thread-safe. `api_metrics_dir`, when given, is the multiprocess directory of `wire-api`
    (see `api.metrics.configure`); it must exist and be readable by the engine. The engine
    itself must not run with `PROMETHEUS_MULTIPROC_DIR` set, or its own metrics would be
    written to files and exported twice.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], api_metrics_dir: Path | None) -> None:
        self.registry = CollectorRegistry()
        self._ceremonies = Counter(
            "wire_mpc_ceremonies",
            "Ceremonies finished, by kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self._ceremony_seconds = Histogram(
            "wire_mpc_ceremony_duration_seconds",
            "Duration of completed ceremonies, by kind.",
            ["kind"],
            buckets=CEREMONY_BUCKETS,
            registry=self.registry,
        )
        self._audit_failures = Counter(
            "wire_mpc_audit_failures",
            "Audit records that could not be written (the state change was refused).",
            registry=self.registry,
        )
        self._deposits_reorged = Counter(
            "wire_mpc_deposits_reorged",
            "Deposits whose block left the best chain, by whether the node had attested them.",
            ["attested"],
            registry=self.registry,
        )
        for kind in CEREMONY_KINDS:
            self._ceremony_seconds.labels(kind)
            for outcome in CEREMONY_OUTCOMES:
                self._ceremonies.labels(kind, outcome)
        for attested in ("true", "false"):
            self._deposits_reorged.labels(attested)
        self.registry.register(_SnapshotCollector(snapshot))
        if api_metrics_dir is not None:
            # Registers itself; prometheus_client leaves this constructor unannotated.
            MultiProcessCollector(self.registry, path=str(api_metrics_dir))  # type: ignore[no-untyped-call]

    def ceremony_finished(self, kind: str, outcome: str, seconds: float) -> None:
        """Count a finished ceremony; its duration is recorded only when it completed.

        A failed or abandoned ceremony's duration mostly measures a timeout or a restart, and
        would drown the latency the dashboard shows; the counter still records it.
        """
        if outcome not in CEREMONY_OUTCOMES:
            raise ValueError(f"unknown ceremony outcome {outcome!r}")
        self._ceremonies.labels(kind, outcome).inc()
        if outcome == "completed":
            self._ceremony_seconds.labels(kind).observe(seconds)

    def audit_failed(self) -> None:
        self._audit_failures.inc()

    def deposit_reorged(self, attested: bool) -> None:
        """Count a deposit reorged away; `attested` ones may already have been minted."""
        self._deposits_reorged.labels("true" if attested else "false").inc()

    def serve(self, host: str = "127.0.0.1", port: int = 9101) -> Callable[[], None]:
        """Serve `/metrics` on host:port from a daemon thread; return the function that stops it.

        Refuses (ValueError) any host that is not a loopback address literal.
        """
        _require_loopback(host)
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join()

        return stop

    def render(self) -> bytes:
        """The scrape's body, in the Prometheus text format."""
        return generate_latest(self.registry)
