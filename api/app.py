"""The Falcon application of `wire-api`: for every request, find its route, authenticate the
session, check the role, check the body, take the fresh TOTP code a sensitive route needs
(the engine checks it), write the audit record (refusing a state change whose record cannot
be written), run the handler, and answer JSON; errors are JSON with a stable code and a
readable title.

It holds no key material and never opens the HSM: the engine does the work."""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import falcon

from api.accounts import AccountError, Accounts, User
from api.body import read_body
from api.engine import EngineLink, EngineRefused, EngineUnavailable
from api.errors import ApiError
from api.metrics import ApiMetrics
from api.metrics import configure as configure_metrics
from api.routes import ROUTES, Call, Route
from api.schema import Invalid, coerce_query
from appliance.audit import AuditUnavailableError, audit
from appliance.config import NodeConfig, load_config

__all__ = ["create_app", "from_environment"]

log = logging.getLogger("wire-api")

# The engine's error codes, as HTTP statuses; any other code is a refusal (422).
ENGINE_STATUS = {
    "bad-request": 400,
    "bad-key": 400,
    "not-found": 404,
    "no-key": 409,
    "duplicate-ceremony": 409,
    "service-disabled": 409,
    "no-bitcoind": 409,
    "not-appliance": 409,
    "busy": 409,
    "signing-blocked": 409,
    "no-burn-authority": 409,
    "cannot-build": 409,
    "too-large": 413,
    "rate-limited": 429,
    "internal-error": 500,
    "audit-unavailable": 503,
    "unknown-method": 501,
    # The engine's own checks of operators and their proofs (appliance.operators, exports).
    "step-up-required": 403,
    "forbidden": 403,
    "bootstrap-closed": 403,
    "same-admin": 403,
    "second-admin-required": 403,
    "throttled": 429,
    "no-such-user": 404,
    "user-exists": 409,
    "last-admin": 409,
    "export-expired": 409,
    "export-stale": 409,
    "too-many-exports": 409,
}


