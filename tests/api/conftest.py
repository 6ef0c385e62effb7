"""A local cluster whose nodes each run the real `wire-api` under gunicorn on a Unix socket,
and a small HTTP client for that socket. Users are created through the API itself (which
has the engine enrol them: the engine keeps their TOTP seeds)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from api.mpc_operator import UnixConnection
from tools.authenticator import Authenticator, seed_of
from tools.devcluster import DevCluster


class Http:
    """One node's API socket."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, method: str, route: str, body: Any = None, token: str | None = None,
             totp: str | None = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        if totp:
            sent["X-Wire-TOTP"] = totp
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        connection = UnixConnection(str(self.path), 120)
        try:
            connection.request(method, route, body=data, headers=sent)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        return response.status, json.loads(payload) if payload else None


@dataclass
class Operator:
    """A user of one node, with its password and authenticator."""

    username: str
    role: str
    password: str
    secret: str
    backup_codes: list[str]
    token: str = ""
    authenticator: Authenticator = field(default_factory=Authenticator)

    def __post_init__(self) -> None:
        self.authenticator.seeds[self.username] = self.secret

    def code(self) -> str:
        """A TOTP code of a time step not used yet (the engine refuses replays): up to
        three fresh codes per 30 s, then the next step is waited for."""
        return self.authenticator.code(self.username)

    @property
    def last_step(self) -> int:
        return self.authenticator.last_step[self.username]


def enroll(
    http: Http, username: str, role: str, admin: Operator | None, second: Operator | None = None
) -> Operator:
    """A new user: the first admin without a session, every other one by `admin` with a
    fresh code, and a new admin of a node with two admins with `second`'s code too."""
    password = secrets.token_urlsafe(16)
    body: dict[str, Any] = {"username": username, "role": role, "password": password}
    code = admin.code() if admin else None
    if second is not None:
        body["second_admin"] = {"username": second.username, "code": second.code()}
    status, answer = http.call(
        "POST", "/v1/users", body, token=admin.token if admin else None, totp=code
    )
    assert status == 201, answer
    return Operator(
        username, role, password, seed_of(answer["otpauth_uri"]), answer["backup_codes"]
    )


def log_in(http: Http, user: Operator) -> Operator:
    status, answer = http.call(
        "POST", "/v1/session",
        {"username": user.username, "password": user.password, "code": user.code()},
    )  # fmt: skip
    assert status == 201, answer
    user.token = answer["token"]
    return user


@pytest.fixture(scope="module")
def api_cluster() -> Iterator[DevCluster]:
    if not os.environ.get("WIRE_MPC_PRIVATE_JOURNAL"):
        pytest.fail("run the API tests beside a journald: tools/with-journald (make test)")
    root = Path(tempfile.mkdtemp(prefix="wire-api-test-"))
    cluster = DevCluster(root, parties=3, threshold=2, round_timeout=3.0, api=True)
    cluster.create()
    cluster.start()
    yield cluster
    cluster.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def http(api_cluster: DevCluster) -> Http:
    return Http(api_cluster[1].api_socket)


@pytest.fixture(scope="module")
def team(http: Http) -> dict[str, Operator]:
    """The first admin (bootstrap), an operator and an auditor, all logged in."""
    admin = log_in(http, enroll(http, "admin", "admin", None))
    return {
        "admin": admin,
        "operator": log_in(http, enroll(http, "olga", "operator", admin)),
        "auditor": log_in(http, enroll(http, "aude", "auditor", admin)),
    }
