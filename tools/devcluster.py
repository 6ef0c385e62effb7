"""A local cluster of wire-mpcd processes on loopback, for development, tests and the demo.

Each node gets its own directory: a SoftHSM2 token (provisioned through `python -m hsm`),
a credentials directory standing in for systemd credentials (HSM PINs, CURVE secret key),
its data directory (vault and SQLite) and its configuration file. Nothing is shared
between nodes but the configuration's public parts.

    python -m tools.devcluster up --dir /tmp/wire-dev --parties 3 --threshold 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zmq

from appliance.control import EngineClient, EngineError
from appliance.operators import AUTHORITY
from hsm.config import SOFTHSM_MODULE
from tools.authenticator import Authenticator

REPO = Path(__file__).resolve().parent.parent
OPERATORS_PER_ROLE = 4


def wait_until(
    check: Callable[[], Any], within: float = 30.0, what: str = "", pause: float = 0.05
) -> Any:
    """`check()`'s first truthy answer, asked every `pause` seconds for at most `within`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(pause)
    raise TimeoutError(f"not reached within {within} s: {what}")


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


class DevNode:
    def __init__(self, cluster: DevCluster, identifier: int, port: int) -> None:
        self.cluster = cluster
        self.identifier = identifier
        self.node_id = f"node-{identifier}"
        self.root = cluster.root / self.node_id
        self.port = port
        self.socket = cluster.socket_dir / f"{identifier}.sock"
        self.api_socket = cluster.socket_dir / f"{identifier}-api.sock"
        self.metrics_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.api_process: subprocess.Popen[bytes] | None = None
        self.curve_public = ""
        self.identity_public = ""
        # The node's own operators (`dev-admin-N`, `dev-operator-N`), enrolled on first need,
        # and the role of every operator whose seed the authenticator holds.
        self.authenticator = Authenticator()
        self.roles: dict[str, str] = {}

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "wire-mpcd.log"

    def environment(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("WIRE_MPC_", "PROMETHEUS_"))
        }
        env.update(
            {
                "CREDENTIALS_DIRECTORY": str(self.root / "credentials"),
                "SOFTHSM2_CONF": str(self.root / "softhsm2.conf"),
                "PYTHONPATH": str(REPO),
            }
        )
        if "WIRE_MPC_PRIVATE_JOURNAL" in os.environ:
            env["WIRE_MPC_PRIVATE_JOURNAL"] = os.environ["WIRE_MPC_PRIVATE_JOURNAL"]
        return env

    def prepare(self) -> None:
        """Token, credentials and keys of this node (its configuration comes later)."""
        tokens = self.root / "tokens"
        tokens.mkdir(parents=True)
        (self.root / "softhsm2.conf").write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        credentials = self.root / "credentials"
        credentials.mkdir(mode=0o700)
        public, secret = zmq.curve_keypair()
        self.curve_public = public.decode()
        for name, value in (
            ("hsm-pin", secrets.token_hex(8)),
            ("hsm-so-pin", secrets.token_hex(8)),
            ("curve-secret-key", secret.decode()),
        ):
            path = credentials / name
            path.write_text(value + "\n")
            path.chmod(0o600)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "hsm",
                "--json",
                "provision",
                "--module",
                str(SOFTHSM_MODULE),
                "--token-label",
                self.node_id,
            ],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(f"provisioning {self.node_id} failed: {run.stderr.strip()}")
        self.identity_public = json.loads(run.stdout)["identity_public_key"]

    def party(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "identifier": self.identifier,
            "address": f"127.0.0.1:{self.port}",
            "curve_public_key": self.curve_public,
            "identity_public_key": self.identity_public,
        }

    def write_config(self, parties: list[dict[str, Any]]) -> None:
        config = {
            "cluster_id": self.cluster.cluster_id,
            "node_id": self.node_id,
            "threshold": self.cluster.threshold,
            "parties": parties,
            "mesh": {"listen": f"127.0.0.1:{self.port}"},
            "paths": {"data_dir": str(self.data_dir), "engine_socket": str(self.socket)},
            "hsm": {"module": str(SOFTHSM_MODULE), "token_label": self.node_id},
            "ceremony": {"round_timeout_seconds": self.cluster.round_timeout},
        }
        if self.cluster.bitcoind is not None:  # each node follows a bitcoind of its own
            config["bitcoind"] = self.cluster.bitcoind[self.identifier - 1]
        config["api"] = {
            "socket": str(self.api_socket),
            "socket_group": None,
            "database": str(self.root / "api" / "accounts.db"),
            "metrics_dir": str(self.root / "api-metrics"),
            "session_seconds": self.cluster.session_seconds,
            # The engine and the API run as this user here, outside any systemd unit.
            "audit_writers": [{"user": pwd.getpwuid(os.getuid()).pw_name, "units": None}],
        }
        if self.cluster.operators:
            config["operators"] = self.cluster.operators
        config["metrics"] = {"listen": f"127.0.0.1:{self.metrics_port}"}
        config["wire"] = {
            "auto_attest": self.cluster.auto_attest,
            "attestation_push_url": self.cluster.attestation_push_url,
            "push_seconds": 0.5,
            "auto_pay": False,
            **self.cluster.wire,
        }
        if self.cluster.policy:
            config["policy"] = self.cluster.policy
        if self.cluster.fee_reservoir:
            config["fee_reservoir"] = self.cluster.fee_reservoir
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def start(self, command: list[str] | None = None, crash_at: str | None = None) -> None:
        """Start the engine (and the API); `crash_at` arms a crash point for the tests."""
        argv = command or [sys.executable, "-m", "appliance.daemon"]
        log = self.log_path.open("ab")
        env = self.environment()
        if crash_at is not None:
            env["WIRE_MPC_CRASH_AT"] = crash_at
        self.process = subprocess.Popen(
            [*argv, "--config", str(self.config_path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.cluster.api:
            self.api_process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf"],
                env={**self.environment(), "WIRE_MPC_CONFIG": str(self.config_path)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, kill: bool = False, timeout: float = 15.0) -> None:
        if self.api_process is not None:
            if self.api_process.poll() is None:
                self.api_process.terminate()
                try:
                    self.api_process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.api_process.kill()
                    self.api_process.wait()
            self.api_process = None
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self, actor: str = "devcluster") -> EngineClient:
        return EngineClient(self.socket, actor=actor, role="operator")

    def call(self, method: str, within: float | None = 120.0, **params: Any) -> Any:
        """Call a control method; `within` bounds the wait for its answer. A command the
        engine authorizes itself carries the proof of one of this node's own operators of
        the role it needs (`dev-admin-N` or `dev-operator-N`)."""
        proof = None
        if method in AUTHORITY:
            proof = self.authenticator.proof(self.operator(AUTHORITY[method]))
        return self.client().call_sync(method, params, within, proof)

    def operator(self, role: str) -> str:
        """One of this node's own operators of `role` with a TOTP step to spare now: each
        person's codes are good once, three 30-second steps at a time, so a test that
        proves many commands in a row gets up to `OPERATORS_PER_ROLE` people of a role,
        enrolled on first need (an admin first while the registry is empty, a third admin
        with two admins' codes)."""
        pool = [u for u in self.roles if u.startswith(f"dev-{role}-")]
        ready = [u for u in pool if self.authenticator.fresh(u)]
        if ready or len(pool) >= OPERATORS_PER_ROLE:
            return (ready or pool)[0]
        username = f"dev-{role}-{len(pool) + 1}"
        if role != "admin" and "admin" not in self.roles.values():
            self.operator("admin")  # the first operator of a node is an admin
        admins = [u for u, r in self.roles.items() if r == "admin"]
        proof = second = None
        if admins:
            # An admin of the pool when it has a step to spare; enrolling another admin
            # needs one of those there are (then the first step to come is waited for).
            by = self.operator("admin") if role != "admin" else admins[0]
            proof = self.authenticator.proof(by)
        if role == "admin" and len(admins) >= 2:
            second = self.authenticator.proof(next(u for u in admins if u != proof["username"]))
        params: dict[str, Any] = {"username": username, "role": role}
        if second is not None:
            params["second_proof"] = second
        answer = self.client().call_sync("operator-enrol", params, 30.0, proof)
        self.know(username, role, answer["otpauth_uri"])
        return username

    def know(self, username: str, role: str, otpauth_uri: str) -> None:
        """An operator enrolled on this node, whose codes the tests may make."""
        self.authenticator.add(username, otpauth_uri)
        self.roles[username] = role

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.node_id} exited: {self.log_path.read_text()[-2000:]}")
            try:
                self.call("status", within=5)
                if not self.cluster.api or self.api_socket.exists():
                    return
                if self.api_process is not None and self.api_process.poll() is not None:
                    raise RuntimeError(f"{self.node_id}'s API exited: "
                                       f"{self.log_path.read_text()[-2000:]}")  # fmt: skip
                time.sleep(0.05)
            except (OSError, EngineError):
                time.sleep(0.05)
        raise RuntimeError(f"{self.node_id} did not answer within the deadline")


class DevCluster:
    def __init__(
        self,
        root: Path,
        parties: int = 3,
        threshold: int = 2,
        round_timeout: float = 10.0,
        cluster_id: str = "wire-dev",
        bitcoind: list[dict[str, Any]] | None = None,
        api: bool = False,
        session_seconds: float = 900.0,
        auto_attest: bool = False,
        attestation_push_url: str | None = None,
        wire: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
        fee_reservoir: dict[str, Any] | None = None,
        operators: dict[str, Any] | None = None,
    ) -> None:
        self.operators = operators or {}  # the `operators` section (code delays, export window)
        self.auto_attest = auto_attest  # tests drive attestations themselves unless asked
        self.wire = wire or {}  # more of the `wire` section (burn feed, paid reports, auto_pay)
        self.policy = policy or {}
        self.fee_reservoir = fee_reservoir or {}
        self.attestation_push_url = attestation_push_url
        self.root = root
        self.api = api  # also run each node's wire-api (gunicorn) on its own socket
        self.session_seconds = session_seconds
        self.bitcoind = bitcoind  # the `bitcoind` section of each node's configuration
        self.threshold = threshold
        self.round_timeout = round_timeout
        self.cluster_id = cluster_id
        # Unix socket paths are limited to 108 bytes: keep them short.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="wire-", dir="/tmp"))
        ports = free_ports(2 * parties)
        self.nodes = {i: DevNode(self, i, ports[i - 1]) for i in range(1, parties + 1)}
        for i, node in self.nodes.items():
            node.metrics_port = ports[parties + i - 1]

    def __getitem__(self, identifier: int) -> DevNode:
        return self.nodes[identifier]

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for node in self.nodes.values():
            node.prepare()
        parties = [node.party() for node in self.nodes.values()]
        for node in self.nodes.values():
            node.write_config(parties)

    def start(self, identifiers: Iterable[int] | None = None, timeout: float = 60.0) -> None:
        chosen = [self.nodes[i] for i in (identifiers or self.nodes)]
        for node in chosen:
            node.start()
        deadline = time.monotonic() + timeout
        for node in chosen:
            node.wait_ready(deadline)

    def stop(self, identifiers: Iterable[int] | None = None, kill: bool = False) -> None:
        for i in identifiers or list(self.nodes):
            self.nodes[i].stop(kill=kill)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def custody_address(self) -> str:
        """The custody key's own address, as every running node shows it (after the DKG):
        its first output, once confirmed, is the genesis of the payout chain."""
        addresses = {
            node.call("payouts")["payout_chain"]["custody_address"]
            for node in self.nodes.values()
            if node.running()
        }
        if len(addresses) != 1:
            raise RuntimeError(f"the nodes disagree on the custody address: {addresses}")
        return addresses.pop()

    def __enter__(self) -> DevCluster:
        self.create()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="run a local wire-mpc cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create and start a cluster, run until Ctrl-C")
    up.add_argument("--dir", type=Path, required=True)
    up.add_argument("--parties", type=int, default=3)
    up.add_argument("--threshold", type=int, default=2)
    args = parser.parse_args()
    if args.dir.exists():
        print(f"{args.dir} exists; choose a new directory", file=sys.stderr)
        return 1
    with DevCluster(args.dir, args.parties, args.threshold) as cluster:
        for node in cluster.nodes.values():
            print(f"{node.node_id}: control socket {node.socket}, log {node.log_path}")
        print("running; Ctrl-C stops every node")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
