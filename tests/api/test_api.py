"""The control API over its real Unix socket under gunicorn, in front of real engines:
bootstrap, login with TOTP, replay, roles on every route, the TOTP step-up of sensitive
calls, the OpenAPI document, audit records in journald, and the refusal of a state change
whose audit record cannot be written. (The engine's own checks of operators, dual control
and throttling: test_operator_proofs.py.)"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from api.routes import ROUTES, Route
from tests.api.conftest import Http, Operator, enroll, log_in
from tests.cluster.conftest import Journal
from tools.devcluster import DevCluster, wait_until

REPO = Path(__file__).resolve().parents[2]


def concrete(path: str) -> str:
    return re.sub(r"{\w+}", "nobody-here", path)


def test_first_admin_bootstrap_then_only_admins_create_users(http: Http, team) -> None:
    status, answer = http.call(
        "POST", "/v1/users", {"username": "eve", "role": "admin", "password": "x" * 16}
    )
    assert status == 401, answer  # users exist: no session, no user creation
    status, answer = http.call(
        "POST",
        "/v1/users",
        {"username": "eve", "role": "admin", "password": "x" * 16},
        token=team["operator"].token,
    )
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, answer = http.call("GET", "/v1/users", token=team["admin"].token)
    assert status == 200
    assert {u["username"] for u in answer["users"]} >= {"admin", "olga", "aude"}


def test_login_needs_password_and_a_fresh_totp_code(http: Http, team) -> None:
    admin: Operator = team["admin"]
    import pyotp

    old_code = pyotp.TOTP(admin.secret).at(admin.last_step * 30)  # admin's last code, used
    for body in (
        {"username": "admin", "password": admin.password, "code": old_code},  # replay
        {
            "username": "admin",
            "password": "wrong password!",
            "code": pyotp.TOTP(admin.secret).now(),
        },
        {"username": "nobody", "password": admin.password, "code": "123456"},
    ):
        status, answer = http.call("POST", "/v1/session", body)
        assert (status, answer["error"]["code"]) == (401, "login-failed"), body
        assert answer["error"]["title"] == "wrong username, password or code"
    # A backup code stands in for the TOTP code, once.
    backup = admin.backup_codes[0]
    body = {"username": "admin", "password": admin.password, "code": backup}
    assert http.call("POST", "/v1/session", body)[0] == 201
    assert http.call("POST", "/v1/session", body)[0] == 401


def minimal_body(route: Route) -> Any:
    """A body that passes the role check and fails validation (so nothing runs), or none."""
    if route.body is None:
        return None
    return {} if route.body.get("required") else {"unknown_field": 1}


def test_every_route_and_role(http: Http, team) -> None:
    checked = 0
    for route in ROUTES:
        if route.public or route.path == "/v1/session":
            continue
        for role, user in team.items():
            status, answer = http.call(
                route.method, concrete(route.path), minimal_body(route), token=user.token
            )
            allowed = role in route.roles
            if allowed:
                assert status != 403 or answer["error"]["code"] == "step-up-required", (
                    route.path,
                    role,
                    status,
                    answer,
                )
                assert status < 500 or status in (501, 503), (route.path, role, answer)
            else:
                assert (status, answer["error"]["code"]) == (403, "forbidden"), (
                    route.path,
                    role,
                    status,
                    answer,
                )
            checked += 1
        # And without a session: refused, whatever the route.
        status, answer = http.call(route.method, concrete(route.path), minimal_body(route))
        assert (status, answer["error"]["code"]) == (401, "unauthenticated"), route.path
    assert checked == 3 * len([r for r in ROUTES if not r.public and r.path != "/v1/session"])


def test_a_policy_change_is_an_audited_admin_action(http: Http, team) -> None:
    # An admin of its own: each TOTP step is good once, and the shared admin needs its own.
    admin = enroll(http, "paula", "admin", team["admin"])
    log_in(http, admin)
    operator = team["operator"]
    change = {"max_withdrawal_sats": 40_000_000, "approvals_required": 3}
    status, answer = http.call(
        "PUT", "/v1/policy", change, token=operator.token, totp="000000"
    )  # the role is refused before any code is checked
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, answer = http.call("PUT", "/v1/policy", change, token=admin.token)
    assert (status, answer["error"]["code"]) == (403, "step-up-required")
    status, answer = http.call("PUT", "/v1/policy", {"approvals_required": 9},
                               token=admin.token, totp=admin.code())  # fmt: skip
    assert (status, answer["error"]["code"]) == (400, "bad-request")  # 9 of 3 parties
    status, answer = http.call("PUT", "/v1/policy", change, token=admin.token,
                               totp=admin.code())  # fmt: skip
    assert status == 200, answer
    status, policy = http.call("GET", "/v1/policy", token=team["auditor"].token)
    assert (policy["max_withdrawal_sats"], policy["approvals_required"]) == (40_000_000, 3)
    records = Journal().wait_for(WIRE_EVENT="policy.changed", WIRE_ACTOR=admin.username)
    assert records, "no policy.changed audit record"
    assert "max_withdrawal_sats 1000000000 -> 40000000" in records[-1]["MESSAGE"]
    assert records[-1]["WIRE_ACTOR"] == admin.username


def test_sensitive_calls_need_a_fresh_totp_code(http: Http, team) -> None:
    admin: Operator = team["admin"]
    body = {"reason": "maintenance window"}
    status, answer = http.call("POST", "/v1/service/disable", body, token=admin.token)
    assert (status, answer["error"]["code"]) == (403, "step-up-required")
    code = admin.code()
    status, answer = http.call("POST", "/v1/service/disable", body, token=admin.token, totp=code)
    assert status == 200, answer
    assert answer["enabled"] is False
    assert "maintenance window" in answer["signing_blocked"]
    status, answer = http.call("POST", "/v1/service/disable", body, token=admin.token, totp=code)
    assert (status, answer["error"]["code"]) == (403, "step-up-required")  # replayed
    assert "used before" in answer["error"]["title"]  # the engine's own check
    # While disabled, the node signs nothing and runs no key ceremony; reads still answer.
    status, answer = http.call("GET", "/v1/status", token=team["auditor"].token)
    assert status == 200
    assert "maintenance window" in answer["signing_blocked"]
    status, answer = http.call(
        "POST", "/v1/dkg", {"ceremony_id": "while-disabled"}, token=team["operator"].token
    )
    assert (status, answer["error"]["code"]) == (409, "service-disabled")
    # Enabling needs a fresh code too; the replay above holds admin's next code back a
    # second (a code that waits is not looked at, so the same one is offered again).
    status, answer = http.call("POST", "/v1/service/enable", {}, token=admin.token)
    assert (status, answer["error"]["code"]) == (403, "step-up-required")
    code = admin.code()

    def enable() -> tuple[int, Any] | None:
        answer = http.call("POST", "/v1/service/enable", {}, token=admin.token, totp=code)
        return None if answer[0] == 429 else answer

    status, answer = wait_until(enable, within=5, what="admin's code taken after the delay")
    assert (status, answer["enabled"]) == (200, True)


def test_only_an_admin_with_a_fresh_code_asks_for_bitcoind_to_stop(http: Http, team) -> None:
    admin: Operator = team["admin"]
    stop = {"action": "stop", "reason": "disk maintenance"}
    status, answer = http.call("POST", "/v1/bitcoind", stop, token=team["operator"].token)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, answer = http.call("POST", "/v1/bitcoind", stop, token=admin.token)
    assert (status, answer["error"]["code"]) == (403, "step-up-required")
    status, answer = http.call(
        "POST", "/v1/bitcoind", {**stop, "action": "kill"}, token=admin.token, totp=admin.code()
    )
    assert status == 400, answer
    assert "stop, start, restart" in answer["error"]["title"], answer
    # This cluster's nodes have no bitcoind (the QEMU cluster stops a real one).
    status, answer = http.call("POST", "/v1/bitcoind", stop, token=admin.token, totp=admin.code())
    assert (status, answer["error"]["code"]) == (409, "no-bitcoind"), answer
    records = Journal().wait_for(WIRE_EVENT="control.request", WIRE_METHOD="bitcoind")
    assert records
    assert records[-1]["WIRE_ACTOR"] == admin.username


def test_logout_ends_the_session(http: Http, team) -> None:
    auditor = log_in(http, Operator(**{**team["auditor"].__dict__, "token": ""}))
    assert http.call("GET", "/v1/key-info", token=auditor.token)[0] == 200
    assert http.call("DELETE", "/v1/session", token=auditor.token)[0] == 200
    status, answer = http.call("GET", "/v1/key-info", token=auditor.token)
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")


def test_openapi_documents_every_route_the_app_serves(api_cluster: DevCluster, http, team) -> None:
    status, document = http.call("GET", "/v1/openapi.json", token=team["auditor"].token)
    assert status == 200
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    # The app is built in a separate process: it switches prometheus_client to files.
    script = (
        "import json, sys\n"
        "from api.app import WireApi\n"
        "from appliance.config import load_config\n"
        "from tests.api.test_api import served_routes\n"
        "app = WireApi(load_config(__import__('pathlib').Path(sys.argv[1]))).app\n"
        "print(json.dumps(sorted(served_routes(app))))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(api_cluster[1].config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    )
    served = {tuple(item) for item in json.loads(run.stdout)}
    assert served == documented
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            route = next(r for r in ROUTES if (r.method, r.path) == (method.upper(), path))
            assert ("requestBody" in operation) == (route.body is not None)
            assert operation["security"] == ([] if route.public else [{"session": []}])
            assert str(route.status) in operation["responses"]


def served_routes(app: Any) -> set[tuple[str, str]]:
    """(method, template) of every responder in a Falcon app's router."""
    served = set()
    for template, resource in _templates(app._router._roots):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if hasattr(resource, f"on_{method.lower()}"):
                served.add((method, template))
    return served


