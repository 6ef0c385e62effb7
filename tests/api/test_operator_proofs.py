"""What the operators get through the real API (gunicorn on its Unix socket, real engines
behind it), now that the engine checks who is asking: a key-share backup needs two admins,
creating users and enabling the service need a fresh code, wrong logins slow TOTP guessing
down without keeping the real admin out, and audit queries show only records the node's
own processes wrote."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from hsm.backup import Passphrase, read_backup
from tests.api.conftest import Http, Operator, enroll, log_in
from tests.cluster.conftest import Journal, run_dkg
from tools.devcluster import DevCluster, wait_until

REPO = Path(__file__).resolve().parents[2]
DELAY_MAX = 3  # the engine's code_delay_max_seconds here
WINDOW = 5  # the engine's export_approval_seconds here
PASSPHRASE = "the two admins' shared secret"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    cluster = DevCluster(
        tmp_path_factory.mktemp("proofs"),
        parties=2,
        threshold=2,
        round_timeout=3.0,
        api=True,
        operators={"code_delay_max_seconds": DELAY_MAX, "export_approval_seconds": WINDOW},
    )
    cluster.create()
    cluster.start()
    run_dkg(cluster)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def http(node: DevCluster) -> Http:
    return Http(node[1].api_socket)


@pytest.fixture(scope="module")
def admins(http: Http) -> dict[str, Operator]:
    """Admins and an operator, spread so that nobody needs more than the three fresh codes
    an authenticator gives per half-minute in one test."""
    root = log_in(http, enroll(http, "root", "admin", None))
    alice = log_in(http, enroll(http, "alice", "admin", root))
    # Two admins now: a new admin needs both an admin's code and another admin's.
    bob = log_in(http, enroll(http, "bob", "admin", root, second=alice))
    carol = log_in(http, enroll(http, "carol", "admin", bob, second=alice))
    return {
        "alice": alice,
        "bob": bob,
        "carol": carol,
        "olga": log_in(http, enroll(http, "olga", "operator", bob)),
    }


def error(answer: tuple[int, Any]) -> tuple[int, str]:
    return answer[0], answer[1]["error"]["code"]


def ask_for_backup(http: Http, admin: Operator) -> dict[str, Any]:
    status, asked = http.call(
        "POST",
        "/v1/backup/key-share",
        {"key": "custody", "passphrase": PASSPHRASE},
        token=admin.token,
        totp=admin.code(),
    )
    assert status == 202, asked
    return asked  # type: ignore[no-any-return]


def approve(
    http: Http, admin: Operator, export_id: str, code: str | None = None
) -> tuple[int, Any]:
    return http.call(
        "POST",
        f"/v1/backup/requests/{export_id}/approve",
        token=admin.token,
        totp=code or admin.code(),
    )


def test_a_key_share_backup_needs_two_admins(http: Http, admins: dict[str, Operator]) -> None:
    alice, bob, olga = admins["alice"], admins["bob"], admins["olga"]
    # An operator cannot ask at all any more.
    assert error(
        http.call(
            "POST", "/v1/backup/key-share", {"key": "custody"}, token=olga.token, totp="123456"
        )
    ) == (403, "forbidden")
    bobs_code = bob.code()  # ready before the window opens: his authenticator may make him wait
    asked = ask_for_backup(http, alice)
    assert "backup" not in asked  # one admin alone gets nothing
    assert (asked["requested_by"], asked["key"]) == ("alice", "custody")
    status, listing = http.call("GET", "/v1/backup/requests", token=bob.token)
    assert status == 200
    assert [e["export_id"] for e in listing["exports"]] == [asked["export_id"]]
    assert "backup" not in listing["exports"][0]
    # Bob, within the window: the backup is his, and it opens with the passphrase.
    status, released = approve(http, bob, asked["export_id"], bobs_code)
    assert status == 200, released
    assert (released["requested_by"], released["approved_by"]) == ("alice", "bob")
    share = read_backup(base64.b64decode(released["backup"])).unlock(Passphrase(PASSPHRASE))
    assert share.identifier == 1
    # Released once: nothing waits any more.
    assert http.call("GET", "/v1/backup/requests", token=bob.token)[1]["exports"] == []


def test_the_requester_never_and_nobody_after_the_window_can_approve(
    http: Http, admins: dict[str, Operator]
) -> None:
    alice, bob = admins["alice"], admins["bob"]
    asked = ask_for_backup(http, alice)
    # Alice approving her own request, with a valid code of hers: refused.
    assert error(approve(http, alice, asked["export_id"])) == (403, "same-admin")
    wait_until(
        lambda: http.call("GET", "/v1/backup/requests", token=bob.token)[1]["exports"][-1][
            "expired"
        ],
        within=WINDOW + 5,
        pause=0.5,
        what="the request expired",
    )
    assert error(approve(http, bob, asked["export_id"])) == (409, "export-expired")


def test_user_create_and_enable_service_need_a_fresh_code(
    http: Http, admins: dict[str, Operator]
) -> None:
    carol = admins["carol"]
    body = {"username": "erin", "role": "auditor", "password": "a long enough password"}
    assert error(http.call("POST", "/v1/users", body, token=carol.token)) == (
        403,
        "step-up-required",
    )
    used = carol.code()
    assert (
        http.call("POST", "/v1/users", {**body, "username": "dave"}, token=carol.token, totp=used)[
            0
        ]
        == 201
    )
    # The same code again is refused by the engine, and erin does not exist.
    assert error(http.call("POST", "/v1/users", body, token=carol.token, totp=used)) == (
        403,
        "step-up-required",
    )
    # A new admin, with carol's fresh code alone: the engine wants another admin's too.
    body = {"username": "mallory", "role": "admin", "password": "a long enough password"}
    code = carol.code()

    def alone() -> tuple[int, Any] | None:
        answer = http.call("POST", "/v1/users", body, token=carol.token, totp=code)
        return None if answer[0] == 429 else answer

    assert error(wait_until(alone, within=DELAY_MAX + 2, what="carol's code after the delay")) == (
        403,
        "second-admin-required",
    )
    users = {u["username"] for u in http.call("GET", "/v1/users", token=carol.token)[1]["users"]}
    assert "dave" in users
    assert not users & {"erin", "mallory"}
    reason = {"reason": "maintenance"}
    code = carol.code()

    def disable() -> tuple[int, Any] | None:
        answer = http.call("POST", "/v1/service/disable", reason, token=carol.token, totp=code)
        return None if answer[0] == 429 else answer

    status, answer = wait_until(disable, within=DELAY_MAX + 2, what="carol's code after the delay")
    assert (status, answer["enabled"]) == (200, False)
    assert error(http.call("POST", "/v1/service/enable", {}, token=carol.token)) == (
        403,
        "step-up-required",
    )
    status, answer = http.call(
        "POST", "/v1/service/enable", {}, token=carol.token, totp=carol.code()
    )
    assert (status, answer["enabled"]) == (200, True)


def login(http: Http, user: Operator, password: str, code: str) -> tuple[int, Any]:
    return http.call(
        "POST", "/v1/session", {"username": user.username, "password": password, "code": code}
    )


def test_failed_logins_without_the_password_keep_nobody_out(
    http: Http, admins: dict[str, Operator]
) -> None:
    olga = admins["olga"]
    current = pyotp.TOTP(olga.secret).now()
    for guess in range(10):  # an attacker on the socket, TOTP- and backup-shaped codes
        for code in (f"{guess:06d}", "ABCD-EFGH-JKLM", current):
            status, answer = login(http, olga, f"guess number {guess:04d}", code)
            assert (status, answer["error"]["code"]) == (401, "login-failed")
    status, answer = login(http, olga, olga.password, olga.code())
    assert status == 201, answer


def test_wrong_codes_slow_totp_guessing_and_a_backup_code_still_gets_in(
    node: DevCluster, http: Http, admins: dict[str, Operator]
) -> None:
    olga = admins["olga"]
    engine = node[1].process
    assert engine is not None
    # Someone who has olga's password guesses codes; each wrong one doubles the time before
    # the next is looked at (1 s, 2 s, then DELAY_MAX): the guesses wait their turn here.
    for delay in (1, 2, 0):
        assert login(http, olga, olga.password, "000000")[0] == 401
        time.sleep(delay + 0.2)
    refusals = wait_until(
        lambda: (
            len(found := Journal().records(WIRE_EVENT="operator.code-refused", _PID=engine.pid))
            == 3
            and found
        ),
        within=10,
        what="the engine's record of each counted wrong code",
    )
    assert [r["WIRE_ACTOR"] for r in refusals] == ["olga"] * 3
    # Within the delay even the right code is not looked at, and the answer tells nothing.
    code = olga.code()
    status, answer = login(http, olga, olga.password, code)
    assert (status, answer["error"]["title"]) == (401, "wrong username, password or code")
    # The real olga gets in now with a backup code, and with TOTP after a bounded wait.
    assert login(http, olga, olga.password, olga.backup_codes[0])[0] == 201

    def totp_login() -> dict[str, Any] | None:
        status, answer = login(http, olga, olga.password, code)
        return answer if status == 201 else None

    assert wait_until(totp_login, within=DELAY_MAX + 2, pause=0.5, what="olga's TOTP login")


def forge_audit_record(actor: str) -> None:
    """Another local user writes a record that looks like the engine's."""
    fields = (
        f"MESSAGE=backup of custody-1 made by {actor}\nSYSLOG_IDENTIFIER=wire-mpc\n"
        f"WIRE_EVENT=key.backup\nWIRE_OUTCOME=success\nWIRE_ACTOR={actor}\n"
    )
    subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "logger", "--journald"],
        input=fields,
        text=True,
        check=True,
        timeout=30,
    )


