"""The operator accounts of the control API: users and roles, password + TOTP logins, backup
codes, sessions and lockout, kept in one SQLite file (WAL, synchronous=FULL, mode 0600).

The API process holds no key material; this database holds only password and code hashes,
hashes of session tokens, and the TOTP seeds (which must stay readable to check codes, hence
the owner-only file). Several gunicorn workers open their own `Accounts` on the same file:
every read-modify-write (a login, a step-up, a consumed backup code, a disabled admin) runs
in one `BEGIN IMMEDIATE` transaction, so two workers cannot both accept one code. The slow
password hashing runs before that transaction, so one login does not hold the write lock for
the whole hash.

Known limits: only existing accounts can be locked, so a caller who makes five failed logins
can tell an existing username (which starts answering "locked") from an unknown one; and a
refused login of an existing user costs one more durable write (its failure count) than one
of an unknown user, milliseconds next to the password hash. The API listens on a local,
owner-only socket, which keeps such a caller on the appliance.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pyotp
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["ROLES", "AccountError", "Accounts", "Enrollment", "Session", "User"]

ROLES = ("admin", "operator", "auditor")

USERNAME = re.compile(r"[a-z][a-z0-9._-]{0,63}")
PASSWORD_MIN = 12
PASSWORD_MAX = 1024
# Longer input is refused at login before any work: no stored password is that long, even
# before the normalization that may shorten it.
LOGIN_PASSWORD_MAX = 4 * PASSWORD_MAX

# scrypt for passwords: 2**15 x 8 x 128 bytes = 32 MiB and about 0.1 s per guess.
PASSWORD_LOG_N, PASSWORD_R, PASSWORD_P = 15, 8, 1
# Backup codes carry 60 random bits each; a light scrypt only makes a stolen file costlier.
BACKUP_LOG_N = 12
BACKUP_CODES = 10
# Crockford-like: no 0/O or 1/I, which operators misread when copying codes from paper.
BACKUP_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
BACKUP_GROUPS, BACKUP_GROUP_LENGTH = 3, 4

TOTP_WINDOW = 1  # steps accepted either side of the current one (clock drift, slow typing)

LOCK_AFTER = 5
LOCK_FIRST_SECONDS = 30.0
LOCK_MAX_SECONDS = 3600.0

_TOTP_CODE = re.compile(r"[0-9]{6}")
_BACKUP_CODE = re.compile(f"[{BACKUP_ALPHABET}]{{{BACKUP_GROUPS * BACKUP_GROUP_LENGTH}}}")
_DUMMY_BACKUP_SALT = os.urandom(16)

_LOGIN_FAILED = ("login-failed", "wrong username, password or code", 401)
_UNAUTHENTICATED = ("unauthenticated", "session missing, expired or revoked; log in again", 401)
_STEP_UP = ("step-up-required", "this call needs a fresh TOTP code", 403)

# Numbered migrations; a database records the last one applied in `PRAGMA user_version`.
# They only ever append: a shipped migration is never edited.
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE users (
            username       TEXT PRIMARY KEY,
            role           TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'auditor')),
            password_hash  TEXT NOT NULL,
            totp_secret    TEXT NOT NULL,
            backup_salt    BLOB NOT NULL,
            disabled       INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
            created_at     REAL NOT NULL,
            created_by     TEXT,
            failures       INTEGER NOT NULL DEFAULT 0,
            locked_until   REAL NOT NULL DEFAULT 0,
            last_totp_step INTEGER NOT NULL DEFAULT -1
        );
        CREATE TABLE backup_codes (
            username  TEXT NOT NULL REFERENCES users (username),
            code_hash BLOB NOT NULL,
            used_at   REAL
        );
        CREATE INDEX backup_codes_by_user ON backup_codes (username);
        CREATE TABLE sessions (
            token_sha256 BLOB PRIMARY KEY,
            username     TEXT NOT NULL REFERENCES users (username),
            created_at   REAL NOT NULL,
            expires_at   REAL NOT NULL,
            revoked      INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1))
        );
        CREATE INDEX sessions_by_user ON sessions (username);
        """,
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]


