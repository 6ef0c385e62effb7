"""The operator accounts of the control API: users' passwords and backup codes, sessions,
kept in one SQLite file (WAL, synchronous=FULL, mode 0600).

The API process holds no key material and no TOTP seed: the engine's operator registry
(`appliance.operators`) holds the seeds sealed by the HSM, enrols users (`enrol`) and checks
the TOTP code of a login (`check_code`); this database holds password and backup-code hashes,
hashes of session tokens, and a copy of each user's role and disabled flag for the routes.
Several gunicorn workers open their own `Accounts` on the same file: every read-modify-write
(a login, a consumed backup code) runs in one `BEGIN IMMEDIATE` transaction, so two workers
cannot both accept one backup code. The slow password hashing runs before that transaction.

Failed logins lock nothing here: a TOTP code is only looked at by the engine, which slows
an account's codes down after wrong ones offered with the right password; a backup code
(60 random bits) is never refused for earlier failures, so nobody can keep the real user
out, and a wrong password gains a guesser nothing without the code that goes with it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
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

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["ROLES", "AccountError", "Accounts", "CodeCheck", "Enrollment", "Session", "User"]

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

_TOTP_CODE = re.compile(r"[0-9]{6}")
_BACKUP_CODE = re.compile(f"[{BACKUP_ALPHABET}]{{{BACKUP_GROUPS * BACKUP_GROUP_LENGTH}}}")
_DUMMY_BACKUP_SALT = os.urandom(16)

_LOGIN_FAILED = ("login-failed", "wrong username, password or code", 401)
_UNAUTHENTICATED = ("unauthenticated", "session missing, expired or revoked; log in again", 401)

# The engine's answer to a login's TOTP code: (username, code, whether the password was
# right, and the user exists and is enabled here) -> accepted. A code offered with a wrong
# password is sent too, so that the engine's work, and the time it takes, is the same.
CodeCheck = Callable[[str, str, bool], bool]

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
    (
        2,
        # The TOTP seeds move to the engine's registry (sealed by the HSM) and the lockout
        # goes. Users of before have no seed there: they are disabled, and created again by
        # an admin (the first admin again while no user is enabled).
        """
        UPDATE sessions SET revoked = 1;
        UPDATE users SET disabled = 1;
        ALTER TABLE users DROP COLUMN totp_secret;
        ALTER TABLE users DROP COLUMN failures;
        ALTER TABLE users DROP COLUMN locked_until;
        ALTER TABLE users DROP COLUMN last_totp_step;
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
    """What a new user needs to log in, returned once at creation: the TOTP seed (made and
    kept sealed by the engine) and the backup codes (kept here only as hashes) are never
    retrievable again. Secrets stay out of `repr` so a logged object leaks none."""

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
        *,
        session_seconds: float = 900.0,
        session_max_seconds: float = 8 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < session_seconds <= session_max_seconds:
            raise ValueError("need 0 < session_seconds <= session_max_seconds")
        self.path = Path(path)
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
            # What is deleted is overwritten (the TOTP seeds of before migration 2 included).
            self._db.execute("PRAGMA secure_delete = ON")
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
    def has_enabled_users(self) -> bool:
        """While none is, the first admin can be created without a session (the engine
        decides: it enrols one only while its registry is empty)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM users WHERE disabled = 0 LIMIT 1").fetchone()
            return row is not None

    def list_users(self) -> list[User]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM users ORDER BY created_at, username")
            return [_user(row) for row in rows]

    def create_user(
        self,
        username: str,
        role: str,
        password: str,
        *,
        created_by: User | None,
        enrol: Callable[[], str],
    ) -> Enrollment:
        """Check the new user's details, have the engine enrol it (`enrol()` gives the
        otpauth URI; the engine decides who may enrol whom) and keep its password and
        backup codes. A row left here by a user the engine does not know (one of before the
        registry, disabled by the migration) is replaced."""
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
        backup_salt = os.urandom(16)
        codes = _new_backup_codes()
        code_hashes = [_backup_hash(backup_salt, _compact(code)) for code in codes]
        uri = enrol()
        now = self._clock()
        with self._transaction():
            self._db.execute("DELETE FROM backup_codes WHERE username = ?", (username,))
            self._db.execute("UPDATE sessions SET revoked = 1 WHERE username = ?", (username,))
            values = (
                role,
                password_hash,
                backup_salt,
                now,
                None if created_by is None else created_by.username,
                username,
            )
            replaced = self._db.execute(
                "UPDATE users SET role = ?, password_hash = ?, backup_salt = ?, disabled = 0,"
                " created_at = ?, created_by = ? WHERE username = ?",
                values,
            )
            if replaced.rowcount == 0:
                self._db.execute(
                    "INSERT INTO users (role, password_hash, backup_salt, created_at,"
                    " created_by, username) VALUES (?, ?, ?, ?, ?, ?)",
                    values,
                )
            self._db.executemany(
                "INSERT INTO backup_codes (username, code_hash) VALUES (?, ?)",
                [(username, code_hash) for code_hash in code_hashes],
            )
        return Enrollment(User(username, role, False, now), uri, codes)

    def disable_user(self, username: str) -> None:
        """Mark a user disabled and revoke all its sessions, once the engine disabled it in
        its registry (which decides, and keeps the last enabled admin)."""
        with self._transaction():
            self._db.execute("UPDATE users SET disabled = 1 WHERE username = ?", (username,))
            self._db.execute("UPDATE sessions SET revoked = 1 WHERE username = ?", (username,))

    # -- logins and sessions -------------------------------------------------------------------
    def login(self, username: str, password: str, code: str, check_code: CodeCheck) -> Session:
        """Password and a second factor: the current TOTP code (checked by the engine's
        registry: `check_code`), or an unused backup code, which this consumes. Every refusal
        looks the same, in message and in time: the password hash runs for unknown users
        too, a backup code is hashed whether or not the password was right, and a TOTP code
        goes to the engine either way."""
        if not all(isinstance(value, str) for value in (username, password, code)):
            raise AccountError(*_LOGIN_FAILED)
        if len(password) > LOGIN_PASSWORD_MAX:
            raise AccountError(*_LOGIN_FAILED)
        now = self._clock()
        with self._lock:
            row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        stored_hash = _dummy_password_hash() if row is None else row["password_hash"]
        password_ok = _verify_password(password, stored_hash)
        kind, compact = _classify(code)
        backup_hash = b""
        if kind == "backup":
            salt = _DUMMY_BACKUP_SALT if row is None else row["backup_salt"]
            backup_hash = _backup_hash(salt, compact)
        code_ok = False
        if kind == "totp":
            enabled = row is not None and not row["disabled"]
            code_ok = check_code(username, compact, password_ok and enabled)
        if row is None:
            raise AccountError(*_LOGIN_FAILED)

        session: Session | None = None
        with self._transaction():
            row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
            if row is None or row["disabled"]:
                raise AccountError(*_LOGIN_FAILED)
            # The hash checked above must still be the user's (the row was read unlocked).
            if password_ok and hmac.compare_digest(row["password_hash"], stored_hash):
                if kind == "totp":
                    accepted = code_ok
                else:
                    accepted = kind == "backup" and self._consume_backup(row, backup_hash, now)
                if accepted:
                    session = self._open_session(row, now)
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

    # -- inside transactions -------------------------------------------------------------------
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
        return True

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
        workers starting together must not both create the tables. After a migration the
        write-ahead log is folded back into the file and emptied, so that no page image of
        before (the TOTP seeds migration 2 drops) stays in either."""
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
        if current < SCHEMA_VERSION:
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _create_owner_only(path: Path) -> None:
    """Create the file 0600 before SQLite opens it, whatever the umask, and tighten an
    existing one: it holds password and backup-code hashes. SQLite gives its -wal and -shm
    files the same mode as the database."""
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
