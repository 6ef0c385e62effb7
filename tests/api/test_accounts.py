"""Operator accounts: bootstrap and roles, password + TOTP or backup-code logins, replay and
lockout, sessions, step-up, several workers on one file, and what the file holds.

Time is a fake clock moved by hand, so lockouts, TOTP steps and session expiry need no sleep.
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
from api.accounts import ROLES, AccountError, Accounts, Enrollment, User

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


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "accounts.db"


@pytest.fixture
def accounts(db_path: Path, clock: Clock) -> Iterator[Accounts]:
    accounts = Accounts(db_path, ISSUER, clock=clock)
    yield accounts
    accounts.close()


@pytest.fixture
def admin(accounts: Accounts) -> Enrollment:
    return accounts.create_user("alice", "admin", PASSWORD, created_by=None)


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


def fail_login(accounts: Accounts, username: str = "alice") -> AccountError:
    return refusal(lambda: accounts.login(username, "not the password at all", "000000"))


# -- bootstrap, users, roles ------------------------------------------------------------------
def test_first_user_must_be_an_admin_created_by_nobody(accounts: Accounts) -> None:
    assert not accounts.has_users()
    error = refusal(lambda: accounts.create_user("bob", "operator", PASSWORD, created_by=None))
    assert (error.code, error.status) == ("bad-role", 400)
    assert not accounts.has_users()

    enrollment = accounts.create_user("alice", "admin", PASSWORD, created_by=None)
    assert enrollment.user == User("alice", "admin", False, START)
    assert accounts.has_users()

    error = refusal(lambda: accounts.create_user("carol", "admin", PASSWORD, created_by=None))
    assert (error.code, error.status) == ("bootstrap-closed", 403)


def test_later_users_need_an_enabled_admin(accounts: Accounts, admin: Enrollment) -> None:
    bob = accounts.create_user("bob", "operator", PASSWORD, created_by=admin.user).user
    assert bob.role == "operator"

    error = refusal(lambda: accounts.create_user("carol", "auditor", PASSWORD, created_by=bob))
    assert (error.code, error.status) == ("forbidden", 403)
    # The database judges the creator, not a `User` the caller made up.
    forged = User("bob", "admin", False, bob.created_at)
    error = refusal(lambda: accounts.create_user("carol", "auditor", PASSWORD, created_by=forged))
    assert error.code == "forbidden"
    ghost = User("ghost", "admin", False, 0.0)
    error = refusal(lambda: accounts.create_user("carol", "auditor", PASSWORD, created_by=ghost))
    assert error.code == "forbidden"

    second_admin = accounts.create_user("dave", "admin", PASSWORD, created_by=admin.user).user
    accounts.disable_user("dave", by=admin.user)
    error = refusal(
        lambda: accounts.create_user("carol", "auditor", PASSWORD, created_by=second_admin)
    )
    assert error.code == "forbidden"
    assert [u.username for u in accounts.list_users()] == ["alice", "bob", "dave"]


def test_a_stranger_cannot_bootstrap_an_empty_database(accounts: Accounts) -> None:
    stranger = User("mallory", "admin", False, 0.0)
    error = refusal(lambda: accounts.create_user("mallory", "admin", PASSWORD, created_by=stranger))
    assert error.code == "forbidden"
    assert not accounts.has_users()


@pytest.mark.parametrize(
    "username",
    ["", "Alice", "1alice", "-alice", ".alice", "al ice", "alice\n", "al/ice", "a" * 65, "élise"],
)
def test_bad_usernames_are_refused(accounts: Accounts, username: str) -> None:
    error = refusal(lambda: accounts.create_user(username, "admin", PASSWORD, created_by=None))
    assert (error.code, error.status) == ("bad-username", 400)
    assert not accounts.has_users()


@pytest.mark.parametrize("username", ["a", "alice", "a.b_c-d", "z9", "a" * 64])
def test_good_usernames_are_accepted(accounts: Accounts, username: str) -> None:
    assert accounts.create_user(username, "admin", PASSWORD, created_by=None).user.username


def test_roles_duplicates_and_password_lengths(accounts: Accounts, admin: Enrollment) -> None:
    for role in ROLES:
        assert accounts.create_user(f"u-{role}", role, PASSWORD, created_by=admin.user)
    error = refusal(lambda: accounts.create_user("eve", "root", PASSWORD, created_by=admin.user))
    assert (error.code, error.status) == ("bad-role", 400)

    error = refusal(lambda: accounts.create_user("alice", "admin", PASSWORD, created_by=admin.user))
    assert (error.code, error.status) == ("user-exists", 409)

    for password in ["x" * 11, "x" * 1025, ""]:
        error = refusal(
            lambda p=password: accounts.create_user("eve", "operator", p, created_by=admin.user)
        )
        assert (error.code, error.status) == ("weak-password", 400)
    assert accounts.create_user("eve", "operator", "x" * 12, created_by=admin.user)
    assert accounts.create_user("frank", "operator", "y" * 1024, created_by=admin.user)


def test_enrollment_gives_the_totp_seed_and_ten_backup_codes(admin: Enrollment) -> None:
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


def test_each_user_gets_its_own_seed_and_codes(accounts: Accounts, admin: Enrollment) -> None:
    bob = accounts.create_user("bob", "operator", PASSWORD, created_by=admin.user)
    assert seed(bob) != seed(admin)
    assert not set(bob.backup_codes) & set(admin.backup_codes)


# -- login --------------------------------------------------------------------------------------
def test_login_with_password_and_totp(accounts: Accounts, admin: Enrollment) -> None:
    session = accounts.login("alice", PASSWORD, totp(admin, START))
    assert session.user == admin.user
    assert session.expires_at == START + 900
    assert len(session.token) >= 43
    assert session.token not in repr(session)
    assert accounts.authenticate(session.token) == admin.user


def test_every_refused_login_looks_the_same(accounts: Accounts, admin: Enrollment) -> None:
    bob = accounts.create_user("bob", "operator", PASSWORD, created_by=admin.user)
    accounts.disable_user("bob", by=admin.user)
    good = totp(admin, START)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    attempts = [
        ("alice", PASSWORD + "!", good),  # wrong password
        ("alice", PASSWORD, wrong),  # wrong code
        ("alice", PASSWORD, ""),  # no code
        ("alice", PASSWORD, "ABCD-EFGH-JKLM"),  # not one of the backup codes
        ("nobody", PASSWORD, good),  # unknown user
        ("bob", PASSWORD, totp(bob, START)),  # disabled user, right password and code
        ("ALICE", PASSWORD, good),  # usernames are exact
    ]
    for username, password, code in attempts:
        assert login_failed(refusal(lambda u=username, p=password, c=code: accounts.login(u, p, c)))
    # None of those burnt the code: it still works.
    assert accounts.login("alice", PASSWORD, good).user.username == "alice"


def test_unknown_users_cost_a_password_hash_too(
    accounts: Accounts, admin: Enrollment, monkeypatch: pytest.MonkeyPatch
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
        refusal(lambda u=username, p=password: accounts.login(u, p, "ABCD-EFGH-JKLM"))
        assert calls == ["password", "backup"]


def test_a_totp_code_is_accepted_once(accounts: Accounts, admin: Enrollment, clock: Clock) -> None:
    code = totp(admin, START)
    session = accounts.login("alice", PASSWORD, code)
    accounts.logout(session.token)
    assert login_failed(refusal(lambda: accounts.login("alice", PASSWORD, code)))
    clock.advance(29)  # still its step
    assert login_failed(refusal(lambda: accounts.login("alice", PASSWORD, code)))
    clock.advance(30)  # the previous step now, still inside the window
    assert login_failed(refusal(lambda: accounts.login("alice", PASSWORD, code)))


def test_replay_is_refused_after_reopening(db_path: Path, clock: Clock) -> None:
    accounts = Accounts(db_path, ISSUER, clock=clock)
    admin = accounts.create_user("alice", "admin", PASSWORD, created_by=None)
    code = totp(admin, START)
    accounts.login("alice", PASSWORD, code)
    accounts.close()
    clock.advance(20)
    reopened = Accounts(db_path, ISSUER, clock=clock)
    assert login_failed(refusal(lambda: reopened.login("alice", PASSWORD, code)))
    reopened.close()


def test_an_older_step_is_refused_after_a_newer_one(
    accounts: Accounts, admin: Enrollment, clock: Clock
) -> None:
    # The next step's code is accepted (valid_window=1)...
    accounts.login("alice", PASSWORD, totp(admin, START, offset=1))
    # ...after which the current and the previous step's codes, both in the window, are refused.
    for offset in (0, -1):
        code = totp(admin, START, offset=offset)
        assert login_failed(refusal(lambda c=code: accounts.login("alice", PASSWORD, c)))
    # Once time has caught up, the code of a later step is accepted again.
    clock.advance(60)
    assert accounts.login("alice", PASSWORD, totp(admin, clock.now))


def test_totp_window_is_one_step_each_side(
    accounts: Accounts, admin: Enrollment, clock: Clock
) -> None:
    for offset in (-2, 2):
        code = totp(admin, START, offset=offset)
        assert login_failed(refusal(lambda c=code: accounts.login("alice", PASSWORD, c)))
    assert accounts.login("alice", PASSWORD, totp(admin, START, offset=-1))
    clock.advance(30)
    assert accounts.login("alice", PASSWORD, totp(admin, clock.now))
    clock.advance(30)
    assert accounts.login("alice", PASSWORD, totp(admin, clock.now, offset=1))


def test_a_backup_code_works_once(accounts: Accounts, admin: Enrollment) -> None:
    first, second = admin.backup_codes[:2]
    session = accounts.login("alice", PASSWORD, first)
    assert session.user.username == "alice"
    assert login_failed(refusal(lambda: accounts.login("alice", PASSWORD, first)))
    # Typed loosely: lower case, no dashes, spaces.
    loose = second.lower().replace("-", " ")
    assert accounts.login("alice", PASSWORD, loose)
    assert login_failed(refusal(lambda: accounts.login("alice", PASSWORD, second)))
    # A backup login leaves the TOTP step unused.
    assert accounts.login("alice", PASSWORD, totp(admin, START))


def test_a_wrong_password_does_not_consume_the_second_factor(
    accounts: Accounts, admin: Enrollment
) -> None:
    code = admin.backup_codes[0]
    assert login_failed(refusal(lambda: accounts.login("alice", "wrong password!", code)))
    assert accounts.login("alice", PASSWORD, code)


def test_backup_codes_are_per_user(accounts: Accounts, admin: Enrollment) -> None:
    bob = accounts.create_user("bob", "operator", PASSWORD, created_by=admin.user)
    code = bob.backup_codes[0]
    assert login_failed(refusal(lambda: accounts.login("alice", PASSWORD, code)))
    assert accounts.login("bob", PASSWORD, code)


def test_password_is_compared_after_unicode_normalization(accounts: Accounts) -> None:
    composed = "caf\u00e9-password-123"
    enrollment = accounts.create_user("alice", "admin", composed, created_by=None)
    decomposed = "cafe\u0301-password-123"
    assert accounts.login("alice", decomposed, enrollment.backup_codes[0])


def test_non_text_input_is_a_plain_refusal(accounts: Accounts, admin: Enrollment) -> None:
    for args in [(None, PASSWORD, "123456"), ("alice", 123, "123456"), ("alice", PASSWORD, None)]:
        assert login_failed(refusal(lambda a=args: accounts.login(*a)))
    assert login_failed(refusal(lambda: accounts.login("alice", "x" * 100_000, "123456")))


# -- lockout ------------------------------------------------------------------------------------
def test_lockout_after_five_failures_and_doubling(
    accounts: Accounts, admin: Enrollment, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(4):
        assert login_failed(fail_login(accounts))
    assert login_failed(fail_login(accounts))  # the fifth failure locks...
    error = fail_login(accounts)
    assert (error.code, str(error), error.status) == (
        "locked",
        "account locked for 30 s after repeated failures",
        429,
    )

    # ...and while locked even the right password and code are refused, unchecked.
    checked: list[str] = []
    real_verify = accounts_module._verify_password

    def verify(password: str, stored: str) -> bool:
        checked.append(password)
        return real_verify(password, stored)

    monkeypatch.setattr(accounts_module, "_verify_password", verify)
    clock.advance(29)
    error = refusal(lambda: accounts.login("alice", PASSWORD, totp(admin, clock.now)))
    assert (error.code, str(error)) == ("locked", "account locked for 1 s after repeated failures")
    assert checked == []

    clock.advance(1)
    assert login_failed(fail_login(accounts))  # sixth: 60 s
    assert str(fail_login(accounts)) == "account locked for 60 s after repeated failures"
    clock.advance(60)
    assert login_failed(fail_login(accounts))  # seventh: 120 s
    clock.advance(119)
    assert fail_login(accounts).code == "locked"
    clock.advance(1)

    # The delay is over: the right login works and resets the count.
    assert accounts.login("alice", PASSWORD, totp(admin, clock.now)).user.username == "alice"
    for _ in range(4):
        assert login_failed(fail_login(accounts))
    assert login_failed(fail_login(accounts))
    assert str(fail_login(accounts)) == "account locked for 30 s after repeated failures"


def test_lockout_grows_to_one_hour_at_most(
    accounts: Accounts, admin: Enrollment, clock: Clock
) -> None:
    delays: list[int] = []
    while len(delays) < 9:
        error = fail_login(accounts)
        if error.code == "locked":
            seconds = int(re.findall(r"\d+", str(error))[0])
            delays.append(seconds)
            clock.advance(seconds)
        else:
            assert login_failed(error)
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_lockout_is_per_account(accounts: Accounts, admin: Enrollment) -> None:
    bob = accounts.create_user("bob", "operator", PASSWORD, created_by=admin.user)
    for _ in range(5):
        fail_login(accounts, "bob")
    assert fail_login(accounts, "bob").code == "locked"
    assert accounts.login("alice", PASSWORD, totp(admin, START))
    assert refusal(lambda: accounts.login("bob", PASSWORD, bob.backup_codes[0])).code == "locked"


# -- sessions -----------------------------------------------------------------------------------
def test_sessions_slide_but_not_past_the_maximum(db_path: Path, clock: Clock) -> None:
    accounts = Accounts(db_path, ISSUER, session_seconds=900, session_max_seconds=2000, clock=clock)
    admin = accounts.create_user("alice", "admin", PASSWORD, created_by=None)
    token = accounts.login("alice", PASSWORD, totp(admin, START)).token

    clock.advance(800)
    assert accounts.authenticate(token).username == "alice"
    clock.advance(800)  # 1600 s after login, past the first 900 s
    assert accounts.authenticate(token).username == "alice"
    clock.advance(399)  # 1999 s: still inside the absolute maximum
    assert accounts.authenticate(token).username == "alice"
    clock.advance(1)  # 2000 s: over, however recently used
    assert refusal(lambda: accounts.authenticate(token)).code == "unauthenticated"
    accounts.close()


def test_an_idle_session_expires(accounts: Accounts, admin: Enrollment, clock: Clock) -> None:
    token = accounts.login("alice", PASSWORD, totp(admin, START)).token
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


def test_unknown_tokens_are_refused(accounts: Accounts, admin: Enrollment) -> None:
    token = accounts.login("alice", PASSWORD, totp(admin, START)).token
    for bad in ["", "nonsense", token[:-1], token + "x", "x" * 10_000]:
        assert refusal(lambda b=bad: accounts.authenticate(b)).code == "unauthenticated"


def test_logout_revokes_only_that_session(accounts: Accounts, admin: Enrollment) -> None:
    first = accounts.login("alice", PASSWORD, totp(admin, START)).token
    second = accounts.login("alice", PASSWORD, admin.backup_codes[0]).token
    accounts.logout(first)
    assert refusal(lambda: accounts.authenticate(first)).code == "unauthenticated"
    assert accounts.authenticate(second).username == "alice"
    accounts.logout(first)
    accounts.logout("never issued")
    accounts.logout("")
    assert refusal(lambda: accounts.authenticate(first)).code == "unauthenticated"


def test_disabling_a_user_revokes_its_sessions_and_blocks_login(
    accounts: Accounts, admin: Enrollment, db_path: Path
) -> None:
    bob = accounts.create_user("bob", "operator", PASSWORD, created_by=admin.user)
    tokens = [
        accounts.login("bob", PASSWORD, totp(bob, START)).token,
        accounts.login("bob", PASSWORD, bob.backup_codes[0]).token,
    ]
    admin_token = accounts.login("alice", PASSWORD, totp(admin, START)).token

    disabled = accounts.disable_user("bob", by=admin.user)
    assert disabled == User("bob", "operator", True, START)
    for token in tokens:
        assert refusal(lambda t=token: accounts.authenticate(t)).code == "unauthenticated"
    with closing(sqlite3.connect(db_path)) as db:
        revoked = db.execute("SELECT username, revoked FROM sessions ORDER BY username").fetchall()
    assert revoked == [("alice", 0), ("bob", 1), ("bob", 1)]
    assert login_failed(refusal(lambda: accounts.login("bob", PASSWORD, bob.backup_codes[1])))
    assert accounts.authenticate(admin_token) == admin.user
    assert [u.disabled for u in accounts.list_users()] == [False, True]
    # Disabling again is harmless.
    assert accounts.disable_user("bob", by=admin.user).disabled


def test_who_may_disable_whom(accounts: Accounts, admin: Enrollment) -> None:
    bob = accounts.create_user("bob", "operator", PASSWORD, created_by=admin.user).user
    carol = accounts.create_user("carol", "admin", PASSWORD, created_by=admin.user).user

    error = refusal(lambda: accounts.disable_user("carol", by=bob))
    assert (error.code, error.status) == ("forbidden", 403)
    error = refusal(lambda: accounts.disable_user("nobody", by=admin.user))
    assert (error.code, error.status) == ("no-such-user", 404)

    # With two enabled admins, one may disable itself; the other is then the last one.
    assert accounts.disable_user("alice", by=admin.user).disabled
    error = refusal(lambda: accounts.disable_user("carol", by=carol))
    assert (error.code, error.status) == ("last-admin", 409)
    # A disabled admin has lost its powers.
    assert refusal(lambda: accounts.disable_user("bob", by=admin.user)).code == "forbidden"
    assert accounts.disable_user("bob", by=carol).disabled
    assert [(u.username, u.disabled) for u in accounts.list_users()] == [
        ("alice", True),
        ("bob", True),
        ("carol", False),
    ]


def test_the_only_admin_cannot_disable_itself(accounts: Accounts, admin: Enrollment) -> None:
    error = refusal(lambda: accounts.disable_user("alice", by=admin.user))
    assert (error.code, error.status) == ("last-admin", 409)
    assert not accounts.list_users()[0].disabled


# -- step-up ------------------------------------------------------------------------------------
def test_step_up_accepts_a_fresh_totp_code_once(
    accounts: Accounts, admin: Enrollment, clock: Clock
) -> None:
    session = accounts.login("alice", PASSWORD, admin.backup_codes[0])
    code = totp(admin, clock.now)
    accounts.step_up(session.user, code)
    error = refusal(lambda: accounts.step_up(session.user, code))
    assert (error.code, str(error), error.status) == (
        "step-up-required",
        "this call needs a fresh TOTP code",
        403,
    )
    assert refusal(lambda: accounts.step_up(session.user, totp(admin, START, -1))).code == (
        "step-up-required"
    )
    clock.advance(30)
    accounts.step_up(session.user, totp(admin, clock.now))


def test_step_up_shares_the_replay_rule_with_login(accounts: Accounts, admin: Enrollment) -> None:
    code = totp(admin, START)
    session = accounts.login("alice", PASSWORD, code)
    assert refusal(lambda: accounts.step_up(session.user, code)).code == "step-up-required"
    accounts.step_up(session.user, totp(admin, START, offset=1))
    assert login_failed(
        refusal(lambda: accounts.login("alice", PASSWORD, totp(admin, START, offset=1)))
    )


def test_step_up_refuses_backup_codes_and_other_input(
    accounts: Accounts, admin: Enrollment
) -> None:
    user = admin.user
    for code in [admin.backup_codes[0], "", "12345", "1234567", "abcdef"]:
        assert refusal(lambda c=code: accounts.step_up(user, c)).code == "step-up-required"
    # The backup code offered to step-up is still unused.
    assert accounts.login("alice", PASSWORD, admin.backup_codes[0])


def test_step_up_failures_count_toward_the_lockout(
    accounts: Accounts, admin: Enrollment, clock: Clock
) -> None:
    good = totp(admin, START)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    for _ in range(5):
        assert refusal(lambda: accounts.step_up(admin.user, wrong)).code == "step-up-required"
    assert refusal(lambda: accounts.step_up(admin.user, good)).code == "locked"
    assert refusal(lambda: accounts.login("alice", PASSWORD, good)).code == "locked"
    clock.advance(30)
    accounts.step_up(admin.user, totp(admin, clock.now))


def test_step_up_of_a_disabled_or_unknown_user(accounts: Accounts, admin: Enrollment) -> None:
    bob = accounts.create_user("bob", "operator", PASSWORD, created_by=admin.user)
    accounts.disable_user("bob", by=admin.user)
    assert refusal(lambda: accounts.step_up(bob.user, totp(bob, START))).code == (
        "step-up-required"
    )
    ghost = User("ghost", "admin", False, 0.0)
    assert refusal(lambda: accounts.step_up(ghost, "123456")).code == "step-up-required"


# -- several workers on one file ----------------------------------------------------------------
@pytest.mark.parametrize("factor", ["totp", "backup"])
def test_two_workers_cannot_both_accept_one_code(db_path: Path, clock: Clock, factor: str) -> None:
    workers = [Accounts(db_path, ISSUER, clock=clock) for _ in range(2)]
    admin = workers[0].create_user("alice", "admin", PASSWORD, created_by=None)
    code = totp(admin, START) if factor == "totp" else admin.backup_codes[0]
    barrier = threading.Barrier(len(workers))
    results: list[str] = []

    def attempt(worker: Accounts) -> None:
        barrier.wait()
        try:
            worker.login("alice", PASSWORD, code)
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


def test_workers_share_replay_lockout_and_sessions(db_path: Path, clock: Clock) -> None:
    first = Accounts(db_path, ISSUER, clock=clock)
    second = Accounts(db_path, ISSUER, clock=clock)
    admin = first.create_user("alice", "admin", PASSWORD, created_by=None)
    assert second.has_users()
    code = totp(admin, START)
    session = first.login("alice", PASSWORD, code)
    assert second.authenticate(session.token) == admin.user
    assert refusal(lambda: second.step_up(admin.user, code)).code == "step-up-required"
    second.logout(session.token)
    assert refusal(lambda: first.authenticate(session.token)).code == "unauthenticated"
    for _ in range(5):
        fail_login(first)
    assert fail_login(second).code == "locked"
    first.close()
    second.close()


# -- the file -----------------------------------------------------------------------------------
def test_database_files_are_owner_only_whatever_the_umask(db_path: Path, clock: Clock) -> None:
    old_umask = os.umask(0)
    try:
        accounts = Accounts(db_path, ISSUER, clock=clock)
        admin = accounts.create_user("alice", "admin", PASSWORD, created_by=None)
        accounts.login("alice", PASSWORD, totp(admin, START))
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
    Accounts(path, ISSUER, clock=clock).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_file_holds_no_password_backup_code_or_token(db_path: Path, clock: Clock) -> None:
    accounts = Accounts(db_path, ISSUER, clock=clock)
    admin = accounts.create_user("alice", "admin", PASSWORD, created_by=None)
    bob_password = "bob's own long password"
    bob = accounts.create_user("bob", "operator", bob_password, created_by=admin.user)
    tokens = [
        accounts.login("alice", PASSWORD, totp(admin, START)).token,
        accounts.login("bob", bob_password, bob.backup_codes[0]).token,
    ]
    secrets = [PASSWORD, bob_password, *tokens]
    for code in admin.backup_codes + bob.backup_codes:
        secrets += [code, code.replace("-", "")]

    def contents() -> bytes:
        files = [db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))]
        return b"".join(path.read_bytes() for path in files if path.exists())

    while_open = contents()
    accounts.close()
    for blob in (while_open, contents()):
        assert PASSWORD.encode()[:12] not in blob
        for secret in secrets:
            assert secret.encode() not in blob, secret

    with closing(sqlite3.connect(db_path)) as db:
        hashes = [row[0] for row in db.execute("SELECT password_hash FROM users")]
        stored_tokens = {row[0] for row in db.execute("SELECT token_sha256 FROM sessions")}
    for value in hashes:
        assert re.fullmatch(r"scrypt\$15\$8\$1\$[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}", value)
    assert len(set(hashes)) == 2
    assert stored_tokens == {hashlib.sha256(token.encode()).digest() for token in tokens}


def test_schema_version_and_reopening(db_path: Path, clock: Clock) -> None:
    accounts = Accounts(db_path, ISSUER, clock=clock)
    admin = accounts.create_user("alice", "admin", PASSWORD, created_by=None)
    accounts.close()
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"users", "backup_codes", "sessions"} <= tables

    reopened = Accounts(db_path, ISSUER, clock=clock)
    assert reopened.list_users() == [admin.user]
    assert reopened.login("alice", PASSWORD, totp(admin, START))
    reopened.close()

    with closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA user_version = 99")
    error = refusal(lambda: Accounts(db_path, ISSUER, clock=clock))
    assert error.code == "database"
    assert "newer" in str(error)


def test_session_settings_are_checked(db_path: Path) -> None:
    with pytest.raises(ValueError, match="session"):
        Accounts(db_path, ISSUER, session_seconds=0)
    with pytest.raises(ValueError, match="session"):
        Accounts(db_path, ISSUER, session_seconds=100, session_max_seconds=50)
