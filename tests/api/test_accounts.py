"""Operator accounts of the API: users created through the engine's registry, password +
TOTP (checked by the registry) or backup-code logins, no lockout anybody can impose,
sessions, several workers on one file, what the file holds, and the migration that takes
the TOTP seeds out of it.

The engine's registry runs in this process on a real SoftHSM token and a real SQLite store
(`appliance.operators`); time is a fake clock moved by hand, shared by both.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pyotp
import pytest

from api import accounts as accounts_module
from api.accounts import ROLES, AccountError, Accounts, Enrollment, Session, User
from appliance.errors import CommandError
from appliance.operators import OperatorRegistry
from appliance.store import OperatorRecords, Store
from hsm.keystore import Keystore
from tests.hsm.conftest import hsm_config, keystore, softhsm  # noqa: F401 (fixtures)

ISSUER = "wire-mpc cluster-7/node-2"
PASSWORD = "correct horse battery staple"
# One second into a TOTP step (1_700_000_010 is a multiple of 30).
START = 1_700_000_010.0 + 1.0


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Node:
    """The engine's side of accounts: its operator registry, and what the API asks of it."""

    def __init__(self, registry: OperatorRegistry) -> None:
        self.registry = registry
        self.asked: list[tuple[str, str, bool]] = []

    def check_code(self, username: str, code: str, password_ok: bool) -> bool:
        self.asked.append((username, code, password_ok))
        return self.registry.check_login(username, code, password_ok).accepted

    def create(
        self,
        accounts: Accounts,
        username: str,
        role: str,
        by: Enrollment | None,
        password: str = PASSWORD,
    ) -> Enrollment:
        creator = None if by is None else by.user
        return accounts.create_user(
            username,
            role,
            password,
            created_by=creator,
            enrol=lambda: (
                self.registry.enrol(username, role, creator and creator.username).otpauth_uri
            ),
        )

    def login(self, accounts: Accounts, username: str, password: str, code: str) -> Session:
        return accounts.login(username, password, code, self.check_code)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "accounts.db"


@pytest.fixture
def node(tmp_path: Path, keystore: Keystore, clock: Clock) -> Iterator[Node]:  # noqa: F811
    store = Store(tmp_path / "state.db")
    yield Node(
        OperatorRegistry(
            OperatorRecords(store), keystore, "node-2", ISSUER, delay_max=300, clock=clock
        )
    )
    store.close()


@pytest.fixture
def accounts(db_path: Path, clock: Clock) -> Iterator[Accounts]:
    accounts = Accounts(db_path, clock=clock)
    yield accounts
    accounts.close()


@pytest.fixture
def admin(accounts: Accounts, node: Node) -> Enrollment:
    return node.create(accounts, "alice", "admin", None)


def refusal(call: Callable[[], object]) -> AccountError:
    with pytest.raises(AccountError) as info:
        call()
    return info.value


def seed(enrollment: Enrollment) -> str:
    return parse_qs(urlparse(enrollment.otpauth_uri).query)["secret"][0]


def totp(enrollment: Enrollment, at: float, offset: int = 0) -> str:
    return pyotp.TOTP(seed(enrollment)).at(at, counter_offset=offset)


def login_failed(error: AccountError) -> bool:
    return (error.code, str(error), error.status) == (
        "login-failed",
        "wrong username, password or code",
        401,
    )


# -- users --------------------------------------------------------------------------------------
def test_the_first_admin_while_nobody_is_enabled_and_the_engine_agrees(
    accounts: Accounts, node: Node
) -> None:
    assert not accounts.has_enabled_users()
    with pytest.raises(CommandError, match="must be an admin"):
        node.create(accounts, "bob", "operator", None)
    assert accounts.list_users() == []  # the engine refused: nothing is kept here
    enrollment = node.create(accounts, "alice", "admin", None)
    assert enrollment.user == User("alice", "admin", False, START)
    assert accounts.has_enabled_users()
    with pytest.raises(CommandError) as refused:
        node.create(accounts, "carol", "admin", None)
    assert refused.value.code == "bootstrap-closed"
    assert [u.username for u in accounts.list_users()] == ["alice"]