def _templates(nodes: Any) -> list[tuple[str, Any]]:
    found = []
    for node in nodes:
        if node.resource is not None:
            found.append((node.uri_template, node.resource))
        found.extend(_templates(node.children))
    return found


def test_audit_records_of_requests_hold_no_secrets(http: Http, team) -> None:
    operator: Operator = team["operator"]
    status, answer = http.call(
        "GET", "/v1/audit?event=api.&limit=1000", token=team["auditor"].token
    )
    assert status == 200, answer
    records = answer["records"]
    assert any(r["event"] == "api.login" and r.get("actor") == "olga" for r in records)
    assert any(r["event"] == "api.request" and r.get("actor") == "admin" for r in records)
    text = json.dumps(records)
    for secret in (operator.password, team["admin"].password, operator.token):
        assert secret not in text
    journal = subprocess.run(
        ["journalctl", "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=wire-mpc"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "WIRE_ROLE" in journal
    for secret in (operator.password, team["admin"].password, operator.token, operator.secret):
        assert secret not in journal


def test_report_counts_audit_records(http: Http, team) -> None:
    status, answer = http.call("GET", "/v1/reports?period=daily", token=team["auditor"].token)
    assert status == 200, answer
    assert answer["period"] == "daily"
    assert any(e["event"] == "api.login" for e in answer["audit"]["events"])
    assert http.call("GET", "/v1/reports?period=yearly", token=team["auditor"].token)[0] == 400


def test_security_check_reports_each_item(http: Http, team) -> None:
    status, answer = http.call("GET", "/v1/security-check", token=team["auditor"].token)
    assert status == 200, answer
    items = {i["check"]: i for i in answer["items"]}
    assert items["hsm"]["passed"], items["hsm"]
    assert items["audit"]["passed"]
    assert not items["journal sealing"]["passed"]  # only the image seals the journal
    assert answer["passed"] is False


def test_a_state_change_without_audit_is_refused(http: Http, team) -> None:
    """journald's socket is moved away (inside this test run's private mount namespace)."""
    socket = Path("/run/systemd/journal/socket")
    aside = socket.with_name("socket.aside")
    socket.rename(aside)
    try:
        status, answer = http.call("POST", "/v1/init", token=team["admin"].token)
        assert (status, answer["error"]["code"]) == (503, "audit-unavailable")
        assert http.call("GET", "/v1/status", token=team["auditor"].token)[0] == 200
    finally:
        aside.rename(socket)
    status, answer = http.call("POST", "/v1/init", token=team["admin"].token)
    assert status == 200, answer
    assert answer["node_id"] == "node-1"


def test_bad_input_gets_a_clear_error(http: Http, team) -> None:
    token = team["operator"].token
    cases = [
        ("POST", "/v1/dkg", {"ceremony_id": "bad id!"}, "body.ceremony_id"),
        ("POST", "/v1/dkg", {"ceremony_id": "ok", "extra": 1}, "body.extra"),
        ("POST", "/v1/test-signing", {"message": 5}, "body.message"),
    ]
    for method, path, body, field in cases:
        status, answer = http.call(method, path, body, token=token)
        assert status == 400, answer
        assert field in answer["error"]["title"]
    status, answer = http.call(
        "POST",
        "/v1/dkg",
        raw=b"{not json",
        token=token,
        headers={"Content-Type": "application/json"},
    )
    assert (status, answer["error"]["code"]) == (400, "bad-request")
    status, answer = http.call(
        "POST", "/v1/dkg", raw=b"x", token=token, headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    status, answer = http.call("GET", "/v1/nothing", token=token)
    assert (status, answer["error"]["code"]) == (404, "not-found")
    status, answer = http.call("POST", "/v1/test-burn", {}, token=token)
    assert (status, answer["error"]["code"]) == (409, "no-key")  # before the DKG


def operator_cli(
    api_cluster: DevCluster, session: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "api.mpc_operator",
            "--socket",
            str(api_cluster[2].api_socket),
            "--session-file",
            str(session),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        input=stdin,
    )


def test_mpc_operator_end_to_end(api_cluster: DevCluster, tmp_path: Path) -> None:
    """The client on node 2: bootstrap its admin, log in, read, and its exit codes."""
    session = tmp_path / "session.json"
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    run = operator_cli(api_cluster, session, "status")
    assert run.returncode == 3, run.stderr  # not logged in
    run = operator_cli(
        api_cluster,
        session,
        "--json",
        "user",
        "create",
        "--username",
        "root",
        "--role",
        "admin",
        "--password-file",
        str(password),
    )
    assert run.returncode == 0, run.stderr
    enrolled = json.loads(run.stdout)
    from urllib.parse import parse_qs, urlsplit

    import pyotp

    secret = parse_qs(urlsplit(enrolled["otpauth_uri"]).query)["secret"][0]
    run = operator_cli(
        api_cluster,
        session,
        "login",
        "--username",
        "root",
        "--password-file",
        str(password),
        "--code",
        pyotp.TOTP(secret).now(),
    )
    assert run.returncode == 0, run.stderr
    assert session.stat().st_mode & 0o777 == 0o600
    run = operator_cli(api_cluster, session, "--json", "status")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["node_id"] == "node-2"
    run = operator_cli(api_cluster, session, "key-info")
    assert run.returncode == 0
    assert "node_id: node-2" in run.stdout
    run = operator_cli(api_cluster, session, "dkg", "--ceremony-id", "nope")
    assert run.returncode == 4  # an admin may not run ceremonies
    run = operator_cli(api_cluster, session, "test-burn")
    assert run.returncode == 4
    run = operator_cli(api_cluster, session, "--socket", "/nonexistent.sock", "status")
    assert run.returncode == 5


def test_sessions_expire(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "short", parties=2, threshold=2, api=True, session_seconds=1.0)
    cluster.create()
    cluster.start()
    try:
        http = Http(cluster[1].api_socket)
        admin = log_in(http, enroll(http, "admin", "admin", None))
        assert http.call("GET", "/v1/status", token=admin.token)[0] == 200
        time.sleep(1.5)  # the session's one second of idleness passes
        status, answer = http.call("GET", "/v1/status", token=admin.token)
        assert (status, answer["error"]["code"]) == (401, "unauthenticated")
    finally:
        cluster.close()


@pytest.mark.parametrize("role", ["admin", "auditor"])
def test_schemathesis_finds_no_server_error(http: Http, team, api_cluster, role) -> None:
    """Generated requests against the live socket, within the schema and breaking it: no 5xx
    but the documented 501/503, and every answer as documented. Operator routes start real
    ceremonies, so the operator's reach is covered by the role test instead; logging out
    would end the session. What no JSON encoder writes (NaN, deep nesting) is fuzzed by
    test_request_edges.py."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from requests_unixsocket.adapters import UnixHTTPConnectionPool
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode

    _, document = http.call("GET", "/v1/openapi.json", token=team[role].token)
    schema = schemathesis.openapi.from_dict(document).exclude(path="/v1/session", method="DELETE")
    del not_a_server_error
    socket_url = "http+unix://" + quote(str(api_cluster[1].api_socket), safe="")
    pool = UnixHTTPConnectionPool(socket_url, timeout=120)

    class ToSocket(requests.adapters.HTTPAdapter):
        """Every request to http://wire-api goes to the node's Unix socket."""

        def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
            return pool

    session = requests.Session()
    session.mount("http://wire-api", ToSocket())
    base = "http://wire-api"
    failures = []
    calls = 0

    def explore(op: Any, mode: GenerationMode) -> None:
        @settings(
            max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(
                base_url=base,
                session=session,
                headers={"Authorization": f"Bearer {team[role].token}"},
            )
            if response.status_code >= 500 and response.status_code not in (501, 503):
                failures.append(
                    (case.method, case.formatted_path, response.status_code, response.text[:200])
                )
            if str(response.status_code) not in op.definition.raw["responses"]:
                failures.append(
                    (case.method, case.formatted_path, response.status_code, "undocumented status")
                )
            content_type = response.headers.get("content-type") or [""]  # lower-cased, lists
            if content_type[0].split(";")[0] != "application/json":
                failures.append((case.method, case.formatted_path, "not JSON", content_type))

        run()

    for operation in schema.get_all_operations():
        explore(operation.ok(), GenerationMode.POSITIVE)
        # And requests that break the schema on purpose (unless it has nothing to break).
        with contextlib.suppress(Unsatisfiable):
            explore(operation.ok(), GenerationMode.NEGATIVE)
    assert calls > 200
    assert failures == [], "\n".join(sorted({repr(f[:3]) for f in failures}))
