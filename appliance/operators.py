"""The engine's registry of this node's operators, and the proofs it checks itself: who may
ask for the commands in `AUTHORITY`, whatever the API says about who is asking.

Each operator has a role and a TOTP seed that the node's HSM sealed (bound to the node and
the operator; never stored or logged in the clear). A command of `AUTHORITY` carries a
proof, `{"username", "code"}`: the operator must exist, be enabled, hold the command's role,
and the code must be fresh. A code is good once, whether at login or as a proof.

Wrong codes slow that operator's next code down: after the k-th wrong code in a row, no
code is even looked at for min(2^(k-1), `delay_max`) seconds, separately for logins and for
proofs. At login only codes offered with the right password count (the API says whether it
was), so nobody without the password can make the real operator wait; and a throttled login
is refused like any other, so the wait never tells a guesser that a password was right.
The counts live in memory: a restart forgets them, which gives a guesser a few more quick
tries (1 + 2 + 4 ... seconds) and nothing else.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyotp

from appliance.errors import CommandError
from appliance.store.operators import OperatorRecords, OperatorRow
from hsm.errors import SealedBlobError
from hsm.sealed import SealContext

__all__ = [
    "AUTHORITY",
    "ROLES",
    "Enrolment",
    "LoginCheck",
    "Operator",
    "OperatorRegistry",
    "Sealer",
]

log = logging.getLogger(__name__)

ROLES = ("admin", "operator", "auditor")

# The commands the engine carries out only on an operator's proof, and the role each needs.
# Roles do not nest: an admin is not an operator (as in the API's route table).
AUTHORITY: dict[str, str] = {
    "backup-key-share": "admin",
    "approve-backup": "admin",
    "restore-key-share": "admin",
    "set-policy": "admin",
    "set-service": "admin",
    "bitcoind": "admin",
    "audit-key": "admin",
    "operator-enrol": "admin",
    "operator-disable": "admin",
    "key-rotation": "operator",
    "approve-burn": "operator",
    "test-consolidate-fees": "operator",
}
BOOTSTRAP = "operator-enrol"  # without a proof while the registry is empty (the first admin)

USERNAME = re.compile(r"[a-z][a-z0-9._-]{0,63}")
TOTP_CODE = re.compile(r"[0-9]{6}")
TOTP_WINDOW = 1  # steps accepted either side of the current one (clock drift, slow typing)
LOGIN, PROOF = "login", "proof"


class Sealer(Protocol):
    """What the registry needs of the node's HSM (`hsm.keystore.Keystore`)."""

    def seal(self, secret: bytes, context: SealContext) -> bytes: ...

    def unseal(self, blob: bytes, context: SealContext) -> bytes: ...


@dataclass(frozen=True)
class Operator:
    username: str
    role: str
    disabled: bool
    created_at: float
    created_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "role": self.role,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class Enrolment:
    """A new operator, and its TOTP seed as an otpauth URI: returned once, never again."""

    operator: Operator
    otpauth_uri: str = field(repr=False)


@dataclass(frozen=True)
class LoginCheck:
    """The answer to a login's code: `reason` is for the audit record only (`accepted`,
    `unknown`, `password`, `throttled`, `code`); the person logging in is told none of it."""

    accepted: bool
    reason: str


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0


