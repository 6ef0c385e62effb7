"""The API's edges, over its real socket under gunicorn: bodies framed by Content-Length or
chunked (really sent chunked), a body required where a route takes one and refused where it
takes none, strict JSON in bodies (no NaN or Infinity, bounded nesting), query numbers in
decimal digits only, and a failure that is a bug answered with an incident id while its
text stays in the log. The engine's side: tests/cluster/test_control_socket.py."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.body import MAX_BODY, read_body
from api.errors import ApiError
from api.routes import ROUTES, Route
from tests.api.conftest import Http, Operator
from tools.devcluster import DevCluster

REPO = Path(__file__).resolve().parents[2]


def exchange(path: Path, request: bytes) -> tuple[int, Any]:
    """Sends `request` as it is on a connection of its own; the status and the JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        payload = response.read()
    return response.status, json.loads(payload) if payload else None


def request(
    method: str,
    path: str,
    *,
    chunks: list[bytes] | None = None,
    body: bytes | None = None,
    user: Operator | None = None,
    totp: bool = False,
    headers: dict[str, str] | None = None,
) -> bytes:
    """An HTTP/1.1 request: with `chunks`, its body in chunked transfer coding, one chunk
    each; with `body`, a Content-Length; with neither, no body and neither header."""
    lines = [f"{method} {path} HTTP/1.1", "Host: wire-api", "Connection: close"]
    if user is not None:
        lines.append(f"Authorization: Bearer {user.token}")
        if totp:
            lines.append(f"X-Wire-TOTP: {user.code()}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
        data = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
        data = body
    else:
        data = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


JSON = {"Content-Type": "application/json"}


def test_a_chunked_body_is_read_whole(http: Http, team: dict[str, Operator]) -> None:
    admin = team["admin"]
    disable = request(
        "POST",
        "/v1/service/disable",
        user=admin,
        totp=True,
        headers=JSON,
        chunks=[b'{"reason": ', b'"chunked maint', b'enance"}'],
    )
    status, answer = exchange(http.path, disable)
    assert status == 200, answer
    assert answer["enabled"] is False
    assert answer["reason"].startswith("chunked maintenance")
    enable = request(
        "POST", "/v1/service/enable", user=admin, totp=True, headers=JSON, chunks=[b"{", b"}"]
    )
    status, answer = exchange(http.path, enable)
    assert (status, answer["enabled"]) == (200, True), answer


@pytest.mark.parametrize(
    "framing",
    [{}, {"body": b""}, {"chunks": []}],
    ids=["no body at all", "Content-Length 0", "chunked, no chunk"],
)
def test_a_route_that_takes_a_body_needs_one(
    http: Http, team: dict[str, Operator], framing: dict[str, Any]
) -> None:
    # An absent body taken as {} would make this a sweep (coordinate defaults to true)
    # where the operator sent an approval ({"coordinate": false}).
    sent = request(
        "POST", "/v1/test-consolidate-fees", user=team["operator"], headers=JSON, **framing
    )
    status, answer = exchange(http.path, sent)
    assert (status, answer["error"]["code"]) == (400, "bad-request"), answer
    assert answer["error"]["title"].startswith("body: is required"), answer


def test_a_route_without_a_body_refuses_one(http: Http, team: dict[str, Operator]) -> None:
    admin = team["admin"]
    for framing in ({"body": b'{"node_id": "node-9"}'}, {"chunks": [b"{}"]}):
        status, answer = exchange(
            http.path, request("POST", "/v1/init", user=admin, headers=JSON, **framing)
        )
        assert (status, answer["error"]["code"]) == (400, "bad-request"), answer
        assert answer["error"]["title"] == "body: this route takes no request body"
    status, answer = exchange(http.path, request("POST", "/v1/init", user=admin))
    assert status == 200, answer


def test_a_chunked_body_beyond_the_limit_is_refused(http: Http, team: dict[str, Operator]) -> None:
    piece = b" " * (64 << 10)
    chunks = [piece] * (MAX_BODY // len(piece)) + [b"{}"]
    sent = request("POST", "/v1/test-signing", user=team["operator"], headers=JSON, chunks=chunks)
    status, answer = exchange(http.path, sent)
    assert (status, answer["error"]["code"]) == (413, "too-large"), answer


def test_a_broken_chunked_coding_is_a_bad_request(http: Http, team: dict[str, Operator]) -> None:
    sent = request("POST", "/v1/test-signing", user=team["operator"], headers=JSON, chunks=[])
    broken = sent.replace(b"0\r\n\r\n", b"zz\r\n{}\r\n0\r\n\r\n")
    status, answer = exchange(http.path, broken)
    assert (status, answer["error"]["code"]) == (400, "bad-request"), answer


def test_a_chunked_body_that_cannot_be_framed_is_411() -> None:
    """A WSGI server that does not end the input at the last chunk (no
    `wsgi.input_terminated`) leaves no way to know where the body ends: 411, not {}."""
    schema = next(r.body for r in ROUTES if r.path == "/v1/test-consolidate-fees")
    environ = falcon.testing.create_environ(
        method="POST",
        path="/v1/test-consolidate-fees",
        body=b'{"coordinate": false}',
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
    )
    environ.pop("CONTENT_LENGTH", None)
    environ.pop("wsgi.input_terminated", None)
    with pytest.raises(ApiError) as refused:
        read_body(falcon.Request(environ), schema)
    assert (refused.value.status, refused.value.code) == (411, "length-required")
    # The same body from a server that frames it (as gunicorn does) is read whole.
    environ["wsgi.input"].seek(0)
    environ["wsgi.input_terminated"] = True
    assert read_body(falcon.Request(environ), schema) == {"coordinate": False}


# -- strict JSON in bodies: the fuzz test's generator cannot write what JSON forbids ------
HOSTILE = st.one_of(
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-2.5e999",
            '"\\ud800"',
            '"a\\udfffb"',
            '{"a": 1, "a": 1}',
            "1" + "0" * 5000,
        ]
    ),
    st.integers(33, 5000).map(lambda n: "[" * n + "]" * n),
    st.integers(5000, 300_000).map(lambda n: "[" * n),
)