class AccountError(Exception):
    """A refused account operation. `code` is stable (for JSON error bodies), `status` the
    HTTP status to answer with, the message is readable by an operator."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class User:
    username: str
    role: str
    disabled: bool
    created_at: float


@dataclass(frozen=True)
class Enrollment:
    """What a new user needs to log in, returned once at creation: the TOTP seed and the
    backup codes are never retrievable again (the seed is kept only to check codes, the
    backup codes only as hashes). Secrets stay out of `repr` so a logged object leaks none."""

    user: User
    otpauth_uri: str = field(repr=False)
    backup_codes: list[str] = field(repr=False)


@dataclass(frozen=True)
class Session:
    """A login: the bearer `token` is known only to the client (the database keeps its
    SHA-256), so it stays out of `repr` as well."""

    token: str = field(repr=False)
    user: User
    expires_at: float


class Accounts:
    """The accounts database of one API worker. Every public method is one short
    transaction; instances are safe to share between the threads of a worker."""

    def __init__(
        self,
        path: Path,
        issuer: str,
        *,
        session_seconds: float = 900.0,
        session_max_seconds: float = 8 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < session_seconds <= session_max_seconds:
            raise ValueError("need 0 < session_seconds <= session_max_seconds")
        self.path = Path(path)
        self.issuer = issuer
        self.session_seconds = float(session_seconds)
        self.session_max_seconds = float(session_max_seconds)
        self._clock = clock
        self._lock = threading.RLock()
        _create_owner_only(self.path)
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        try:
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise AccountError("database", f"{self.path}: SQLite refused WAL ({mode})", 500)
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._db.close()
            raise
        # Computed now so that the first login of an unknown user takes no longer than others.
        _dummy_password_hash()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- users -----------------------------------------------------------------------------
    def has_users(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def list_users(self) -> list[User]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM users ORDER BY created_at, username")
            return [_user(row) for row in rows]

    def create_user(
        self, username: str, role: str, password: str, *, created_by: User | None
    ) -> Enrollment:
        """Create a user and return its enrollment, the only time its TOTP seed and backup
        codes leave this module. The first user (created while none exists, by nobody) must
        be an admin; every later one is created by an enabled admin."""
        with self._lock:
            self._check_creator(created_by, role)
        if not isinstance(username, str) or not USERNAME.fullmatch(username):
            raise AccountError(
                "bad-username",
                "username: 1 to 64 of a-z 0-9 . _ -, starting with a letter",
            )
        if role not in ROLES:
            raise AccountError("bad-role", f"role must be one of {', '.join(ROLES)}")
        if not isinstance(password, str) or not (
            PASSWORD_MIN <= len(_normalize_password(password)) <= PASSWORD_MAX
        ):
            raise AccountError(
                "weak-password",
                f"a password needs {PASSWORD_MIN} to {PASSWORD_MAX} characters",
            )
        password_hash = _hash_password(password)
        secret = pyotp.random_base32()
        backup_salt = os.urandom(16)
        codes = _new_backup_codes()
        code_hashes = [_backup_hash(backup_salt, _compact(code)) for code in codes]
        now = self._clock()
        with self._transaction():
            self._check_creator(created_by, role)
            if self._db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise AccountError("user-exists", f"user {username!r} exists already", 409)
            self._db.execute(
                "INSERT INTO users (username, role, password_hash, totp_secret, backup_salt,"
                " created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    username,
                    role,
                    password_hash,
                    secret,
                    backup_salt,
                    now,
                    None if created_by is None else created_by.username,
                ),
            )
            self._db.executemany(
                "INSERT INTO backup_codes (username, code_hash) VALUES (?, ?)",
                [(username, code_hash) for code_hash in code_hashes],
            )
        uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=self.issuer)
        return Enrollment(User(username, role, False, now), uri, codes)

    def disable_user(self, username: str, *, by: User) -> User:
        """Disable a user and revoke all its sessions. The check for the last enabled admin
        runs in the same transaction, so two admins disabling each other at once cannot
        leave the appliance without one."""
        with self._transaction():
            if not self._is_enabled_admin(by):
                raise AccountError("forbidden", "only an enabled admin can disable users", 403)
            row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
            if row is None:
                raise AccountError("no-such-user", f"no user {username!r}", 404)
            if row["role"] == "admin" and not row["disabled"] and self._enabled_admins() <= 1:
                raise AccountError("last-admin", "the last enabled admin cannot be disabled", 409)
            self._db.execute("UPDATE users SET disabled = 1 WHERE username = ?", (username,))
            self._db.execute("UPDATE sessions SET revoked = 1 WHERE username = ?", (username,))
        return User(row["username"], row["role"], True, row["created_at"])

    # -- logins and sessions -------------------------------------------------------------------
    def login(self, username: str, password: str, code: str) -> Session:
        """Password and a second factor (the current TOTP code, or an unused backup code,
        which this consumes). Every refusal but a lockout looks the same, in message and in
        time: the password hash runs for unknown users too, and a backup code is hashed
        whether or not the password was right."""
        if not all(isinstance(value, str) for value in (username, password, code)):
            raise AccountError(*_LOGIN_FAILED)
        if len(password) > LOGIN_PASSWORD_MAX:
            raise AccountError(*_LOGIN_FAILED)
        now = self._clock()
        with self._lock:
            row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is not None and not row["disabled"]:
            self._refuse_if_locked(row, now)
        stored_hash = _dummy_password_hash() if row is None else row["password_hash"]
        password_ok = _verify_password(password, stored_hash)
        kind, compact = _classify(code)
        backup_hash = b""
        if kind == "backup":
            salt = _DUMMY_BACKUP_SALT if row is None else row["backup_salt"]
            backup_hash = _backup_hash(salt, compact)
        if row is None:
            raise AccountError(*_LOGIN_FAILED)

        session: Session | None = None
        with self._transaction():
            row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
            if row is None or row["disabled"]:
                raise AccountError(*_LOGIN_FAILED)
            self._refuse_if_locked(row, now)
            # The hash checked above must still be the user's (the row was read unlocked).
            if password_ok and hmac.compare_digest(row["password_hash"], stored_hash):
                if kind == "totp":
                    accepted = self._accept_totp(row, compact, now)
                else:
                    accepted = kind == "backup" and self._consume_backup(row, backup_hash, now)
                if accepted:
                    session = self._open_session(row, now)
            if session is None:
                self._record_failure(row, now)
        if session is None:
            raise AccountError(*_LOGIN_FAILED)
        return session

    def authenticate(self, token: str) -> User:
        """The user of a live session. Use slides the expiry to `session_seconds` from now,
        never past `session_max_seconds` after the login. The slide is written only when it
        moves the expiry by more than a tenth of the session (at most 30 s): a read-only
        check otherwise, so a session costs no disk write per request, and a session may end
        up to that much earlier than an exact slide would, never later."""
        if not isinstance(token, str) or not token or len(token) > 256:
            raise AccountError(*_UNAUTHENTICATED)
        digest = _token_digest(token)
        now = self._clock()
        with self._lock:
            row = self._db.execute(
                "SELECT s.created_at AS session_created, s.expires_at, s.revoked, u.*"
                " FROM sessions s JOIN users u USING (username) WHERE s.token_sha256 = ?",
                (digest,),
            ).fetchone()
        if row is None or row["revoked"] or row["disabled"] or row["expires_at"] <= now:
            raise AccountError(*_UNAUTHENTICATED)
        expires_at = min(
            now + self.session_seconds, row["session_created"] + self.session_max_seconds
        )
        if expires_at - row["expires_at"] > min(30.0, self.session_seconds / 10):
            with self._transaction():
                self._db.execute(
                    "UPDATE sessions SET expires_at = max(expires_at, ?)"
                    " WHERE token_sha256 = ? AND revoked = 0",
                    (expires_at, digest),
                )
        return _user(row)

    def logout(self, token: str) -> None:
        """Revoke one session; unknown or already revoked tokens are fine."""
        if not isinstance(token, str) or not token:
            return
        with self._transaction():
            self._db.execute(
                "UPDATE sessions SET revoked = 1 WHERE token_sha256 = ?", (_token_digest(token),)
            )

    def step_up(self, user: User, code: str) -> None:
        """Require a fresh TOTP code for a sensitive call, on top of a valid session: a
        stolen session token alone cannot sign or change anything. Backup codes are not
        accepted here (they are for a lost authenticator, at login). A wrong code counts
        toward the lockout, so a stolen session cannot be used to guess codes; a missing code
        is only a request for one and does not count."""
        now = self._clock()
        with self._transaction():
            row = self._db.execute(
                "SELECT * FROM users WHERE username = ?", (user.username,)
            ).fetchone()
            if row is None or row["disabled"]:
                raise AccountError(*_STEP_UP)
            self._refuse_if_locked(row, now)
            if not isinstance(code, str) or not code.strip():
                raise AccountError(*_STEP_UP)
            kind, compact = _classify(code)
            if kind == "totp" and self._accept_totp(row, compact, now):
                return
            self._record_failure(row, now)
        raise AccountError(*_STEP_UP)

    # -- inside transactions -------------------------------------------------------------------
    def _check_creator(self, created_by: User | None, role: str) -> None:
        has_users = self._db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None
        if created_by is None:
            if has_users:
                raise AccountError(
                    "bootstrap-closed", "users exist: an admin must create new ones", 403
                )
            if role != "admin":
                raise AccountError("bad-role", "the first user must be an admin")
        elif not self._is_enabled_admin(created_by):
            raise AccountError("forbidden", "only an enabled admin can create users", 403)

    def _is_enabled_admin(self, user: User) -> bool:
        """Judged on the database, not on the caller's `User`, which may be stale."""
        row = self._db.execute(
            "SELECT 1 FROM users WHERE username = ? AND role = 'admin' AND disabled = 0",
            (user.username,),
        ).fetchone()
        return row is not None

    def _enabled_admins(self) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0"
        ).fetchone()
        return int(row[0])

    def _refuse_if_locked(self, row: sqlite3.Row, now: float) -> None:
        if row["locked_until"] > now:
            seconds = math.ceil(row["locked_until"] - now)
            raise AccountError(
                "locked", f"account locked for {seconds} s after repeated failures", 429
            )

    def _accept_totp(self, row: sqlite3.Row, code: str, now: float) -> bool:
        """Accept a code of the steps around now only if its step is later than the last
        accepted one, and remember it: a code is good once, and an older code is refused
        after a newer one was used."""
        totp = pyotp.TOTP(row["totp_secret"])
        current = totp.timecode(now)
        matched = [
            current + offset
            for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1)
            if current + offset >= 0
            and hmac.compare_digest(totp.at(now, counter_offset=offset), code)
        ]
        step = max(matched, default=-1)
        if step <= row["last_totp_step"]:
            return False
        self._db.execute(
            "UPDATE users SET last_totp_step = ?, failures = 0, locked_until = 0"
            " WHERE username = ?",
            (step, row["username"]),
        )
        return True

    def _consume_backup(self, row: sqlite3.Row, code_hash: bytes, now: float) -> bool:
        unused = self._db.execute(
            "SELECT rowid, code_hash FROM backup_codes WHERE username = ? AND used_at IS NULL",
            (row["username"],),
        ).fetchall()
        found = None
        for candidate in unused:
            if hmac.compare_digest(candidate["code_hash"], code_hash):
                found = candidate["rowid"]
        if found is None:
            return False
        self._db.execute("UPDATE backup_codes SET used_at = ? WHERE rowid = ?", (now, found))
        self._db.execute(
            "UPDATE users SET failures = 0, locked_until = 0 WHERE username = ?",
            (row["username"],),
        )
        return True

    def _record_failure(self, row: sqlite3.Row, now: float) -> None:
        """Count a failure; from the fifth in a row the account locks, 30 s and doubling
        with each further failure up to an hour."""
        failures = int(row["failures"]) + 1
        locked_until = float(row["locked_until"])
        if failures >= LOCK_AFTER:
            doublings = min(failures - LOCK_AFTER, 32)
            locked_until = now + min(LOCK_FIRST_SECONDS * 2**doublings, LOCK_MAX_SECONDS)
        self._db.execute(
            "UPDATE users SET failures = ?, locked_until = ? WHERE username = ?",
            (failures, locked_until, row["username"]),
        )

    def _open_session(self, row: sqlite3.Row, now: float) -> Session:
        # Sessions that can no longer be used are dropped as logins come by.
        self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        token = secrets.token_urlsafe(32)
        expires_at = now + self.session_seconds
        self._db.execute(
            "INSERT INTO sessions (token_sha256, username, created_at, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (_token_digest(token), row["username"], now, expires_at),
        )
        return Session(token, _user(row), expires_at)

    # -- database ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, taken at its start (`BEGIN IMMEDIATE`) so that what it read
        cannot change under it in another worker; an exception rolls it back."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        """Apply the missing migrations, re-reading the version inside the transaction:
        workers starting together must not both create the tables."""
        with self._transaction():
            current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if current > SCHEMA_VERSION:
                raise AccountError(
                    "database",
                    f"{self.path}: schema version {current} is newer than this software"
                    f" ({SCHEMA_VERSION})",
                    500,
                )
            for version, sql in _MIGRATIONS:
                if version > current:
                    for statement in sql.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {version:d}")


def _create_owner_only(path: Path) -> None:
    """Create the file 0600 before SQLite opens it, whatever the umask, and tighten an
    existing one: it holds the TOTP seeds. SQLite gives its -wal and -shm files the same
    mode as the database."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _user(row: sqlite3.Row) -> User:
    return User(row["username"], row["role"], bool(row["disabled"]), float(row["created_at"]))


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# -- passwords ---------------------------------------------------------------------------------
def _normalize_password(password: str) -> str:
    """NFKC, so a password typed on another keyboard or input method (composed or
    decomposed accents, full-width forms) still matches."""
    return unicodedata.normalize("NFKC", password)