class OperatorRegistry:
    """Every method runs to its end without yielding, so on the engine's event loop two
    requests cannot both accept one code or both enrol the first admin."""

    def __init__(
        self,
        records: OperatorRecords,
        sealer: Sealer,
        node_id: str,
        issuer: str,
        *,
        delay_max: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if delay_max < 1:
            raise ValueError("delay_max must be at least one second")
        self.records = records
        self.sealer = sealer
        self.node_id = node_id
        self.issuer = issuer
        self.delay_max = float(delay_max)
        self._clock = clock
        self._failures: dict[tuple[str, str], _Failures] = {}
        # Unsealed for logins of unknown users, so they cost what a known user's costs.
        self._dummy = sealer.seal(pyotp.random_base32().encode(), self._context("-"))

    # -- the registry --------------------------------------------------------------------
    def empty(self) -> bool:
        return self.records.count() == 0

    def operators(self) -> list[Operator]:
        return [_operator(row) for row in self.records.all()]

    def enrol(
        self, username: str, role: str, by: str | None, second_proof: Any = None
    ) -> Enrolment:
        """A new operator with a new seed. `by` is the admin whose proof the control layer
        checked; None enrols the first admin, only while the registry is empty. Once two
        admins are enabled, a new admin also needs `second_proof`, of another admin: one
        admin's code (one that a compromised API intercepted, say) never makes an admin,
        who could then stand in for the second admin of a backup."""
        if not isinstance(username, str) or not USERNAME.fullmatch(username):
            raise CommandError(
                "bad-request", "username: 1 to 64 of a-z 0-9 . _ -, starting with a letter"
            )
        if role not in ROLES:
            raise CommandError("bad-request", f"role must be one of {', '.join(ROLES)}")
        if by is None:
            if not self.empty():
                raise CommandError(
                    "bootstrap-closed",
                    "operators exist: an admin enrols new ones, with a fresh code",
                )
            if role != "admin":
                raise CommandError("bad-request", "the first operator of a node must be an admin")
        if self.records.get(username) is not None:
            raise CommandError("user-exists", f"operator {username!r} exists already")
        if role == "admin" and by is not None and self.records.enabled_admins() >= 2:
            if second_proof is None:
                raise CommandError(
                    "second-admin-required",
                    "this node has two admins or more: a new admin needs another admin's "
                    "fresh code too",
                )
            if isinstance(second_proof, dict) and second_proof.get("username") == by:
                raise CommandError("same-admin", f"the second admin must be another than {by}")
            by = f"{by}, {self._prove('enrolling an admin', 'admin', second_proof).username}"
        secret = pyotp.random_base32()
        sealed = self.sealer.seal(secret.encode(), self._context(username))
        created = self.records.add(username, role, sealed, by)
        uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=self.issuer)
        return Enrolment(Operator(username, role, False, created, by), uri)

    def disable(self, username: str) -> Operator:
        """Disable an operator for good; the last enabled admin stays."""
        row = self.records.get(username) if isinstance(username, str) else None
        if row is None:
            raise CommandError("no-such-user", f"no operator {username!r} on this node")
        if row.role == "admin" and not row.disabled and self.records.enabled_admins() <= 1:
            raise CommandError("last-admin", "the last enabled admin cannot be disabled")
        self.records.disable(username)
        for bucket in (LOGIN, PROOF):
            self._failures.pop((username, bucket), None)
        return Operator(row.username, row.role, True, row.created_at, row.created_by)

    # -- proofs --------------------------------------------------------------------------------
    def authorize(self, method: str, proof: Any) -> Operator | None:
        """The operator whose proof allows `method` (a command of `AUTHORITY`), or None for
        the first admin's enrolment while the registry is empty; `CommandError` otherwise."""
        role = AUTHORITY[method]
        if method == BOOTSTRAP and self.empty():
            return None
        if proof is None:
            raise CommandError(
                "step-up-required",
                f"{method} needs a fresh TOTP code of an enabled {role} of this "
                "node (the engine checks it)",
            )
        return self._prove(method, role, proof)

    def _prove(self, what: str, role: str, proof: Any) -> Operator:
        """The enabled operator of `role` whose fresh code `proof` carries (the code is spent)."""
        if (
            not isinstance(proof, dict)
            or set(proof) != {"username", "code"}
            or not all(isinstance(v, str) for v in proof.values())
        ):
            raise CommandError("step-up-required", 'a proof is {"username": …, "code": …}')
        username, code = proof["username"], _compact(proof["code"])
        row = self.records.get(username)
        if row is None or row.disabled:
            raise CommandError(
                "step-up-required", f"{username!r} is not an enabled operator of this node"
            )
        if row.role != role:
            raise CommandError(
                "forbidden", f"{what} needs the {role} role; {username} is {row.role}"
            )
        now = self._clock()
        wait = self._waiting(username, PROOF, now)
        if wait > 0:
            raise CommandError(
                "throttled",
                f"after wrong codes, {username}'s next code is taken in {math.ceil(wait)} s",
            )
        if not TOTP_CODE.fullmatch(code):
            raise CommandError("step-up-required", "the code is the authenticator's six digits")
        if not self._accept(row, code, now):
            self._failed(username, PROOF, now)
            raise CommandError("step-up-required", "the TOTP code is wrong or was used before")
        self._failures.pop((username, PROOF), None)
        return _operator(row)

    def check_login(self, username: Any, code: Any, password_ok: bool) -> LoginCheck:
        """The code of a login whose password the API checked. Whatever the answer, the
        same work is done (a seed unsealed, the code compared)."""
        row = self.records.get(username) if isinstance(username, str) else None
        compact = _compact(code) if isinstance(code, str) else ""
        now = self._clock()
        step = self._matching_step(row, compact, now)
        if row is None or row.disabled:
            return LoginCheck(False, "unknown")
        if not password_ok:
            return LoginCheck(False, "password")
        if self._waiting(row.username, LOGIN, now) > 0:
            return LoginCheck(False, "throttled")
        if step is not None and self.records.accept_step(row.username, step):
            self._failures.pop((row.username, LOGIN), None)
            return LoginCheck(True, "accepted")
        if TOTP_CODE.fullmatch(compact):
            self._failed(row.username, LOGIN, now)
        return LoginCheck(False, "code")

    # -- inside -----------------------------------------------------------------------------
    def _context(self, username: str) -> SealContext:
        return SealContext(self.node_id, f"operator:{username}", "totp-sha1-6", "operator-totp")

    def _matching_step(self, row: OperatorRow | None, code: str, now: float) -> int | None:
        """The latest step around `now` whose code is `code`, or None."""
        try:
            if row is None:
                seed = self.sealer.unseal(self._dummy, self._context("-"))
            else:
                seed = self.sealer.unseal(row.totp_sealed, self._context(row.username))
        except SealedBlobError as exc:  # a seed altered on disk, or moved to another operator
            log.error("the sealed TOTP seed of %s does not open: %s", row and row.username, exc)
            return None
        totp = pyotp.TOTP(seed.decode())
        current = totp.timecode(now)
        matched = [
            current + offset
            for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1)
            if current + offset >= 0
            and hmac.compare_digest(totp.at(now, counter_offset=offset), code)
        ]
        return max(matched, default=None)

    def _accept(self, row: OperatorRow, code: str, now: float) -> bool:
        step = self._matching_step(row, code, now)
        return step is not None and self.records.accept_step(row.username, step)

    def _waiting(self, username: str, bucket: str, now: float) -> float:
        failures = self._failures.get((username, bucket))
        return 0.0 if failures is None else max(0.0, failures.until - now)

    def _failed(self, username: str, bucket: str, now: float) -> None:
        failures = self._failures.setdefault((username, bucket), _Failures())
        failures.count += 1
        failures.until = now + min(2.0 ** min(failures.count - 1, 32), self.delay_max)


def _operator(row: OperatorRow) -> Operator:
    return Operator(row.username, row.role, row.disabled, row.created_at, row.created_by)


def _compact(code: str) -> str:
    """A code as typed: spaces dropped."""
    return "".join(code.split())