def body_routes() -> list[Route]:
    return [r for r in ROUTES if r.body is not None]


def role_for(route: Route) -> str | None:
    return None if route.public else route.roles[0]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_non_finite_numbers_and_deep_nesting_are_refused(http: Http, team, data) -> None:
    route = data.draw(st.sampled_from(body_routes()), label="route")
    names = sorted(route.body.get("properties", {})) or ["anything"]  # type: ignore[union-attr]
    name = data.draw(st.sampled_from(names), label="field")
    value = data.draw(HOSTILE, label="value")
    for _ in range(data.draw(st.integers(0, 3), label="arrays around it")):
        value = f"[1, {value}]"
    role = role_for(route)
    user = team[role] if role else None
    sent = request(
        route.method, route.path, user=user, headers=JSON, body=f'{{"{name}": {value}}}'.encode()
    )
    status, answer = exchange(http.path, sent)
    assert (status, answer["error"]["code"]) == (400, "bad-request"), (route.path, answer)
    assert answer["error"]["title"].startswith("body: "), answer


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("limit=1_0", "limit"),
        ("limit=%D9%A1", "limit"),
        ("limit=+5", "limit"),
        ("since=nan", "since"),
        ("since=inf", "since"),
        ("since=1e999", "since"),
        ("since=%201", "since"),
    ],
)
def test_query_numbers_are_decimal_digits(http: Http, team, query: str, name: str) -> None:
    status, answer = http.call("GET", f"/v1/audit?{query}", token=team["auditor"].token)
    assert (status, answer["error"]["code"]) == (400, "bad-request"), answer
    assert answer["error"]["title"].startswith(f"query.{name}: must be"), answer
    assert http.call("GET", "/v1/audit?limit=10&since=0.5", token=team["auditor"].token)[0] == 200


def test_an_unexpected_api_error_is_logged_not_told(api_cluster: DevCluster) -> None:
    """A handler that fails with a ValueError (a bug, not the client's doing) answers 500
    internal-error with an incident id, not 400 with the exception's text. Built in a process
    of its own, as it switches prometheus_client to files."""
    script = """
import io, json, logging, sys
from pathlib import Path
import falcon.testing
from api.app import Resource, WireApi
from api.routes import Route
from appliance.config import load_config

def broken(call):
    raise ValueError("the table /var/lib/secret.db is odd")

api = WireApi(load_config(Path(sys.argv[1])))
route = Route("GET", "/v1/broken", "broken", "fails", broken, public=True)
api.app.add_route(route.path, Resource(api, {"GET": route}))
logged = io.StringIO()
logging.getLogger("wire-api").addHandler(logging.StreamHandler(logged))
answer = falcon.testing.TestClient(api.app).simulate_get(route.path)
print(json.dumps({"status": answer.status_code, "json": answer.json, "log": logged.getvalue()}))
"""
    run = subprocess.run(
        [sys.executable, "-c", script, str(api_cluster[1].config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    )
    seen = json.loads(run.stdout.splitlines()[-1])
    assert seen["status"] == 500, seen
    error = seen["json"]["error"]
    assert error["code"] == "internal-error"
    assert "secret" not in error["title"]
    incident = error["title"].rsplit("incident ", 1)[1].rstrip(")")
    assert f"incident {incident}" in seen["log"]
    assert "the table /var/lib/secret.db is odd" in seen["log"]
