"""Every route of the control API, in one table: its roles, whether it changes state or needs
a fresh TOTP code, its request body, and its handler. The Falcon app and the OpenAPI
document are both built from this table, so neither can list a route the other lacks.

Roles: `admin` runs users, configuration, the service switches, the node's bitcoind and
key-share backups (two admins for each) and restores; `operator` runs ceremonies, tests and
approvals; `auditor` reads. Every role reads. A sensitive route passes the caller's fresh
TOTP code to the engine as a proof, which the engine checks against its own registry of
operators."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from api import journal
from api.accounts import Accounts, User
from api.engine import EngineLink
from api.schema import Invalid, openapi
from appliance.chain.unit import ACTIONS
from appliance.config import ApiConfig

__all__ = ["ALL_ROLES", "ROUTES", "Call", "Route"]

VERSION = "1"
ALL_ROLES = ("admin", "operator", "auditor")
ADMIN = ("admin",)
OPERATOR = ("operator",)


@dataclass
class Call:
    """One request, as a handler sees it."""

    user: User | None
    body: dict[str, Any]
    query: dict[str, str]
    params: dict[str, str]
    accounts: Accounts
    engine_link: EngineLink
    settings: ApiConfig
    proof: dict[str, str] | None = None  # the caller's fresh TOTP code, on sensitive routes

    def engine(
        self, method: str, params: dict[str, Any] | None = None, within: float | None = None
    ) -> Any:
        actor, role = (
            ("anonymous", "none") if self.user is None else (self.user.username, self.user.role)
        )
        return self.engine_link.call(method, params or {}, actor, role, within, self.proof)


Handler = Callable[[Call], Any]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str  # the mpc_operator command it serves
    summary: str
    handler: Handler
    roles: tuple[str, ...] = ALL_ROLES
    changes: bool = False  # state-changing: refused when its audit record cannot be written
    sensitive: bool = False  # needs a fresh TOTP code (X-Wire-TOTP) even with a session
    public: bool = False  # reachable without a session (login, health)
    body: dict[str, Any] | None = None  # JSON schema of the request body
    query: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> schema
    status: int = 200


def _string(max_length: int = 256, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, **extra}


def _object(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": False}  # fmt: skip


CEREMONY_ID = _string(64, pattern="^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEY_NAME = {"type": "string", "enum": ["attestation", "custody"]}
TOTP_CODE = _string(32)


# -- handlers -------------------------------------------------------------------------------
def health(call: Call) -> Any:
    try:
        call.engine_link.call("service-status", {}, "health", "health", 5.0)
        engine = True
    except Exception:  # health must answer whatever the engine does
        engine = False
    return {"api": "ok", "engine": engine}


def login(call: Call) -> Any:
    def check_code(username: str, code: str, password_ok: bool) -> bool:
        answer = call.engine_link.call(
            "login-code",
            {"username": username, "code": code, "password_ok": password_ok},
            username,
            "login",
            30.0,
        )
        return answer["accepted"] is True

    body = call.body
    session = call.accounts.login(body["username"], body["password"], body["code"], check_code)
    return {"token": session.token, "expires_at": session.expires_at,
            "username": session.user.username, "role": session.user.role}  # fmt: skip


def logout(call: Call) -> Any:
    return {"logged_out": True}  # the app revokes the session it authenticated


def create_user(call: Call) -> Any:
    def enrol() -> str:
        params = {"username": call.body["username"], "role": call.body["role"]}
        if "second_admin" in call.body:  # a new admin, once two are enabled: four eyes
            params["second_proof"] = call.body["second_admin"]
        return str(call.engine("operator-enrol", params)["otpauth_uri"])

    enrollment = call.accounts.create_user(
        call.body["username"],
        call.body["role"],
        call.body["password"],
        created_by=call.user,
        enrol=enrol,
    )
    return {
        "username": enrollment.user.username,
        "role": enrollment.user.role,
        "otpauth_uri": enrollment.otpauth_uri,
        "backup_codes": enrollment.backup_codes,
    }


def list_users(call: Call) -> Any:
    """The engine's registry: who holds which role is what the engine believes."""
    return {"users": call.engine("operators")["operators"]}


