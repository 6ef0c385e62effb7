"""The node's metrics: engine gauges and counters, the API's multiprocess files merged into the
engine's scrape, and the alert rules and dashboard checked against what is really exported."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.metrics import CEREMONY_KINDS, EngineMetrics, Snapshot

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "image" / "monitoring"

# Every field distinct, so a gauge wired to the wrong field shows.
FULL = Snapshot(
    up=True,
    peers_total=4,
    peers_connected=3,
    peers_authenticated=2,
    hsm_up=True,
    bitcoind_synced=False,
    bitcoind_height=840_000,
    bitcoind_tip_age_seconds=93.5,
    minting_paused=True,
    signing_blocked=False,
    pending_deposits=7,
    pending_withdrawals=5,
    open_ceremonies=6,
    data_disk_free_bytes=5 << 30,
    data_disk_size_bytes=64 << 30,
)

GAUGES: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
    ("wire_mpc_up", ()): 1,
    ("wire_mpc_peers", (("state", "configured"),)): 4,
    ("wire_mpc_peers", (("state", "connected"),)): 3,
    ("wire_mpc_peers", (("state", "authenticated"),)): 2,
    ("wire_mpc_hsm_up", ()): 1,
    ("wire_mpc_bitcoind_synced", ()): 0,
    ("wire_mpc_bitcoind_height", ()): 840_000,
    ("wire_mpc_bitcoind_tip_age_seconds", ()): 93.5,
    ("wire_mpc_minting_paused", ()): 1,
    ("wire_mpc_signing_blocked", ()): 0,
    ("wire_mpc_pending_deposits", ()): 7,
    ("wire_mpc_pending_withdrawals", ()): 5,
    ("wire_mpc_open_ceremonies", ()): 6,
    ("wire_mpc_data_disk_free_bytes", ()): 5 << 30,
    ("wire_mpc_data_disk_size_bytes", ()): 64 << 30,
}
GAUGE_NAMES = {name for name, _ in GAUGES}
BITCOIND_GAUGES = {
    "wire_mpc_bitcoind_synced",
    "wire_mpc_bitcoind_height",
    "wire_mpc_bitcoind_tip_age_seconds",
}

# Sample names of the counters and histograms, told apart from the gauges.
COUNTER_PREFIXES = (
    "wire_mpc_ceremonies_",
    "wire_mpc_ceremony_duration_seconds_",
    "wire_mpc_audit_failures_",
    "wire_mpc_deposits_reorged_",
)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: bytes) -> Samples:
    """Every sample of a scrape, keyed by sample name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def value(scrape: Samples, name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


def names(scrape: Samples) -> set[str]:
    return {name for name, _ in scrape}


# -- engine -----------------------------------------------------------------------------------
def test_every_gauge_is_read_from_the_snapshot() -> None:
    scrape = samples(EngineMetrics(lambda: FULL, None).render())
    for (name, labels), expected in GAUGES.items():
        assert value(scrape, name, **dict(labels)) == expected, name
    gauges = {name for name in names(scrape) if not name.startswith(COUNTER_PREFIXES)}
    assert gauges == GAUGE_NAMES


def test_gauges_follow_the_snapshot_at_each_scrape() -> None:
    current = [FULL]
    engine = EngineMetrics(lambda: current[0], None)
    assert value(samples(engine.render()), "wire_mpc_pending_deposits") == 7
    current[0] = replace(FULL, pending_deposits=0, hsm_up=False)
    scrape = samples(engine.render())
    assert value(scrape, "wire_mpc_pending_deposits") == 0
    assert value(scrape, "wire_mpc_hsm_up") == 0


def test_bitcoind_gauges_are_absent_without_bitcoind() -> None:
    snapshot = replace(
        FULL, bitcoind_synced=None, bitcoind_height=None, bitcoind_tip_age_seconds=None
    )
    exported = names(samples(EngineMetrics(lambda: snapshot, None).render()))
    assert not exported & BITCOIND_GAUGES
    assert exported >= GAUGE_NAMES - BITCOIND_GAUGES


def test_counters_and_histogram_count_events() -> None:
    engine = EngineMetrics(lambda: FULL, None)
    engine.ceremony_finished("sign", "completed", 0.3)
    engine.ceremony_finished("sign", "completed", 40.0)
    engine.ceremony_finished("dkg", "failed", 120.0)
    engine.audit_failed()
    engine.deposit_reorged(attested=True)
    engine.deposit_reorged(attested=False)
    engine.deposit_reorged(attested=False)
    scrape = samples(engine.render())

    total = "wire_mpc_ceremonies_total"
    assert value(scrape, total, kind="sign", outcome="completed") == 2
    assert value(scrape, total, kind="dkg", outcome="failed") == 1
    assert value(scrape, total, kind="refresh", outcome="completed") == 0
    bucket = "wire_mpc_ceremony_duration_seconds_bucket"
    assert value(scrape, bucket, kind="sign", le="0.25") == 0
    assert value(scrape, bucket, kind="sign", le="0.5") == 1
    assert value(scrape, bucket, kind="sign", le="60.0") == 2
    assert value(scrape, "wire_mpc_ceremony_duration_seconds_sum", kind="sign") == 40.3
    # Only completed ceremonies are timed.
    assert value(scrape, "wire_mpc_ceremony_duration_seconds_count", kind="dkg") == 0
    assert value(scrape, "wire_mpc_audit_failures_total") == 1
    assert value(scrape, "wire_mpc_deposits_reorged_total", attested="true") == 1
    assert value(scrape, "wire_mpc_deposits_reorged_total", attested="false") == 2


def test_known_series_exist_before_the_first_event() -> None:
    """`increase()` misses an event that creates its series; so they all start at zero."""
    scrape = samples(EngineMetrics(lambda: FULL, None).render())
    for kind in CEREMONY_KINDS:
        for outcome in ("completed", "failed", "abandoned"):
            assert value(scrape, "wire_mpc_ceremonies_total", kind=kind, outcome=outcome) == 0
    assert value(scrape, "wire_mpc_audit_failures_total") == 0
    assert value(scrape, "wire_mpc_deposits_reorged_total", attested="true") == 0


def test_unknown_ceremony_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="outcome"):
        EngineMetrics(lambda: FULL, None).ceremony_finished("sign", "succeeded", 1.0)


