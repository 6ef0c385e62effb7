"""The engine's control socket: newline-delimited JSON requests over a Unix socket that only
the engine's own user and the configured API user may use (checked with SO_PEERCRED).

    request   {"id": 1, "method": "dkg", "params": {...}, "actor": "alice", "role": "operator"}
    response  {"id": 1, "result": {...}}  or  {"id": 1, "error": {"code": "...", "message": "..."}}

`actor` and `role` name the authenticated operator on whose behalf the API calls; every
state-changing request is audited with them (and refused if its audit record cannot be
written); reads are audited by the API, which is the operators' only way in.

The commands of `appliance.operators.AUTHORITY` (backups, restores, policy, the service
switch, the journal's key, operators, rotation, approvals) also carry a proof,
`"proof": {"username": ..., "code": ...}`, that the engine checks against its own registry
of operators, whoever the caller is: without a valid one they are refused and audited, and
with one they are audited under the proven operator, not the `actor` the caller claims.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance.audit import AuditUnavailableError, audit
from appliance.chain.unit import BitcoindUnit, unit_installed
from appliance.exports import KeyExports
from appliance.operators import AUTHORITY, OperatorRegistry
from appliance.sealing import ROTATE_REQUEST, take_verification_key, verify_journal
from appliance.strictjson import loads

from .engine import CommandError, Engine

__all__ = ["ControlServer", "EngineClient", "EngineError"]

log = logging.getLogger(__name__)
MAX_REQUEST = 1 << 20

# Commands that change state: refused when their audit record cannot be written.
STATE_CHANGING = {
    "test-attestation",
    "dkg",
    "test-signing",
    "key-rotation",
    "deposit-address",
    "set-service",
    "bitcoind",
    "backup-key-share",
    "restore-key-share",
    "test-burn",
    "test-consolidate-fees",
    "approve-burn",
    "set-policy",
    "audit-key",
    "operator-enrol",
    "operator-disable",
    "approve-backup",
}


# Why a new admin's second proof was refused (appliance.operators.OperatorRegistry.enrol).
SECOND_PROOF_REFUSALS = {
    "second-admin-required",
    "same-admin",
    "step-up-required",
    "forbidden",
    "throttled",
}


class EngineError(Exception):
    """An error answer from the engine."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