def disable_user(call: Call) -> Any:
    operator = call.engine("operator-disable", {"username": call.params["username"]})
    call.accounts.disable_user(operator["username"])
    return {"username": operator["username"], "disabled": operator["disabled"]}


def engine_method(method: str, timeout: float | None = None) -> Handler:
    def handler(call: Call) -> Any:
        return call.engine(method, call.body, timeout)

    handler.__name__ = method.replace("-", "_")
    return handler


def test_signing(call: Call) -> Any:
    return call.engine("test-signing", call.body, 300.0)


def ceremony(call: Call) -> Any:
    return call.engine("ceremony", {"ceremony_id": call.params["ceremony_id"]})


def key_rotation(call: Call) -> Any:
    return call.engine("key-rotation", call.body, 300.0)


def enable_service(call: Call) -> Any:
    return call.engine("set-service", {"enabled": True, "reason": call.body.get("reason", "")})


def disable_service(call: Call) -> Any:
    return call.engine("set-service", {"enabled": False, "reason": call.body["reason"]})


def security_check(call: Call) -> Any:
    report = call.engine("security-check")
    items = list(report["items"])
    items.extend(_api_checks(call))
    return {"node_id": report["node_id"], "passed": all(i["passed"] for i in items),
            "items": items}  # fmt: skip


def _api_checks(call: Call) -> list[dict[str, Any]]:
    settings = call.settings
    items = []
    for path, wanted in ((settings.socket, 0o660), (settings.database, 0o600)):
        try:
            mode = path.stat().st_mode & 0o777
            passed, detail = mode & ~wanted == 0, f"mode {mode:04o}, at most {wanted:04o}"
        except OSError as exc:
            passed, detail = False, f"cannot stat: {exc.strerror}"
        items.append({"check": f"permissions {path}", "passed": passed, "detail": detail})
    return items


def report(call: Call) -> Any:
    period = call.query.get("period", "weekly")
    if period not in journal.PERIODS:
        raise Invalid(f"query.period: must be one of {', '.join(journal.PERIODS)}")
    until = time.time()
    since = until - journal.PERIODS[period] * 86400
    return {
        "period": period,
        "since": since,
        "until": until,
        "status": call.engine("status"),
        "keys": call.engine("key-info")["keys"],
        "audit": journal.summarise(call.settings.audit_writers, since, until),
    }


def audit_records(call: Call) -> Any:
    now = time.time()
    since = float(call.query.get("since", now - 86400))
    until = float(call.query["until"]) if "until" in call.query else None
    limit = int(call.query.get("limit", 100))
    if not 1 <= limit <= journal.MAX_RECORDS:
        raise Invalid(f"query.limit: must be between 1 and {journal.MAX_RECORDS}")
    writers = call.settings.audit_writers
    records = journal.query(
        writers, since, until, call.query.get("actor"), call.query.get("event"), limit
    )
    return {"records": records}


def attestations(call: Call) -> Any:
    return call.engine("attestations", {"after": call.query.get("after", -1),
                                        "limit": call.query.get("limit", 100)})  # fmt: skip


def document(call: Call) -> Any:
    return openapi(ROUTES, VERSION)


def approve_burn(call: Call) -> Any:
    return call.engine("approve-burn", {"burn_id": call.params["burn_id"]}, 60.0)


def approve_backup(call: Call) -> Any:
    return call.engine("approve-backup", {"export_id": call.params["export_id"]})


def set_policy(call: Call) -> Any:
    return call.engine("set-policy", {"policy": call.body})