def _raises() -> Snapshot:
    raise RuntimeError("store is locked")


def _malformed() -> Snapshot:
    return replace(FULL, pending_deposits="many")  # type: ignore[arg-type]


@pytest.mark.parametrize("snapshot", [_raises, _malformed])
def test_failed_snapshot_exports_up_0_only(snapshot: Any, caplog: pytest.LogCaptureFixture) -> None:
    engine = EngineMetrics(snapshot, None)
    engine.audit_failed()
    with caplog.at_level(logging.ERROR, logger="appliance.metrics"):
        scrape = samples(engine.render())
    gauges = {name for name in names(scrape) if not name.startswith(COUNTER_PREFIXES)}
    assert gauges == {"wire_mpc_up"}
    assert value(scrape, "wire_mpc_up") == 0
    assert value(scrape, "wire_mpc_audit_failures_total") == 1
    assert "snapshot" in caplog.text


def test_engine_metrics_stay_out_of_the_global_registry() -> None:
    EngineMetrics(lambda: FULL, None)
    EngineMetrics(lambda: FULL, None)  # a second one would clash in a shared registry
    assert b"wire_mpc_" not in generate_latest(REGISTRY)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_serve_answers_on_loopback_and_stops() -> None:
    engine = EngineMetrics(lambda: FULL, None)
    engine.ceremony_finished("refresh", "completed", 2.0)
    port = _free_port()
    stop = engine.serve("127.0.0.1", port)
    try:
        status, body = _get(port, "/metrics")
    finally:
        stop()
    assert status == 200
    scrape = samples(body)
    assert value(scrape, "wire_mpc_up") == 1
    assert value(scrape, "wire_mpc_ceremonies_total", kind="refresh", outcome="completed") == 1
    with pytest.raises(ConnectionRefusedError):
        _get(port, "/metrics")


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "10.0.0.5", "192.168.1.20", "localhost", "metrics.example"],  # noqa: S104
)
def test_serve_refuses_non_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        EngineMetrics(lambda: FULL, None).serve(host, _free_port())


# -- API (multiprocess) -----------------------------------------------------------------------
ROUTE = "/v1/ceremonies/{ceremony_id}"

# One gunicorn worker: prometheus_client is imported before configure(), as anything the
# worker loads first might do, and the counts must still reach the shared directory.
WORKER = f"""
import os
import sys
from pathlib import Path

import prometheus_client

from api import metrics

metrics.configure(Path(sys.argv[1]))
recorder = metrics.ApiMetrics()
for status in sys.argv[2:]:
    recorder.request({ROUTE!r}, "get", int(status), 0.02)
recorder.request("/unmatched", "BREW", 405, 0.001)
recorder.login_failed()
print(os.getpid())
"""

MASTER = """
import sys
from pathlib import Path

from api import metrics

metrics.configure(Path(sys.argv[1]))
metrics.worker_exit(int(sys.argv[2]))
"""


def _python(code: str, *args: object) -> str:
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _worker(directory: Path, *statuses: int) -> int:
    return int(_python(WORKER, directory, *statuses))


def test_api_workers_are_summed_into_the_engine_scrape(tmp_path: Path) -> None:
    directory = tmp_path / "api-metrics"
    first = _worker(directory, 200, 200)
    second = _worker(directory, 200, 503, 200)
    assert first != second
    assert stat.S_IMODE(directory.stat().st_mode) == 0o770
    engine = EngineMetrics(lambda: FULL, directory)

    def check(scrape: Samples) -> None:
        requests = "wire_mpc_api_requests_total"
        assert value(scrape, requests, route=ROUTE, method="GET", status="200") == 4
        assert value(scrape, requests, route=ROUTE, method="GET", status="503") == 1
        assert value(scrape, requests, route="/unmatched", method="OTHER", status="405") == 2
        assert not any(dict(labels).get("method") == "BREW" for _, labels in scrape)
        count = "wire_mpc_api_request_duration_seconds_count"
        assert value(scrape, count, route=ROUTE) == 5
        assert value(scrape, "wire_mpc_api_login_failures_total") == 2
        assert value(scrape, "wire_mpc_up") == 1  # the engine's own metrics are still there

    check(samples(engine.render()))
    # A recycled worker's counts must stay, or the counters would go backwards.
    _python(MASTER, directory, first)
    check(samples(engine.render()))