@pytest.mark.parametrize(
    "username",
    ["", "Alice", "1alice", "-alice", ".alice", "al ice", "alice\n", "al/ice", "a" * 65, "élise"],
)
def test_bad_usernames_are_refused_before_the_engine_is_asked(
    accounts: Accounts, username: str
) -> None:
    def never() -> str:
        raise AssertionError("the engine was asked")

    error = refusal(
        lambda: accounts.create_user(username, "admin", PASSWORD, created_by=None, enrol=never)
    )
    assert (error.code, error.status) == ("bad-username", 400)


@pytest.mark.parametrize("username", ["a", "alice", "a.b_c-d", "z9", "a" * 64])
def test_good_usernames_are_accepted(accounts: Accounts, node: Node, username: str) -> None:
    assert node.create(accounts, username, "admin", None).user.username == username


def test_roles_duplicates_and_password_lengths(
    accounts: Accounts, node: Node, admin: Enrollment
) -> None:
    for role in ROLES:
        assert node.create(accounts, f"u-{role}", role, admin)
    error = refusal(lambda: node.create(accounts, "eve", "root", admin))
    assert (error.code, error.status) == ("bad-role", 400)
    with pytest.raises(CommandError) as duplicate:
        node.create(accounts, "alice", "admin", admin)
    assert duplicate.value.code == "user-exists"
    for password in ["x" * 11, "x" * 1025, ""]:
        error = refusal(lambda p=password: node.create(accounts, "eve", "operator", admin, p))
        assert (error.code, error.status) == ("weak-password", 400)
    assert node.create(accounts, "eve", "operator", admin, "x" * 12)
    assert node.create(accounts, "frank", "operator", admin, "y" * 1024)


def test_enrollment_gives_the_engines_totp_seed_and_ten_backup_codes(admin: Enrollment) -> None:
    uri = urlparse(admin.otpauth_uri)
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == f"/{ISSUER}:alice"
    query = parse_qs(uri.query)
    assert query["issuer"] == [ISSUER]
    assert len(pyotp.TOTP(query["secret"][0]).byte_secret()) >= 20

    codes = admin.backup_codes
    assert len(codes) == len(set(codes)) == 10
    symbols = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    for code in codes:
        assert re.fullmatch(f"[{symbols}]{{4}}-[{symbols}]{{4}}-[{symbols}]{{4}}", code)
    # 12 symbols of 32: 60 bits each.
    assert len(symbols) ** 12 >= 2**60
    assert not any(code in repr(admin) for code in codes)
    assert query["secret"][0] not in repr(admin)


def test_each_user_gets_its_own_seed_and_codes(
    accounts: Accounts, node: Node, admin: Enrollment
) -> None:
    bob = node.create(accounts, "bob", "operator", admin)
    assert seed(bob) != seed(admin)
    assert not set(bob.backup_codes) & set(admin.backup_codes)


# -- login --------------------------------------------------------------------------------------
def test_login_with_password_and_totp(accounts: Accounts, node: Node, admin: Enrollment) -> None:
    session = node.login(accounts, "alice", PASSWORD, totp(admin, START))
    assert session.user == admin.user
    assert session.expires_at == START + 900
    assert len(session.token) >= 43
    assert session.token not in repr(session)
    assert accounts.authenticate(session.token) == admin.user