def _scrypt(salt: bytes, log_n: int, r: int, p: int, secret: str) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=2**log_n, r=r, p=p)
    return kdf.derive(secret.encode("utf-8", "surrogatepass"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _hash_password(password: str) -> str:
    """`scrypt$<log2 n>$<r>$<p>$<salt>$<hash>`: the stored string names its own parameters,
    so raising them later leaves existing hashes verifiable."""
    salt = os.urandom(16)
    digest = _scrypt(salt, PASSWORD_LOG_N, PASSWORD_R, PASSWORD_P, _normalize_password(password))
    return f"scrypt${PASSWORD_LOG_N}${PASSWORD_R}${PASSWORD_P}${_b64(salt)}${_b64(digest)}"


def _verify_password(password: str, stored: str) -> bool:
    try:
        scheme, log_n, r, p, salt, digest = stored.split("$")
        params = int(log_n), int(r), int(p)
        salt_bytes, expected = base64.b64decode(salt), base64.b64decode(digest)
    except ValueError:
        return False
    if scheme != "scrypt" or not (10 <= params[0] <= 20 and 1 <= params[1] <= 32):
        return False
    if not 1 <= params[2] <= 16 or len(expected) != 32:
        return False
    actual = _scrypt(salt_bytes, *params, _normalize_password(password))
    return hmac.compare_digest(actual, expected)


@cache
def _dummy_password_hash() -> str:
    """The hash an unknown user's login is checked against, so that it costs as much as a
    known user's: the response time does not tell which usernames exist."""
    return _hash_password(secrets.token_urlsafe(32))


# -- second factors ----------------------------------------------------------------------------
def _compact(code: str) -> str:
    """Codes as typed: spaces and dashes dropped, letters upper-cased."""
    return "".join(code.split()).replace("-", "").upper()


def _classify(code: str) -> tuple[str, str]:
    """("totp" | "backup" | "invalid", the compacted code): six digits are a TOTP code, and
    no backup code can look like one."""
    compact = _compact(code)
    if _TOTP_CODE.fullmatch(compact):
        return "totp", compact
    if _BACKUP_CODE.fullmatch(compact):
        return "backup", compact
    return "invalid", compact


def _new_backup_codes() -> list[str]:
    """Ten distinct codes of twelve symbols out of 32 (60 bits), grouped by four."""
    codes: list[str] = []
    while len(codes) < BACKUP_CODES:
        symbols = "".join(
            secrets.choice(BACKUP_ALPHABET) for _ in range(BACKUP_GROUPS * BACKUP_GROUP_LENGTH)
        )
        code = "-".join(
            symbols[i : i + BACKUP_GROUP_LENGTH]
            for i in range(0, len(symbols), BACKUP_GROUP_LENGTH)
        )
        if code not in codes:
            codes.append(code)
    return codes


def _backup_hash(salt: bytes, compact: str) -> bytes:
    """One salt per user, so a login hashes the offered code once and compares it with every
    unused code of that user."""
    return _scrypt(salt, BACKUP_LOG_N, 8, 1, compact)
