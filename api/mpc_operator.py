"""`mpc_operator`: the operators' client of a node's control API, over its Unix socket or,
at the machine, over a serial line (`--line /dev/ttyUSB0`: a laptop's USB serial adapter on
the node's UART; see `api.line`).

    mpc_operator login --username alice          # password and TOTP prompts
    mpc_operator dkg --ceremony-id genesis-1
    mpc_operator --json status

The session token is kept in a 0600 file; sensitive commands ask for a fresh TOTP code.
Files it writes (the session, backups) are made new, 0600 whatever the umask, and never
through a symbolic link; a backup never replaces an existing file.
Exit codes: 0 done, 1 refused (the message says why), 2 usage, 3 not logged in or session
expired, 4 not allowed for your role, 5 node unavailable, 6 not built on this node yet.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import http.client
import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from api import line

__all__ = ["main"]

EXIT = {
    "ok": 0,
    "refused": 1,
    "usage": 2,
    "login": 3,
    "forbidden": 4,
    "unavailable": 5,
    "not-built": 6,
}
DEFAULT_SOCKET = "/run/wire-mpc/api.sock"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Failure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Client:
    """The API at `endpoint`: a Unix socket, or with `line` a serial line."""

    def __init__(self, endpoint: str, session_file: Path, line: bool = False) -> None:
        self.endpoint = endpoint
        self.line = line
        self.session_file = session_file

    def token(self) -> str | None:
        try:
            return str(json.loads(self.session_file.read_text())["token"])
        except (OSError, ValueError, KeyError):
            return None

    def save(self, session: dict[str, Any]) -> None:
        """Replaces the session file whole: a new file under a temporary name, renamed over
        the old one (a rename replaces a symbolic link there instead of writing through it).
        A later login must replace it, so an existing file is not refused as a backup is."""
        self.session_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f".{self.session_file.name}.{secrets.token_hex(4)}"
        temporary = self.session_file.with_name(name)
        handle = os.fdopen(_create_private_file(temporary), "w")
        try:
            with handle:
                json.dump(
                    {
                        "token": session["token"],
                        "username": session["username"],
                        "expires_at": session["expires_at"],
                        "line" if self.line else "socket": self.endpoint,
                    },
                    handle,
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.session_file)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        totp: str | None = None,
        timeout: float = 900.0,
    ) -> Any:
        headers = {"Accept": "application/json"}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if totp:
            headers["X-Wire-TOTP"] = totp
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            status, payload = self._exchange(method, path, headers, data, timeout)
        except (OSError, ValueError) as exc:
            raise Failure("unavailable", f"cannot reach the API at {self.endpoint}: {exc}") from exc
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            raise Failure("unavailable", f"the API answered HTTP {status} without JSON") from None
        if status >= 400:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            title = error.get("title", f"HTTP {status}")
            code = error.get("code", "")
            kind = (
                "login"
                if status == 401
                else "forbidden"
                if status == 403
                else "not-built"
                if status == 501
                else "unavailable"
                if status >= 500
                else "refused"
            )
            raise Failure(kind, f"{title} [{code}]")
        return answer

    def _exchange(
        self, method: str, path: str, headers: dict[str, str], data: bytes | None, timeout: float
    ) -> tuple[int, bytes]:
        if self.line:
            return line.exchange(self.endpoint, method, path, headers, data, timeout)
        connection = UnixConnection(self.endpoint, timeout)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def _create_private_file(path: Path) -> int:
    """A new file at `path`, open for writing, 0600 whatever the umask. Anything already
    there is refused, a symbolic link too (it could lead anywhere the user may write)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        raise Failure("usage", f"{path} exists already: give a new file name") from None
    os.fchmod(descriptor, 0o600)  # the umask may have taken bits from the mode asked for
    return descriptor


def _secret(prompt: str, file: str | None, confirm: bool = False) -> str:
    if file:
        return Path(file).read_text().rstrip("\n")
    value = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != value:
        raise Failure("usage", "the two entries differ")
    return value


def _totp(args: argparse.Namespace) -> str:
    return str(args.totp or input("fresh TOTP code: ").strip())