def test_every_refused_login_looks_the_same(
    accounts: Accounts, node: Node, admin: Enrollment, clock: Clock
) -> None:
    bob = node.create(accounts, "bob", "operator", admin)
    accounts.disable_user("bob")
    good = totp(admin, START)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    attempts = [
        ("alice", PASSWORD + "!", good),  # wrong password
        ("alice", PASSWORD, ""),  # no code
        ("alice", PASSWORD, "ABCD-EFGH-JKLM"),  # not one of the backup codes
        ("nobody", PASSWORD, good),  # unknown user
        ("bob", PASSWORD, totp(bob, START)),  # disabled user, right password and code
        ("ALICE", PASSWORD, good),  # usernames are exact
        ("alice", PASSWORD, wrong),  # wrong code (the engine slows alice's next one)
    ]
    for username, password, code in attempts:
        assert login_failed(
            refusal(lambda u=username, p=password, c=code: node.login(accounts, u, p, c))
        )
    # None of those burnt the code: it works once the wrong code's second has passed.
    clock.advance(1)
    assert node.login(accounts, "alice", PASSWORD, good).user.username == "alice"


def test_every_totp_login_asks_the_engine_saying_whether_the_password_was_right(
    accounts: Accounts, node: Node, admin: Enrollment
) -> None:
    """So the engine does the same work whatever was wrong, and counts only the codes
    offered with the right password."""
    code = totp(admin, START)
    for username, password in [("nobody", PASSWORD), ("alice", "wrong password!")]:
        refusal(lambda u=username, p=password: node.login(accounts, u, p, code))
    node.login(accounts, "alice", PASSWORD, code)
    assert node.asked == [("nobody", code, False), ("alice", code, False), ("alice", code, True)]