def test_api_metrics_need_configure() -> None:
    from api.metrics import ApiMetrics

    with pytest.raises(RuntimeError, match="configure"):
        ApiMetrics()


# -- alert rules, scrape config, dashboard --------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """Everything a node exports once each kind of event has happened."""
    directory = tmp_path_factory.mktemp("api-metrics")
    _worker(directory, 200, 503)
    engine = EngineMetrics(lambda: FULL, directory)
    engine.ceremony_finished("sign", "completed", 1.5)
    engine.audit_failed()
    engine.deposit_reorged(attested=True)
    return samples(engine.render())


SELECTOR = re.compile(r"\b(wire_mpc_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
ANY_SELECTOR = re.compile(r"\b([A-Za-z_:][\w:]*)\s*\{")
ATTACHED_BY_PROMETHEUS = {"instance", "job"}
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def selector_problems(expr: str, scrape: Samples) -> list[str]:
    """Selectors of `expr` that match nothing exported: unknown names, label values no series
    has. Sample names are compared as exported (with `_total`, `_bucket`), so a counter
    queried without its suffix is caught too."""
    problems = [
        f"{name}: not a wire-mpc metric"
        for name in ANY_SELECTOR.findall(expr)
        if not name.startswith("wire_mpc_") and name != "up"
    ]
    found = SELECTOR.findall(expr)
    if not found and "up{" not in expr:
        problems.append("references no wire-mpc metric")
    for name, matchers in found:
        series = [dict(labels) for sample, labels in scrape if sample == name]
        if not series:
            problems.append(f"{name}: not exported")
            continue
        for label, op, pattern in MATCHER.findall(matchers):
            if label in ATTACHED_BY_PROMETHEUS:
                continue
            seen = {s[label] for s in series if label in s}
            ok = {
                "=": pattern in seen,
                "=~": any(re.fullmatch(pattern, v) for v in seen),
            }.get(op, bool(seen))
            if not ok:
                problems.append(f'{name}{{{label}{op}"{pattern}"}}: no such series')
    return problems


def test_selector_check_catches_mistakes(exported: Samples) -> None:
    """The checker itself: each of these would silently never fire."""
    for expr in [
        "wire_mpc_audit_failures > 0",  # counter without _total
        'wire_mpc_peers{state="authenticted"} < 2',
        'increase(wire_mpc_ceremonies_total{outcome=~"timeout"}[5m]) > 0',
        "wire_mcp_up == 0",
        'wire_mcp_up{job="x"} == 0',
    ]:
        assert selector_problems(expr, exported), expr
    assert not selector_problems('up{job="wire-mpc"} == 0 or wire_mpc_up == 0', exported)


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_are_well_formed() -> None:
    document = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    groups = document["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    rules = _rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"WireMpc[A-Za-z]+", rule["alert"])
        assert isinstance(rule["expr"], str), rule["alert"]
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_the_alerts_that_matter_are_there() -> None:
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in _rules()}
    assert {
        "WireMpcNodeDown",
        "WireMpcHsmDown",
        "WireMpcBitcoindNotSynced",
        "WireMpcBitcoindTipStale",
        "WireMpcPeerUnreachable",
        "WireMpcCeremonyFailures",
        "WireMpcDiskLow",
        "WireMpcSigningBlocked",
        "WireMpcApiErrors",
    } <= set(severity)
    for alert in ("WireMpcAuditFailures", "WireMpcMintingPaused", "WireMpcDepositReorged"):
        assert severity[alert] == "critical", alert


def test_alert_expressions_use_exported_metrics(exported: Samples) -> None:
    problems = {rule["alert"]: selector_problems(rule["expr"], exported) for rule in _rules()}
    assert not {alert: found for alert, found in problems.items() if found}


def test_prometheus_config_scrapes_the_node_and_loads_the_rules() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert all((MONITORING / path).is_file() for path in config["rule_files"])
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "wire-mpc"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9101"]}]


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return document


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"]
    assert dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels = list(_panels(dashboard))
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"] == datasource for t in panel["targets"]), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_dashboard_queries_use_exported_metrics(exported: Samples) -> None:
    problems = {
        (title, expr): found
        for title, expr in _exprs(_dashboard())
        if (found := selector_problems(expr, exported))
    }
    assert not problems


def test_dashboard_shows_every_exported_metric(exported: Samples) -> None:
    def family(name: str) -> str:
        for suffix in SUFFIXES:
            name = name.removesuffix(suffix)
        return name

    shown = {family(name) for _, expr in _exprs(_dashboard()) for name, _ in SELECTOR.findall(expr)}
    assert {family(name) for name in names(exported)} - shown == set()
