"""A local cluster whose nodes each run the real `wire-api` under gunicorn on a Unix socket,
and a small HTTP client for that socket. Users are created through the API itself."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from api.mpc_operator import UnixConnection
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
    """A user of one node, with its password and TOTP generator."""

    username: str
    role: str
    password: str
    secret: str
    backup_codes: list[str]
    token: str = ""
    used: set[int] = field(default_factory=set)

    def code(self) -> str:
        """A TOTP code of a time step not used yet (the API refuses replays): the previous,
        current and next steps are all accepted, so up to three fresh codes per 30 s."""
        totp = pyotp.TOTP(self.secret)
        now = time.time()
        for offset in (-30, 0, 30):
            step = int((now + offset) // 30)
            if step > max(self.used, default=0):
                self.used.add(step)
                return totp.at(now + offset)
        raise AssertionError(f"{self.username} has used every TOTP step of this minute")


def enroll(http: Http, username: str, role: str, admin: Operator | None) -> Operator:
    password = secrets.token_urlsafe(16)
    status, answer = http.call(
        "POST", "/v1/users", {"username": username, "role": role, "password": password},
        token=admin.token if admin else None,
    )  # fmt: skip
    assert status == 201, answer
    uri = answer["otpauth_uri"]
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    return Operator(username, role, password, secret, answer["backup_codes"])


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