def test_unknown_users_cost_a_password_hash_too(
    accounts: Accounts, node: Node, admin: Enrollment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both kinds of refusal run one password check and, for a backup-shaped code, one
    backup-code hash: the time taken does not tell which usernames exist or whether the
    password was right."""
    calls: list[str] = []
    real_verify = accounts_module._verify_password
    real_backup = accounts_module._backup_hash

    def verify(password: str, stored: str) -> bool:
        calls.append("password")
        return real_verify(password, stored)

    def backup(salt: bytes, code: str) -> bytes:
        calls.append("backup")
        return real_backup(salt, code)

    monkeypatch.setattr(accounts_module, "_verify_password", verify)
    monkeypatch.setattr(accounts_module, "_backup_hash", backup)
    for username, password in [
        ("nobody", PASSWORD),
        ("alice", "wrong password!"),
        ("alice", PASSWORD),
    ]:
        calls.clear()
        refusal(lambda u=username, p=password: node.login(accounts, u, p, "ABCD-EFGH-JKLM"))
        assert calls == ["password", "backup"]


def test_a_totp_code_is_accepted_once(
    accounts: Accounts, node: Node, admin: Enrollment, clock: Clock
) -> None:
    code = totp(admin, START)
    session = node.login(accounts, "alice", PASSWORD, code)
    accounts.logout(session.token)
    for wait in (0, 29, 30):  # its step, then the previous one, still inside the window
        clock.advance(wait)
        assert login_failed(refusal(lambda: node.login(accounts, "alice", PASSWORD, code)))


def test_a_backup_code_works_once(accounts: Accounts, node: Node, admin: Enrollment) -> None:
    first, second = admin.backup_codes[:2]
    session = node.login(accounts, "alice", PASSWORD, first)
    assert session.user.username == "alice"
    assert login_failed(refusal(lambda: node.login(accounts, "alice", PASSWORD, first)))
    # Typed loosely: lower case, no dashes, spaces.
    loose = second.lower().replace("-", " ")
    assert node.login(accounts, "alice", PASSWORD, loose)
    assert login_failed(refusal(lambda: node.login(accounts, "alice", PASSWORD, second)))
    # A backup login leaves the TOTP step unused, and never asks the engine.
    assert node.asked == []
    assert node.login(accounts, "alice", PASSWORD, totp(admin, START))


def test_a_backup_code_gets_in_whatever_failed_before(
    accounts: Accounts, node: Node, admin: Enrollment
) -> None:
    """No lockout: wrong passwords and wrong codes (with the right password, which makes
    the engine hold alice's next TOTP code back) leave a backup code working at once."""
    for _ in range(20):
        refusal(lambda: node.login(accounts, "alice", "not the password", "000000"))
        refusal(lambda: node.login(accounts, "alice", PASSWORD, "000000"))
        refusal(lambda: node.login(accounts, "alice", "not the password", "ABCD-EFGH-JKLM"))
    assert login_failed(
        refusal(lambda: node.login(accounts, "alice", PASSWORD, totp(admin, START)))
    )
    assert node.login(accounts, "alice", PASSWORD, admin.backup_codes[0]).user.username == "alice"


def test_a_wrong_password_does_not_consume_the_second_factor(
    accounts: Accounts, node: Node, admin: Enrollment
) -> None:
    for code in (admin.backup_codes[0], totp(admin, START)):
        assert login_failed(
            refusal(lambda c=code: node.login(accounts, "alice", "wrong password!", c))
        )
        assert node.login(accounts, "alice", PASSWORD, code)


def test_backup_codes_are_per_user(accounts: Accounts, node: Node, admin: Enrollment) -> None:
    bob = node.create(accounts, "bob", "operator", admin)
    code = bob.backup_codes[0]
    assert login_failed(refusal(lambda: node.login(accounts, "alice", PASSWORD, code)))
    assert node.login(accounts, "bob", PASSWORD, code)


def test_password_is_compared_after_unicode_normalization(accounts: Accounts, node: Node) -> None:
    enrollment = node.create(accounts, "alice", "admin", None, "caf\u00e9-password-123")
    assert node.login(accounts, "alice", "cafe\u0301-password-123", enrollment.backup_codes[0])


def test_non_text_input_is_a_plain_refusal(
    accounts: Accounts, node: Node, admin: Enrollment
) -> None:
    for args in [(None, PASSWORD, "123456"), ("alice", 123, "123456"), ("alice", PASSWORD, None)]:
        assert login_failed(refusal(lambda a=args: node.login(accounts, *a)))  # type: ignore[arg-type]
    assert login_failed(refusal(lambda: node.login(accounts, "alice", "x" * 100_000, "123456")))


# -- sessions -----------------------------------------------------------------------------------
def test_sessions_slide_but_not_past_the_maximum(db_path: Path, node: Node, clock: Clock) -> None:
    accounts = Accounts(db_path, session_seconds=900, session_max_seconds=2000, clock=clock)
    admin = node.create(accounts, "alice", "admin", None)
    token = node.login(accounts, "alice", PASSWORD, totp(admin, START)).token

    clock.advance(800)
    assert accounts.authenticate(token).username == "alice"
    clock.advance(800)  # 1600 s after login, past the first 900 s
    assert accounts.authenticate(token).username == "alice"
    clock.advance(399)  # 1999 s: still inside the absolute maximum
    assert accounts.authenticate(token).username == "alice"
    clock.advance(1)  # 2000 s: over, however recently used
    assert refusal(lambda: accounts.authenticate(token)).code == "unauthenticated"
    accounts.close()


def test_an_idle_session_expires(
    accounts: Accounts, node: Node, admin: Enrollment, clock: Clock
) -> None:
    token = node.login(accounts, "alice", PASSWORD, totp(admin, START)).token
    clock.advance(899)
    assert accounts.authenticate(token)
    clock.advance(899)
    assert accounts.authenticate(token)
    clock.advance(900)
    error = refusal(lambda: accounts.authenticate(token))
    assert (error.code, str(error), error.status) == (
        "unauthenticated",
        "session missing, expired or revoked; log in again",
        401,
    )


def test_unknown_tokens_are_refused(accounts: Accounts, node: Node, admin: Enrollment) -> None:
    token = node.login(accounts, "alice", PASSWORD, totp(admin, START)).token
    for bad in ["", "nonsense", token[:-1], token + "x", "x" * 10_000]:
        assert refusal(lambda b=bad: accounts.authenticate(b)).code == "unauthenticated"


def test_logout_revokes_only_that_session(
    accounts: Accounts, node: Node, admin: Enrollment
) -> None:
    first = node.login(accounts, "alice", PASSWORD, totp(admin, START)).token
    second = node.login(accounts, "alice", PASSWORD, admin.backup_codes[0]).token
    accounts.logout(first)
    assert refusal(lambda: accounts.authenticate(first)).code == "unauthenticated"
    assert accounts.authenticate(second).username == "alice"
    accounts.logout(first)
    accounts.logout("never issued")
    accounts.logout("")
    assert refusal(lambda: accounts.authenticate(first)).code == "unauthenticated"


def test_disabling_a_user_revokes_its_sessions_and_blocks_login(
    accounts: Accounts, node: Node, admin: Enrollment, db_path: Path
) -> None:
    bob = node.create(accounts, "bob", "operator", admin)
    tokens = [
        node.login(accounts, "bob", PASSWORD, totp(bob, START)).token,
        node.login(accounts, "bob", PASSWORD, bob.backup_codes[0]).token,
    ]
    admin_token = node.login(accounts, "alice", PASSWORD, totp(admin, START)).token

    accounts.disable_user("bob")
    for token in tokens:
        assert refusal(lambda t=token: accounts.authenticate(t)).code == "unauthenticated"
    with closing(sqlite3.connect(db_path)) as db:
        revoked = db.execute("SELECT username, revoked FROM sessions ORDER BY username").fetchall()
    assert revoked == [("alice", 0), ("bob", 1), ("bob", 1)]
    assert login_failed(refusal(lambda: node.login(accounts, "bob", PASSWORD, bob.backup_codes[1])))
    assert accounts.authenticate(admin_token) == admin.user
    assert [u.disabled for u in accounts.list_users()] == [False, True]
    accounts.disable_user("bob")  # again: harmless
    accounts.disable_user("nobody")  # the engine knew a user this file does not: harmless


# -- several workers on one file ----------------------------------------------------------------
def test_two_workers_cannot_both_accept_one_backup_code(
    db_path: Path, node: Node, clock: Clock
) -> None:
    workers = [Accounts(db_path, clock=clock) for _ in range(2)]
    admin = node.create(workers[0], "alice", "admin", None)
    code = admin.backup_codes[0]
    barrier = threading.Barrier(len(workers))
    results: list[str] = []

    def attempt(worker: Accounts) -> None:
        barrier.wait()
        try:
            node.login(worker, "alice", PASSWORD, code)
            results.append("accepted")
        except AccountError as error:
            results.append(error.code)

    threads = [threading.Thread(target=attempt, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["accepted", "login-failed"]
    for worker in workers:
        worker.close()


def test_workers_share_users_and_sessions(db_path: Path, node: Node, clock: Clock) -> None:
    first = Accounts(db_path, clock=clock)
    second = Accounts(db_path, clock=clock)
    admin = node.create(first, "alice", "admin", None)
    assert second.has_enabled_users()
    session = node.login(first, "alice", PASSWORD, totp(admin, START))
    assert second.authenticate(session.token) == admin.user
    second.logout(session.token)
    assert refusal(lambda: first.authenticate(session.token)).code == "unauthenticated"
    first.close()
    second.close()


# -- the file -----------------------------------------------------------------------------------
def test_database_files_are_owner_only_whatever_the_umask(
    db_path: Path, node: Node, clock: Clock
) -> None:
    old_umask = os.umask(0)
    try:
        accounts = Accounts(db_path, clock=clock)
        admin = node.create(accounts, "alice", "admin", None)
        node.login(accounts, "alice", PASSWORD, totp(admin, START))
        files = [db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))]
        assert all(path.exists() for path in files)
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        accounts.close()
    finally:
        os.umask(old_umask)


def test_an_existing_file_is_tightened(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "loose.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    Accounts(path, clock=clock).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def contents(db_path: Path) -> bytes:
    files = [db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))]
    return b"".join(path.read_bytes() for path in files if path.exists())


def test_the_file_holds_no_password_backup_code_token_or_totp_seed(
    db_path: Path, node: Node, clock: Clock
) -> None:
    accounts = Accounts(db_path, clock=clock)
    admin = node.create(accounts, "alice", "admin", None)
    bob_password = "bob's own long password"
    bob = node.create(accounts, "bob", "operator", admin, bob_password)
    tokens = [
        node.login(accounts, "alice", PASSWORD, totp(admin, START)).token,
        node.login(accounts, "bob", bob_password, bob.backup_codes[0]).token,
    ]
    secrets = [PASSWORD, bob_password, *tokens, seed(admin), seed(bob)]
    for code in admin.backup_codes + bob.backup_codes:
        secrets += [code, code.replace("-", "")]

    while_open = contents(db_path)
    accounts.close()
    for blob in (while_open, contents(db_path)):
        assert PASSWORD.encode()[:12] not in blob
        for secret in secrets:
            assert secret.encode() not in blob, secret

    with closing(sqlite3.connect(db_path)) as db:
        hashes = [row[0] for row in db.execute("SELECT password_hash FROM users")]
        stored_tokens = {row[0] for row in db.execute("SELECT token_sha256 FROM sessions")}
        columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
    for value in hashes:
        assert re.fullmatch(r"scrypt\$15\$8\$1\$[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}", value)
    assert len(set(hashes)) == 2
    assert stored_tokens == {hashlib.sha256(token.encode()).digest() for token in tokens}
    assert not columns & {"totp_secret", "failures", "locked_until", "last_totp_step"}


def test_schema_version_and_reopening(db_path: Path, node: Node, clock: Clock) -> None:
    accounts = Accounts(db_path, clock=clock)
    admin = node.create(accounts, "alice", "admin", None)
    accounts.close()
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"users", "backup_codes", "sessions"} <= tables

    reopened = Accounts(db_path, clock=clock)
    assert reopened.list_users() == [admin.user]
    assert node.login(reopened, "alice", PASSWORD, totp(admin, START))
    reopened.close()

    with closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA user_version = 99")
    error = refusal(lambda: Accounts(db_path, clock=clock))
    assert error.code == "database"
    assert "newer" in str(error)