def _with_progress(what: str, work: Any, poll: Any = None) -> Any:
    """Run `work()` while telling the operator it is still going (on stderr, if a terminal
    or when asked), with the ceremony's state when `poll` can fetch it."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:  # handed to the main thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        thread.join(1.0)
        if thread.is_alive():
            state = ""
            if poll is not None:
                try:
                    state = f" ({poll()})"
                except Failure:
                    state = ""
            print(
                f"… {what}: {time.monotonic() - started:.0f} s{state}", file=sys.stderr, flush=True
            )
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _print(value: Any, indent: int = 0) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                print(f"{pad}{key}:")
                _print(item, indent + 1)
            else:
                print(f"{pad}{key}: {item}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                print(f"{pad}-")
                _print(item, indent + 1)
            else:
                print(f"{pad}- {item}")
    else:
        print(f"{pad}{value}")


def run(args: argparse.Namespace) -> Any:
    client = Client(args.line or args.socket, Path(args.session_file), line=bool(args.line))
    command = args.command

    def ceremony_state(ceremony_id: str) -> Any:
        return lambda: client.request("GET", f"/v1/ceremonies/{quote(ceremony_id)}", timeout=5)[
            "state"
        ]

    if command == "login":
        username = args.username or input("username: ")
        password = _secret("password: ", args.password_file)
        code = args.code or input("TOTP code (or a backup code): ").strip()
        session = client.request(
            "POST", "/v1/session", {"username": username, "password": password, "code": code}
        )
        client.save(session)
        return {
            "logged_in": session["username"],
            "role": session["role"],
            "expires_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(session["expires_at"])),
        }
    if command == "logout":
        answer = client.request("DELETE", "/v1/session")
        client.session_file.unlink(missing_ok=True)
        return answer
    if command == "user":
        if args.user_command == "create":
            password = _secret(
                f"password for {args.username}: ",
                args.password_file,
                confirm=not args.password_file,
            )
            # The first admin has no session and no code yet; every later user needs an
            # admin's fresh code.
            code = _totp(args) if client.token() else None
            user: dict[str, Any] = {
                "username": args.username,
                "role": args.role,
                "password": password,
            }
            if args.second_admin:  # a new admin of a node with two: the other admin's code
                second = args.second_code or input(f"{args.second_admin}'s fresh TOTP code: ")
                user["second_admin"] = {"username": args.second_admin, "code": second.strip()}
            return client.request("POST", "/v1/users", user, totp=code)
        if args.user_command == "list":
            return client.request("GET", "/v1/users")
        return client.request("POST", f"/v1/users/{quote(args.username)}/disable", totp=_totp(args))
    if command == "init":
        return client.request("POST", "/v1/init")
    if command == "dkg":
        return _with_progress(
            f"DKG {args.ceremony_id}",
            lambda: client.request("POST", "/v1/dkg", {"ceremony_id": args.ceremony_id}),
            ceremony_state(args.ceremony_id),
        )
    if command in ("key-info", "status", "security-check", "service-status"):
        path = {"service-status": "/v1/service"}.get(command, f"/v1/{command}")
        return client.request("GET", path)
    if command == "backup" and args.backup_command == "key-share":
        body: dict[str, Any] = {"key": args.key}
        if args.recipient:
            body["recipient"] = args.recipient
        else:
            body["passphrase"] = _secret(
                "backup passphrase: ", args.passphrase_file, confirm=not args.passphrase_file
            )
        return client.request("POST", "/v1/backup/key-share", body, totp=_totp(args))
    if command == "backup" and args.backup_command == "list":
        return client.request("GET", "/v1/backup/requests")
    if command == "backup":
        # The file is made before the node is asked, so a name that is taken costs neither
        # a TOTP code nor an approval spent on a backup thrown away.
        out = Path(args.output)
        handle = os.fdopen(_create_private_file(out), "wb")
        try:
            with handle:
                answer = client.request(
                    "POST", f"/v1/backup/requests/{quote(args.export_id)}/approve", totp=_totp(args)
                )
                handle.write(base64.b64decode(answer.pop("backup")))
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            out.unlink(missing_ok=True)  # made above by this command, so nobody else's file
            raise
        return {**answer, "written": str(out)}
    if command == "restore":
        body = {"backup": base64.b64encode(Path(args.input).read_bytes()).decode()}
        if args.recovery_key:
            body["recovery_key"] = Path(args.recovery_key).read_text()
        else:
            body["passphrase"] = _secret("backup passphrase: ", args.passphrase_file)
        return client.request("POST", "/v1/restore/key-share", body, totp=_totp(args))
    if command == "test-communication":
        return client.request("POST", "/v1/test-communication", {})
    if command == "test-signing":
        body = {"message": args.message, "coordinate": not args.approve_only}
        if args.signers:
            body["signers"] = [int(s) for s in args.signers.split(",")]
        return _with_progress(
            "test signing", lambda: client.request("POST", "/v1/test-signing", body)
        )
    if command in ("test-attestation", "test-burn"):
        return _with_progress(command, lambda: client.request("POST", f"/v1/{command}", {}))
    if command == "test-consolidate-fees":
        body = {"coordinate": not args.approve_only}
        if args.address:
            body["address"] = args.address
        code = _totp(args)
        return _with_progress(
            command, lambda: client.request("POST", f"/v1/{command}", body, totp=code)
        )
    if command in ("payouts", "fee-reservoir"):
        return client.request("GET", f"/v1/{command}")
    if command == "approve-burn":
        return client.request("POST", f"/v1/burns/{quote(args.burn_id)}/approve",
                              totp=_totp(args))  # fmt: skip
    if command == "audit-verify":
        key = Path(args.key_file).read_text().strip()
        return client.request("POST", "/v1/audit/verify", {"key": key})
    if command == "audit-key":
        return client.request("POST", "/v1/audit/verification-key", totp=_totp(args))
    if command == "policy":
        if not args.set:
            return client.request("GET", "/v1/policy")
        changes = {}
        for item in args.set:
            name, _, value = item.partition("=")
            if not value.isdigit():
                raise Failure("usage", f"--set {item}: give name=<whole number>")
            changes[name] = int(value)
        return client.request("PUT", "/v1/policy", changes, totp=_totp(args))
    if command == "enable-service":
        return client.request(
            "POST",
            "/v1/service/enable",
            {"reason": args.reason} if args.reason else {},
            totp=_totp(args),
        )
    if command == "disable-service":
        return client.request(
            "POST", "/v1/service/disable", {"reason": args.reason}, totp=_totp(args)
        )
    if command == "bitcoind":
        body = {"action": args.action, "reason": args.reason}
        return client.request("POST", "/v1/bitcoind", body, totp=_totp(args))
    if command == "key-rotation":
        body = {"ceremony_id": args.ceremony_id, "reason": args.reason}
        return _with_progress(
            f"key rotation {args.ceremony_id}",
            lambda: client.request("POST", "/v1/key-rotation", body, totp=_totp(args)),
            ceremony_state(args.ceremony_id),
        )
    if command == "generate-report":
        return client.request("GET", f"/v1/reports?{urlencode({'period': args.period})}")
    if command == "audit":
        query = {
            k: v
            for k, v in (
                ("since", args.since),
                ("actor", args.actor),
                ("event", args.event),
                ("limit", args.limit),
            )
            if v is not None
        }
        return client.request("GET", f"/v1/audit?{urlencode(query)}")
    if command == "deposit-address":
        body = {"recipient": args.recipient}
        if args.since_height is not None:
            body["since_height"] = args.since_height
        return client.request("POST", "/v1/deposit-addresses", body)
    if command == "ceremony":
        return client.request("GET", f"/v1/ceremonies/{quote(args.ceremony_id)}")
    if command == "server":
        return serve(args)
    raise Failure("usage", f"unknown command {command}")


def serve(args: argparse.Namespace) -> Any:
    """`server`: the node's two services in the foreground, for development (the image runs
    them as systemd units): the engine, then gunicorn serving the API."""
    import subprocess

    env = dict(os.environ, WIRE_MPC_CONFIG=args.config)
    engine = subprocess.Popen(
        [sys.executable, "-m", "appliance.daemon", "--config", args.config], env=env
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf"], env=env
    )
    try:
        while engine.poll() is None and api.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (api, engine):
            if process.poll() is None:
                process.terminate()
                process.wait(30)
    return {"engine_exit": engine.returncode, "api_exit": api.returncode}


def parser() -> argparse.ArgumentParser:
    runtime = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    p = argparse.ArgumentParser(prog="mpc_operator", description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", default=os.environ.get("WIRE_MPC_API_SOCKET", DEFAULT_SOCKET))
    where.add_argument(
        "--line", help="a serial line to the node instead (e.g. /dev/ttyUSB0), 115200 8N1"
    )
    p.add_argument(
        "--session-file",
        default=os.environ.get(
            "WIRE_MPC_SESSION_FILE", str(Path(runtime) / "wire-mpc" / "session.json")
        ),
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.add_argument("--totp", help="a fresh TOTP code for a sensitive command (else prompted)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("login", help="log in: password and TOTP code")
    s.add_argument("--username")
    s.add_argument("--password-file", help="read the password from this file")
    s.add_argument("--code", help="the TOTP code or a backup code")
    sub.add_parser("logout", help="end the session")
    s = sub.add_parser("user", help="users (admin)")
    users = s.add_subparsers(dest="user_command", required=True)
    u = users.add_parser(
        "create", help="create a user (the first admin needs no session; later ones a code)"
    )
    u.add_argument("--username", required=True)
    u.add_argument("--role", required=True, choices=["admin", "operator", "auditor"])
    u.add_argument("--password-file")
    u.add_argument("--second-admin", help="a new admin, once two exist: the other admin present")
    u.add_argument("--second-code", help="that admin's fresh TOTP code (else prompted)")
    users.add_parser("list")
    u = users.add_parser("disable")
    u.add_argument("username")
    sub.add_parser("init", help="this node's identity for the cluster configuration")
    s = sub.add_parser("dkg", help="consent to and run the DKG of both keys")
    s.add_argument("--ceremony-id", required=True)
    for name in (
        "key-info",
        "status",
        "security-check",
        "service-status",
        "test-communication",
        "test-attestation",
        "test-burn",
        "payouts",
        "fee-reservoir",
    ):
        sub.add_parser(name)
    s = sub.add_parser("test-consolidate-fees", help="sweep the fee reservoir now")
    s.add_argument("--address", help="sweep here (approved on this node by asking)")
    s.add_argument("--approve-only", action="store_true", help="approve the address only")
    s = sub.add_parser("approve-burn", help="approve paying a burn above the approval amount")
    s.add_argument("burn_id")
    sub.add_parser(
        "audit-key", help="take the journal's sealing verification key off the node (admin, once)"
    )
    s = sub.add_parser("audit-verify", help="check the journal's seals (admin or auditor)")
    s.add_argument("--key-file", required=True, help="the verification key, as audit-key gave it")
    s = sub.add_parser("policy", help="show, or (admin) change, this node's signing policy")
    s.add_argument("--set", action="append", metavar="NAME=SATS", help="a field to change")
    s = sub.add_parser("backup", help="key-share backups: two admins, one asks, one approves")
    backups = s.add_subparsers(dest="backup_command", required=True)
    b = backups.add_parser("key-share", help="ask for a backup (another admin approves it)")
    b.add_argument("--key", required=True, choices=["attestation", "custody"])
    b.add_argument("--recipient", help="a recovery X25519 public key (hex) instead of a passphrase")
    b.add_argument("--passphrase-file")
    backups.add_parser("list", help="backups waiting for approval")
    b = backups.add_parser("approve", help="approve another admin's request; take the backup")
    b.add_argument("export_id")
    b.add_argument("--output", required=True)
    s = sub.add_parser("restore", help="restore key-share")
    s.add_argument("what", choices=["key-share"])
    s.add_argument("--input", required=True)
    s.add_argument("--recovery-key", help="the recovery private key (PEM file)")
    s.add_argument("--passphrase-file")
    s = sub.add_parser("test-signing", help="approve (and coordinate) a test signature")
    s.add_argument("--message", required=True)
    s.add_argument("--approve-only", action="store_true", help="approve on this node only")
    s.add_argument("--signers", help="comma-separated party identifiers")
    s = sub.add_parser("enable-service")
    s.add_argument("--reason")
    s = sub.add_parser("disable-service")
    s.add_argument("--reason", required=True)
    s = sub.add_parser("bitcoind", help="stop, start or restart this node's bitcoind")
    s.add_argument("action", choices=["stop", "start", "restart"])
    s.add_argument("--reason", required=True)
    s = sub.add_parser("key-rotation", help="key-rotation initiate")
    s.add_argument("action", choices=["initiate"])
    s.add_argument("--ceremony-id", required=True)
    s.add_argument("--reason", required=True)
    s = sub.add_parser("generate-report")
    s.add_argument("--period", default="weekly", choices=["daily", "weekly", "monthly"])
    s = sub.add_parser("audit", help="audit records")
    s.add_argument("--since", type=float, help="epoch seconds (default: a day ago)")
    s.add_argument("--actor")
    s.add_argument("--event", help="an event, or a family such as 'api.'")
    s.add_argument("--limit", type=int)
    s = sub.add_parser("deposit-address")
    s.add_argument("--recipient", required=True)
    s.add_argument("--since-height", type=int)
    s = sub.add_parser("ceremony")
    s.add_argument("ceremony_id")
    s = sub.add_parser("server", help="run the engine and the API in the foreground (development)")
    s.add_argument(
        "--config", default=os.environ.get("WIRE_MPC_CONFIG", "/etc/wire-mpc/config.json")
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = run(args)
    except Failure as exc:
        print(f"mpc_operator: {exc}", file=sys.stderr)
        return EXIT[exc.kind]
    except (OSError, EOFError) as exc:
        print(f"mpc_operator: {exc}", file=sys.stderr)
        return EXIT["usage"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    if isinstance(result, dict) and result.get("state") == "failed":
        return EXIT["refused"]  # a ceremony that ran and failed: its reason is printed above
    return EXIT["ok"]


if __name__ == "__main__":
    sys.exit(main())