class Resource:
    """All routes of one path template."""

    def __init__(self, app: WireApi, routes: dict[str, Route]) -> None:
        self.app = app
        self.routes = routes
        for method in routes:
            setattr(self, f"on_{method.lower()}", self._respond)

    def _respond(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
        self.app.respond(self.routes[req.method], req, resp, params)


class WireApi:
    def __init__(self, config: NodeConfig) -> None:
        assert config.api is not None
        self.config = config
        self.settings = config.api
        self.settings.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.accounts = Accounts(
            self.settings.database, session_seconds=self.settings.session_seconds
        )
        self.engine = EngineLink(config.engine_socket)
        configure_metrics(self.settings.metrics_dir)
        self.metrics = ApiMetrics()
        self.app = falcon.App(media_type=falcon.MEDIA_JSON)
        self.app.req_options.strip_url_path_trailing_slash = True
        self.app.add_error_handler(Exception, self._unexpected)
        self.app.add_error_handler(falcon.HTTPError, self._http_error)
        by_path: dict[str, dict[str, Route]] = {}
        for route in ROUTES:
            by_path.setdefault(route.path, {})[route.method] = route
        for path, routes in by_path.items():
            self.app.add_route(path, Resource(self, routes))

    # -- one request ------------------------------------------------------------------------
    def respond(
        self, route: Route, req: falcon.Request, resp: falcon.Response, params: dict[str, str]
    ) -> None:
        started = time.perf_counter()
        user: User | None = None
        status = 500
        try:
            user = self._user(route, req)
            call = Call(user, self._body(route, req), self._query(route, req), params,
                        self.accounts, self.engine, self.settings)  # fmt: skip
            if route.sensitive and user is not None:
                call.proof = _proof(user, req)
            if route.changes:
                self._audit(route, user, "received", required=True)
            result = route.handler(call)
            if route.path == "/v1/session" and route.method == "DELETE":
                self.accounts.logout(_bearer(req) or "")
            status = route.status
            resp.status = falcon.code_to_http_status(status)
            resp.media = result
        except ApiError as exc:
            status = exc.status
            _error(resp, exc.status, exc.code, exc.title)
        except AccountError as exc:
            status = exc.status
            if exc.code == "login-failed":
                self.metrics.login_failed()
                self._audit(route, None, "refused", actor=_field(req, "username"),
                            reason=exc.code)  # fmt: skip
            _error(resp, exc.status, exc.code, str(exc))
        except Invalid as exc:
            status = 400
            _error(resp, 400, "bad-request", str(exc))
        except EngineRefused as exc:
            status = ENGINE_STATUS.get(exc.code, 422)
            _error(resp, status, exc.code, str(exc))
        except EngineUnavailable as exc:
            status = 503
            _error(resp, 503, "engine-unavailable", str(exc))
        except falcon.HTTPError as exc:  # Falcon's own refusals, such as a bad Content-Length
            status = _falcon_error(resp, exc)
        except Exception:
            # A bug, not the client's doing: its text stays in the log (an unexpected
            # ValueError is no "bad request" either).
            status = 500
            _error(resp, 500, "internal-error", _incident(req))
        finally:
            self.metrics.request(route.path, route.method, status, time.perf_counter() - started)
        if route.public and route.path == "/v1/health":
            return
        self._audit(route, user, "success" if status < 400 else "refused", status=status,
                    actor=None if user else _field(req, "username"))  # fmt: skip

    def _user(self, route: Route, req: falcon.Request) -> User | None:
        token = _bearer(req)
        if route.public:
            return None
        bootstrap = route.path == "/v1/users" and route.method == "POST"
        if bootstrap and not self.accounts.has_enabled_users():
            return None  # the first admin: the engine enrols it only into an empty registry
        user = self.accounts.authenticate(token or "")
        if user.role not in route.roles:
            raise ApiError(403, "forbidden", f"the {user.role} role may not {route.name}")
        return user

    @staticmethod
    def _body(route: Route, req: falcon.Request) -> dict[str, Any]:
        body = read_body(req, route.body)
        req.context.body = body
        return dict(body)

    @staticmethod
    def _query(route: Route, req: falcon.Request) -> dict[str, Any]:
        return coerce_query(dict(req.params), route.query)

    def _audit(self, route: Route, user: User | None, outcome: str, *, required: bool = False,
               actor: str | None = None, **fields: str | int) -> None:  # fmt: skip
        event = "api.login" if route.path == "/v1/session" else "api.request"
        who = user.username if user else (actor or "anonymous")
        try:
            audit(
                event, outcome, f"{route.method} {route.path} ({route.name}) by {who}: {outcome}",
                actor=who, role=user.role if user else None,
                route=route.path, method=route.method, **{k: str(v) for k, v in fields.items()},
            )  # fmt: skip
        except AuditUnavailableError as exc:
            if required:
                raise ApiError(
                    503, "audit-unavailable", f"refused: the audit record cannot be written ({exc})"
                ) from exc
            log.error("audit unavailable: %s", exc)

    # -- errors Falcon raises itself (404, 405, bad media) ----------------------------------
    def _http_error(
        self, req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, params: Any
    ) -> None:
        _falcon_error(resp, exc)

    def _unexpected(
        self, req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any
    ) -> None:
        if isinstance(exc, falcon.HTTPError):
            self._http_error(req, resp, exc, params)
            return
        _error(resp, 500, "internal-error", _incident(req))


def _bearer(req: falcon.Request) -> str | None:
    header = req.get_header("Authorization") or ""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _proof(user: User, req: falcon.Request) -> dict[str, str]:
    """The caller's proof for the engine: refused here already when there is no code."""
    code = (req.get_header("X-Wire-TOTP") or "").strip()
    if not code:
        raise ApiError(403, "step-up-required", "this call needs a fresh TOTP code (X-Wire-TOTP)")
    return {"username": user.username, "code": code}


def _field(req: falcon.Request, name: str) -> str | None:
    body = getattr(req.context, "body", None)
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _falcon_error(resp: falcon.Response, exc: falcon.HTTPError) -> int:
    status = exc.status_code
    code = {404: "not-found", 405: "method-not-allowed"}.get(status, "bad-request")
    _error(resp, status, code, exc.title or "refused")
    return status


def _incident(req: falcon.Request) -> str:
    """Logs the exception being handled under a new incident id; the title that names it."""
    incident = secrets.token_hex(4)
    log.exception("incident %s: unexpected error on %s %s", incident, req.method, req.path)
    return f"the API failed on this request; the node's log has the detail (incident {incident})"


def _error(resp: falcon.Response, status: int, code: str, title: str) -> None:
    resp.status = falcon.code_to_http_status(status)
    resp.media = {"error": {"code": code, "title": title}}


def create_app(config: NodeConfig) -> Any:
    return WireApi(config).app


def from_environment() -> Any:
    """The app for gunicorn: its configuration file from `WIRE_MPC_CONFIG`."""
    return create_app(load_config(Path(os.environ.get("WIRE_MPC_CONFIG",
                                                      "/etc/wire-mpc/config.json"))))  # fmt: skip