def test_the_migration_takes_the_totp_seeds_out_and_reopens_bootstrap(
    db_path: Path, node: Node, clock: Clock
) -> None:
    """A file of before the engine's registry: its users had their TOTP seeds here. They
    go, every byte of them; the users are disabled (the engine has no seed for them), and
    the first admin can be made again, replacing the old row of that name."""
    old_seed = pyotp.random_base32()
    with closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        for statement in accounts_module._MIGRATIONS[0][1].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO users (username, role, password_hash, totp_secret, backup_salt,"
            " created_at) VALUES ('alice', 'admin', 'scrypt$x', ?, x'00', 1.0)",
            (old_seed,),
        )
        db.execute("INSERT INTO sessions VALUES (x'01', 'alice', 1.0, 9e99, 0)")
        db.commit()
    assert old_seed.encode() in contents(db_path)

    accounts = Accounts(db_path, clock=clock)
    assert old_seed.encode() not in contents(db_path)
    assert accounts.list_users()[0].disabled
    assert not accounts.has_enabled_users()
    admin = node.create(accounts, "alice", "admin", None)
    assert accounts.list_users() == [admin.user]
    assert node.login(accounts, "alice", PASSWORD, totp(admin, START)).user.username == "alice"
    accounts.close()
    assert old_seed.encode() not in contents(db_path)


def test_session_settings_are_checked(db_path: Path) -> None:
    with pytest.raises(ValueError, match="session"):
        Accounts(db_path, session_seconds=0)
    with pytest.raises(ValueError, match="session"):
        Accounts(db_path, session_seconds=100, session_max_seconds=50)