def policy(call: Call) -> Any:
    return call.engine("payouts")["policy"]


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/health", "health", "Is the API up, and can it reach the engine",
          health, public=True),
    Route("GET", "/v1/openapi.json", "openapi", "This document (OpenAPI 3)", document),
    Route("POST", "/v1/session", "login", "Log in with password and TOTP (or a backup code)",
          login, public=True, status=201,
          body=_object(["username", "password", "code"], username=_string(64),
                       password=_string(1024), code=TOTP_CODE)),
    Route("DELETE", "/v1/session", "logout", "End this session", logout),
    Route("POST", "/v1/users", "user create",
          "Create a user (the first admin without a session, only while no user exists)",
          create_user, roles=ADMIN, changes=True, sensitive=True, status=201,
          body=_object(["username", "role", "password"], username=_string(64),
                       role={"type": "string", "enum": list(ALL_ROLES)},
                       password=_string(1024),
                       second_admin=_object(["username", "code"], username=_string(64),
                                            code=TOTP_CODE))),
    Route("GET", "/v1/users", "user list", "List users", list_users, roles=ADMIN),
    Route("POST", "/v1/users/{username}/disable", "user disable",
          "Disable a user and end its sessions", disable_user, roles=ADMIN, changes=True,
          sensitive=True),
    Route("POST", "/v1/init", "init",
          "This node's identity for the cluster configuration (idempotent)",
          engine_method("init"), roles=ADMIN, changes=True),
    Route("GET", "/v1/status", "status", "The node: peers, keys, bitcoind, ceremonies",
          engine_method("status")),
    Route("GET", "/v1/key-info", "key-info", "Group keys and fingerprints to compare",
          engine_method("key-info")),
    Route("GET", "/v1/security-check", "security-check",
          "Each security item: pass or fail, with the reason", security_check),
    Route("GET", "/v1/service", "service-status", "Whether this node signs",
          engine_method("service-status")),
    Route("POST", "/v1/service/enable", "enable-service", "Let this node sign again",
          enable_service, roles=ADMIN, changes=True, sensitive=True,
          body=_object([], reason=_string(512))),
    Route("POST", "/v1/service/disable", "disable-service",
          "Stop every signature on this node", disable_service, roles=ADMIN, changes=True,
          sensitive=True, body=_object(["reason"], reason=_string(512))),
    Route("POST", "/v1/bitcoind", "bitcoind",
          "Stop, start or restart this node's bitcoind (it signs nothing while stopped)",
          engine_method("bitcoind", 240.0), roles=ADMIN, changes=True, sensitive=True,
          body=_object(["action", "reason"], action={"type": "string", "enum": list(ACTIONS)},
                       reason=_string(512))),
    Route("POST", "/v1/dkg", "dkg",
          "This node's consent to, and part in, the DKG of both keys",
          engine_method("dkg", 600.0), roles=OPERATOR, changes=True,
          body=_object(["ceremony_id"], ceremony_id=CEREMONY_ID)),
    Route("POST", "/v1/key-rotation", "key-rotation initiate",
          "Refresh every node's shares of both keys (keys stay the same)", key_rotation,
          roles=OPERATOR, changes=True, sensitive=True,
          body=_object(["ceremony_id", "reason"], ceremony_id=CEREMONY_ID,
                       reason=_string(512))),
    Route("GET", "/v1/ceremonies/{ceremony_id}", "ceremony", "A ceremony's state and blame",
          ceremony),
    Route("POST", "/v1/test-communication", "test-communication",
          "Reachability, CURVE handshake and a signed round trip to every peer",
          engine_method("test-communication", 30.0), roles=OPERATOR,
          body=_object([], timeout={"type": "number", "minimum": 0.1, "maximum": 30})),
    Route("POST", "/v1/test-signing", "test-signing",
          "Approve a test message on this node, and coordinate its signing if asked",
          test_signing, roles=OPERATOR, changes=True,
          body=_object([], message=_string(1024),
                       messages={"type": "array", "minItems": 1, "maxItems": 500,
                                 "items": _string(1024)},
                       keys={"type": "array", "items": KEY_NAME, "minItems": 1},
                       coordinate={"type": "boolean"},
                       signers={"type": "array", "items": {"type": "integer"}})),
    Route("POST", "/v1/test-attestation", "test-attestation",
          "Attest every confirmed, unattested deposit now (this node coordinates)",
          engine_method("test-attestation", 300.0), roles=OPERATOR, changes=True,
          body=_object([])),
    Route("GET", "/v1/attestations", "attestations",
          "Signed mint attestations after a sequence number (the Wire system's outbox)",
          attestations,
          query={"after": {"type": "integer", "minimum": -1, "maximum": 2**62},
                 "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}),
    Route("POST", "/v1/test-burn", "test-burn",
          "Read the burn feed, finish open withdrawals and pay queued burns in one batch now "
          "(this node coordinates)",
          engine_method("test-burn", 300.0), roles=OPERATOR, changes=True, body=_object([])),
    Route("POST", "/v1/test-consolidate-fees", "test-consolidate-fees",
          "Approve a consolidation address on this node, and sweep the fee reservoir to it "
          "now if asked to coordinate (below the threshold too)",
          engine_method("test-consolidate-fees", 300.0), roles=OPERATOR, changes=True,
          sensitive=True,
          body=_object([], address=_string(128), coordinate={"type": "boolean"})),
    Route("GET", "/v1/payouts", "payouts",
          "Burns this node verified, withdrawals and consolidations, and the policy",
          engine_method("payouts")),
    Route("GET", "/v1/fee-reservoir", "fee-reservoir",
          "The fee reservoir's address and the outputs waiting there",
          engine_method("fee-reservoir")),
    Route("POST", "/v1/burns/{burn_id}/approve", "approve-burn",
          "Approve paying a burn above the approval amount (sent to every peer)",
          approve_burn, roles=OPERATOR, changes=True, sensitive=True),
    Route("GET", "/v1/policy", "policy", "This node's signing policy", policy),
    Route("PUT", "/v1/policy", "set-policy",
          "Change fields of this node's signing policy (caps, deposit bounds, approvals)",
          set_policy, roles=ADMIN, changes=True, sensitive=True,
          body={"type": "object", "minProperties": 1, "additionalProperties": False,
                "properties": {name: {"type": "integer", "minimum": 0, "maximum": 21 * 10**14}
                               for name in ("max_withdrawal_sats", "daily_outflow_sats",
                                            "min_deposit_sats", "max_deposit_sats",
                                            "min_burn_sats", "approval_above_sats",
                                            "approvals_required", "max_batch")}}),
    Route("POST", "/v1/deposit-addresses", "deposit-address",
          "Watch a Wire recipient's deposit address (optionally rescanning from a height)",
          engine_method("deposit-address", 120.0), roles=OPERATOR, changes=True,
          body=_object(["recipient"], recipient=_string(128),
                       since_height={"type": "integer", "minimum": 0, "maximum": 10**7})),
    Route("POST", "/v1/backup/key-share", "backup key-share",
          "Ask for an encrypted backup of this node's share (passphrase or recovery key); "
          "another admin approves it", engine_method("backup-key-share"), roles=ADMIN,
          changes=True, sensitive=True, status=202,
          body=_object(["key"], key=KEY_NAME, passphrase=_string(1024),
                       recipient=_string(64, pattern="^[0-9a-f]{64}$"))),
    Route("GET", "/v1/backup/requests", "backup list",
          "Backups asked for that wait for a second admin's approval",
          engine_method("key-exports"), roles=ADMIN),
    Route("POST", "/v1/backup/requests/{export_id}/approve", "backup approve",
          "Approve another admin's backup request: the encrypted backup comes back to you",
          approve_backup, roles=ADMIN, changes=True, sensitive=True),
    Route("POST", "/v1/restore/key-share", "restore key-share",
          "Restore this node's share from a backup", engine_method("restore-key-share"),
          roles=ADMIN, changes=True, sensitive=True,
          body=_object(["backup"], backup=_string(1 << 20), passphrase=_string(1024),
                       recovery_key=_string(4096))),
    Route("GET", "/v1/reports", "generate-report",
          "A report of the period: status, keys and audit counts", report,
          query={"period": {"type": "string", "enum": list(journal.PERIODS)}}),
    Route("POST", "/v1/audit/verification-key", "audit-key",
          "Take the journal's sealing verification key off the node (once)",
          engine_method("audit-key"), roles=ADMIN, changes=True, sensitive=True),
    Route("POST", "/v1/audit/verify", "audit-verify",
          "Check the journal's seals with the verification key an admin took off the node",
          engine_method("audit-verify", 900), roles=("admin", "auditor"),
          body=_object(["key"], key=_string(256))),
    Route("GET", "/v1/audit", "audit", "Audit records by time, actor and event", audit_records,
          query={"since": {"type": "number", "minimum": 0, "maximum": 4102444800},
                 "until": {"type": "number", "minimum": 0, "maximum": 4102444800},
                 "actor": _string(64), "event": _string(64),
                 "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}),
)  # fmt: skip