def journal(*match: str) -> list[dict[str, Any]]:
    run = subprocess.run(
        ["journalctl", "-o", "json", "--no-pager", *match],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def test_audit_queries_show_no_record_another_process_wrote(
    http: Http, admins: dict[str, Operator]
) -> None:
    auditor = admins["alice"]
    forge_audit_record("forger-7f3a")
    forged = wait_until(
        lambda: journal("WIRE_ACTOR=forger-7f3a"),
        within=10,
        what="the forged record in the journal",
    )
    assert forged[0]["SYSLOG_IDENTIFIER"] == "wire-mpc"
    assert forged[0]["_UID"] == "65534"
    status, answer = http.call("GET", "/v1/audit?actor=forger-7f3a", token=auditor.token)
    assert (status, answer["records"]) == (200, [])
    status, answer = http.call("GET", "/v1/audit?event=key.backup&limit=1000", token=auditor.token)
    assert all(r.get("actor") != "forger-7f3a" for r in answer["records"])
    # The node's own records still show, with who wrote them.
    assert any(r.get("actor") == "bob" and r["writer"] == "root" for r in answer["records"])
    status, report = http.call("GET", "/v1/reports?period=daily", token=auditor.token)
    assert status == 200
    assert "forger-7f3a" not in report["audit"]["actors"]
    assert "alice" in report["audit"]["actors"]


def operator_cli(node: DevCluster, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "api.mpc_operator",
            "--socket",
            str(node[1].api_socket),
            "--session-file",
            str(node.root / f"{user}.session"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def test_mpc_operator_backup_by_two_admins(
    node: DevCluster, http: Http, admins: dict[str, Operator], tmp_path: Path
) -> None:
    alice, bob = admins["alice"], admins["bob"]
    for admin in (alice, bob):  # their API sessions, as `mpc_operator login` keeps them
        session = {
            "token": admin.token,
            "username": admin.username,
            "expires_at": 0,
            "socket": str(node[1].api_socket),
        }
        (node.root / f"{admin.username}.session").write_text(json.dumps(session))
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    bobs_code = bob.code()
    run = operator_cli(
        node,
        "alice",
        "--json",
        "--totp",
        alice.code(),
        "backup",
        "key-share",
        "--key",
        "attestation",
        "--passphrase-file",
        str(passphrase),
    )
    assert run.returncode == 0, run.stderr
    export_id = json.loads(run.stdout)["export_id"]
    out = tmp_path / "attestation.backup"
    run = operator_cli(node, "alice", "backup", "list")
    assert export_id in run.stdout
    run = operator_cli(
        node, "bob", "--totp", bobs_code, "backup", "approve", export_id, "--output", str(out)
    )
    assert run.returncode == 0, run.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert read_backup(out.read_bytes()).unlock(Passphrase(PASSPHRASE)).identifier == 1