class ControlServer:
    def __init__(
        self,
        engine: Engine,
        path: Path,
        allowed_users: tuple[str, ...],
        operators: OperatorRegistry,
        exports: KeyExports,
    ) -> None:
        self.engine = engine
        self.operators = operators
        self.exports = exports
        self.path = path
        self.allowed_uids = {os.getuid()} | {pwd.getpwnam(user).pw_uid for user in allowed_users}
        self._server: asyncio.AbstractServer | None = None
        chain = engine.chain
        self.bitcoind = (
            None if chain is None
            else BitcoindUnit(path.parent, chain.rpc, chain.watcher, unit_installed(),
                              engine.audit)
        )  # fmt: skip
        self.methods: dict[str, Callable[[dict[str, Any], str], Awaitable[Any]]] = {
            "status": self._status,
            "key-info": self._key_info,
            "test-communication": self._test_communication,
            "dkg": self._dkg,
            "test-signing": self._test_signing,
            "key-rotation": self._key_rotation,
            "ceremony": self._ceremony,
            "deposit-address": self._deposit_address,
            "service-status": self._service_status,
            "set-service": self._set_service,
            "bitcoind": self._bitcoind,
            "backup-key-share": self._backup_key_share,
            "restore-key-share": self._restore_key_share,
            "init": self._init,
            "security-check": self._security_check,
            "test-attestation": self._test_attestation,
            "attestations": self._attestations,
            "test-burn": self._test_burn,
            "test-consolidate-fees": self._test_consolidate_fees,
            "approve-burn": self._approve_burn,
            "payouts": self._payouts,
            "fee-reservoir": self._fee_reservoir,
            "set-policy": self._set_policy,
            "audit-key": self._audit_key,
            "audit-verify": self._audit_verify,
            "operators": self._operators,
            "operator-enrol": self._operator_enrol,
            "operator-disable": self._operator_disable,
            "login-code": self._login_code,
            "key-exports": self._key_exports,
            "approve-backup": self._approve_backup,
        }

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        # Owner only (0600); with allowed users (the API runs as its own user) 0660 to the
        # engine's group, and every caller's uid is still checked against the allowed ones.
        old_umask = os.umask(0o117 if len(self.allowed_uids) > 1 else 0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer)
            if uid not in self.allowed_uids:
                self.engine.refuse("control.refused", "not-allowed", {"peer": f"uid {uid}"})
                return
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await self._answer(writer, None, error=("too-large", "request too large"))
                    return
                if not line:
                    return
                await self._handle(writer, line)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _handle(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        try:
            request = loads(line)
            if not isinstance(request, dict):
                raise ValueError("request must be an object")
            method = request.get("method")
            params = request.get("params") or {}
            actor = str(request.get("actor") or "local")
            role = str(request.get("role") or "engine-client")
            if not isinstance(params, dict):
                raise ValueError("params must be an object")
        except ValueError as exc:
            await self._answer(writer, None, error=("bad-request", f"malformed request: {exc}"))
            return
        request_id = request.get("id")
        handler = self.methods.get(method) if isinstance(method, str) else None
        if handler is None:
            await self._answer(
                writer, request_id, error=("unknown-method", f"no method {method!r}")
            )
            return
        if method in AUTHORITY:
            try:
                proven = self.operators.authorize(method, request.get("proof"))
            except CommandError as exc:
                self._refuse_proof(method, actor, role, request.get("proof"), exc)
                await self._answer(writer, request_id, error=(exc.code, str(exc)))
                return
            if proven is not None:  # None: the first admin's enrolment, on an empty registry
                actor, role = proven.username, proven.role
        # Commands that change state are audited here, and refused if they cannot be; reads
        # are audited by the API that forwards them (one record per operator request).
        if method in STATE_CHANGING:
            try:
                audit(
                    "control.request", "received", f"{method} requested by {actor}",
                    actor=actor, role=role, method=str(method),
                )  # fmt: skip
            except AuditUnavailableError as exc:
                await self._answer(writer, request_id, error=("audit-unavailable", str(exc)))
                return
        # Only CommandError carries a message written for the caller (a parameter that is
        # missing or wrong is one too); anything else is a bug, whose text stays in the log.
        try:
            result = await handler(_Params(params), actor)
        except CommandError as exc:
            await self._answer(writer, request_id, error=(exc.code, str(exc)))
            return
        except Exception:  # the socket must answer, whatever went wrong
            incident = secrets.token_hex(4)
            log.exception("incident %s: control method %s failed", incident, method)
            failed = f"the engine failed on {method}; its log has the detail (incident {incident})"
            await self._answer(writer, request_id, error=("internal-error", failed))
            return
        await self._answer(writer, request_id, result=result)

    def _refuse_proof(
        self, method: str, actor: str, role: str, proof: Any, refusal: CommandError
    ) -> None:
        """Audit a command refused for want of a valid proof (best effort: it is refused
        either way)."""
        named = proof.get("username") if isinstance(proof, dict) else None
        try:
            self.engine.audit(
                "operator.proof-refused",
                "refused",
                f"{method} asked for by {actor} (as {role}) refused: {refusal}",
                actor=actor,
                role=role,
                method=method,
                reason=refusal.code,
                proof_user=str(named) if isinstance(named, str) else "-",
            )
        except AuditUnavailableError:
            log.error("audit unavailable while refusing %s without a valid proof", method)

    @staticmethod
    async def _answer(
        writer: asyncio.StreamWriter,
        request_id: Any,
        result: Any = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        answer: dict[str, Any] = {"id": request_id}
        if error is not None:
            answer["error"] = {"code": error[0], "message": error[1]}
        else:
            answer["result"] = result
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()

    # -- methods -----------------------------------------------------------------------------
    async def _status(self, params: dict[str, Any], actor: str) -> Any:
        return self.engine.status()

    async def _key_info(self, params: dict[str, Any], actor: str) -> Any:
        return self.engine.key_info()

    async def _test_communication(self, params: dict[str, Any], actor: str) -> Any:
        return await self.engine.test_communication(float(params.get("timeout", 2.0)))

    async def _dkg(self, params: dict[str, Any], actor: str) -> Any:
        return await self.engine.dkg(params["ceremony_id"])

    async def _key_rotation(self, params: dict[str, Any], actor: str) -> Any:
        return await self.engine.key_rotation(params["ceremony_id"], str(params["reason"]))

    async def _test_signing(self, params: dict[str, Any], actor: str) -> Any:
        messages = params["messages"] if "messages" in params else [params["message"]]
        if not isinstance(messages, list) or not all(
            isinstance(m, str) and 0 < len(m) <= 1024 for m in messages
        ):
            raise _bad_params("each message must be a non-empty string of at most 1024 characters")
        keys = params.get("keys", ["attestation", "custody"])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _bad_params("keys must be a list of key names")
        coordinate = bool(params.get("coordinate", True))
        signers = params.get("signers")
        if signers is not None and (
            not isinstance(signers, list) or not all(isinstance(s, int) for s in signers)
        ):
            raise _bad_params("signers must be a list of party identifiers")
        return await self.engine.test_signing(
            [m.encode() for m in messages], keys, coordinate, actor, signers
        )

    async def _deposit_address(self, params: dict[str, Any], actor: str) -> Any:
        recipient = params["recipient"]
        since = params.get("since_height")
        if not isinstance(recipient, str):
            raise _bad_params("recipient must be a string")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise _bad_params("since_height must be a block height")
        return await self.engine.deposit_address(recipient, since)

    async def _service_status(self, params: dict[str, Any], actor: str) -> Any:
        return self.engine.service_status()

    async def _set_service(self, params: dict[str, Any], actor: str) -> Any:
        enabled = params["enabled"]
        if not isinstance(enabled, bool):
            raise _bad_params("enabled must be true or false")
        return self.engine.set_service(enabled, str(params.get("reason") or ""), actor)

    async def _backup_key_share(self, params: dict[str, Any], actor: str) -> Any:
        return self.exports.request(
            str(params["key"]),
            _optional(params, "passphrase"),
            _optional(params, "recipient"),
            actor,
        )

    async def _approve_backup(self, params: dict[str, Any], actor: str) -> Any:
        return self.exports.approve(str(params["export_id"]), actor)

    async def _key_exports(self, params: dict[str, Any], actor: str) -> Any:
        return {"exports": self.exports.pending()}

    async def _operators(self, params: dict[str, Any], actor: str) -> Any:
        return {"operators": [o.to_json() for o in self.operators.operators()]}

    async def _operator_enrol(self, params: dict[str, Any], actor: str) -> Any:
        # The proof was checked unless the registry is empty: then this is the first admin.
        by = None if self.operators.empty() else actor
        second = params.get("second_proof")
        try:
            enrolment = self.operators.enrol(params["username"], params["role"], by, second)
        except CommandError as exc:
            if exc.code in SECOND_PROOF_REFUSALS:
                self._refuse_proof("operator-enrol", actor, "admin", second, exc)
            raise
        operator = enrolment.operator
        self.engine.audit(
            "operator.enrolled",
            "success",
            f"{operator.username} enrolled as {operator.role} by {by or 'nobody (first admin)'}",
            actor=by or operator.username,
            username=operator.username,
            operator_role=operator.role,
        )
        return {**operator.to_json(), "otpauth_uri": enrolment.otpauth_uri}

    async def _operator_disable(self, params: dict[str, Any], actor: str) -> Any:
        operator = self.operators.disable(params["username"])
        self.engine.audit(
            "operator.disabled",
            "success",
            f"{operator.username} disabled by {actor}",
            actor=actor,
            username=operator.username,
            operator_role=operator.role,
        )
        return operator.to_json()

    async def _login_code(self, params: dict[str, Any], actor: str) -> Any:
        password_ok = params["password_ok"]
        if not isinstance(password_ok, bool):
            raise ValueError("password_ok must be true or false")
        username = params["username"]
        check = self.operators.check_login(username, params["code"], password_ok)
        if check.reason == "code":
            # Written after the answer has left, so that its time tells the caller nothing.
            asyncio.get_running_loop().call_soon(self._audit_code_refused, str(username))
        return {"accepted": check.accepted, "reason": check.reason}

    def _audit_code_refused(self, username: str) -> None:
        try:
            self.engine.audit(
                "operator.code-refused",
                "refused",
                f"a login of {username} gave the right password and a wrong or used TOTP code",
                actor=username,
            )
        except AuditUnavailableError:
            log.error("audit unavailable while refusing a login code of %s", username)

    async def _restore_key_share(self, params: dict[str, Any], actor: str) -> Any:
        return self.engine.restore_key_share(
            str(params["backup"]),
            _optional(params, "passphrase"),
            _optional(params, "recovery_key"),
            actor,
        )

    async def _init(self, params: dict[str, Any], actor: str) -> Any:
        return self.engine.node_identity()

    async def _security_check(self, params: dict[str, Any], actor: str) -> Any:
        return {"node_id": self.engine.config.node_id, "items": self.engine.security_check()}

    async def _test_attestation(self, params: dict[str, Any], actor: str) -> Any:
        return await self.engine.attest(actor)

    async def _attestations(self, params: dict[str, Any], actor: str) -> Any:
        after, limit = params.get("after", -1), params.get("limit", 100)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (after, limit)):
            raise _bad_params("after and limit must be integers")
        return self.engine.signed_attestations(after, limit)

    async def _test_burn(self, params: dict[str, Any], actor: str) -> Any:
        self.engine.require_signing()
        return await self.engine.payouts.run(actor)

    async def _test_consolidate_fees(self, params: dict[str, Any], actor: str) -> Any:
        coordinate = params.get("coordinate", True)
        if not isinstance(coordinate, bool):
            raise _bad_params("coordinate must be true or false")
        if coordinate:
            self.engine.require_signing()
        return await self.engine.payouts.consolidate(
            _optional(params, "address"), actor, coordinate, forced=True
        )

    async def _approve_burn(self, params: dict[str, Any], actor: str) -> Any:
        self.engine.require_signing()
        return await self.engine.payouts.approve_burn(str(params["burn_id"]), actor)

    async def _payouts(self, params: dict[str, Any], actor: str) -> Any:
        return self.engine.payouts.listing()

    async def _fee_reservoir(self, params: dict[str, Any], actor: str) -> Any:
        return self.engine.payouts.reservoir()

    async def _bitcoind(self, params: dict[str, Any], actor: str) -> Any:
        action, reason = params.get("action"), params.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise _bad_params("reason must say why bitcoind is to be stopped or started")
        if self.bitcoind is None:
            raise CommandError("no-bitcoind", "this node has no bitcoind configured")
        answer = await self.bitcoind.request(str(action), reason, actor)
        return {**answer, "signing_blocked": self.engine.signing_blocked()}

    async def _set_policy(self, params: dict[str, Any], actor: str) -> Any:
        changes = params.get("policy")
        if not isinstance(changes, dict):
            raise _bad_params("policy must be an object of the fields to change")
        return self.engine.payouts.set_policy(changes, actor)

    async def _audit_key(self, params: dict[str, Any], actor: str) -> Any:
        key = take_verification_key(self.engine.config.data_dir)
        self.engine.audit("journal.verification-key-fetched", "success",
                          f"the journal's verification key was taken off the node by {actor}",
                          actor=actor)  # fmt: skip
        return {"verification_key": key,
                "note": "kept nowhere on the node now: store it offline; "
                        "journalctl --verify --verify-key=KEY checks the seals"}  # fmt: skip

    async def _audit_verify(self, params: dict[str, Any], actor: str) -> Any:
        key = params.get("key")
        if not isinstance(key, str):
            raise _bad_params("key must be the journal's verification key")
        trigger = self.engine.config.engine_socket.parent / ROTATE_REQUEST
        rotate = (
            trigger if Path("/usr/lib/systemd/system/wire-journal-rotate.path").exists() else None
        )
        return await asyncio.to_thread(verify_journal, key, rotate)

    async def _ceremony(self, params: dict[str, Any], actor: str) -> Any:
        return self.engine.ceremony_info(str(params["ceremony_id"]))


def _optional(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad_params(f"{name} must be a string")
    return value


def _bad_params(message: str) -> CommandError:
    """A command's params are not what it takes: the API's schema refuses such bodies first,
    so this answers callers of the socket itself (and a compromised API)."""
    return CommandError("bad-request", message)


class _Params(dict[str, Any]):
    """A request's params: reading one the caller left out is the caller's mistake, answered
    as such, where any other KeyError is a bug (answered as internal-error)."""

    def __missing__(self, name: str) -> Any:
        raise _bad_params(f"params.{name} is required")


class EngineClient:
    """Calls the engine's control socket; one request at a time per connection."""

    def __init__(self, path: Path, actor: str = "local", role: str = "engine-client") -> None:
        self.path = path
        self.actor = actor
        self.role = role
        self._counter = 0

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        within: float | None = None,
        proof: dict[str, str] | None = None,
    ) -> Any:
        """Send one request and return its result; `within` bounds the wait (seconds);
        `proof` is an operator's `{"username", "code"}` for the commands that need one."""
        reader, writer = await asyncio.open_unix_connection(str(self.path), limit=16 << 20)
        try:
            self._counter += 1
            request = {
                "id": self._counter,
                "method": method,
                "params": params or {},
                "actor": self.actor,
                "role": self.role,
            }
            if proof is not None:
                request["proof"] = proof
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), within)
        finally:
            writer.close()
        if not line:
            raise EngineError("closed", "the engine closed the connection without answering")
        answer = json.loads(line)
        if "error" in answer:
            raise EngineError(answer["error"]["code"], answer["error"]["message"])
        return answer["result"]

    def call_sync(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        within: float | None = None,
        proof: dict[str, str] | None = None,
    ) -> Any:
        return asyncio.run(self.call(method, params, within, proof))
