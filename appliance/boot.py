"""The appliance's boot steps, run by its units (`python -m appliance.boot STEP`).

- `provision` (wire-provision.service, as the engine's user, every boot; changes nothing
  once done): the HSM token and identity key named by the node's configuration. The
  identity public key goes to the console: operators copy it into the cluster's
  configuration, and a node whose configured key differs is told so.
- `seal-journal` (wire-journal-seal.service, as root, once): Forward Secure Sealing keys for
  the journal. The verification key is kept in the engine's state directory until an admin
  takes it (`mpc_operator audit-key`, `appliance.sealing`); it then leaves the node.
- `evolve-sealing-key` (wire-journal-evolve.service, as root, every boot, before journald
  copies early boot's records to the persistent journal): brings the sealing key forward to
  the current interval (`appliance.sealing.evolve_sealing_key` says why).
- `bitcoind` (bitcoind.service, production image): runs Bitcoin Core for the configured
  network with RPC and ZMQ on loopback, its RPC password taken from the credential as an
  `rpcauth` hash (the password itself is never on a command line).
- `breakglass` (wire-breakglass.service): the audit record of an opened break-glass
  console, written before the console starts; if it cannot be written, no console.

Exit status: 0 done, 1 failed (the reason is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import pwd
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from appliance.audit import AuditUnavailableError, audit
from appliance.config import ConfigError, NodeConfig, load_config
from appliance.sealing import (
    JOURNAL_DIR,
    SEALING_INTERVAL,
    evolve_sealing_key,
    keep_verification_key,
    sealing_complete,
)
from hsm.config import read_secret
from hsm.errors import HsmError
from hsm.keystore import provision as provision_token


def provision(config_path: Path) -> int:
    config = load_config(config_path)
    report = provision_token(config.hsm)
    key = report.identity_public_key.hex()
    audit("node.provisioned", "success",
          f"token {report.token_label}: created {', '.join(report.created) or 'nothing'}",
          identity_key=key)  # fmt: skip
    print(f"wire-mpc node {config.node_id}: identity public key {key}")
    configured = config.me.identity_public_key.hex()
    if configured != key:
        print(f"wire-mpc node {config.node_id}: the configuration gives identity_public_key "
              f"{configured} for this node; peers will refuse its messages until it is "
              f"{key}", file=sys.stderr)  # fmt: skip
    return 0


def seal_journal(state_dir: Path, owner: str) -> int:
    if sealing_complete(state_dir):
        print("journal: sealing keys present")
        return 0
    machine_id = Path("/etc/machine-id").read_text().strip()
    (JOURNAL_DIR / machine_id).mkdir(parents=True, exist_ok=True)
    # --force: keys left by a first boot cut short before their verification key was kept
    # are replaced (nobody could ever verify with them).
    setup = ["journalctl", "--setup-keys", "--force", f"--interval={SEALING_INTERVAL}s"]
    made = subprocess.run(setup, capture_output=True, text=True, check=False)
    if made.returncode != 0:
        print(f"journalctl --setup-keys failed: {made.stderr.strip()}", file=sys.stderr)
        return 1
    user = pwd.getpwnam(owner)
    keep_verification_key(state_dir, made.stdout.strip(), user.pw_uid, user.pw_gid)
    subprocess.run(["journalctl", "--rotate"], check=True)
    audit(
        "journal.sealing-started",
        "success",
        "the journal is sealed; an admin must take the verification key off the node",
    )
    print("journal: sealing keys made; the verification key waits for an admin")
    return 0


def evolve_sealing_keys() -> int:
    keys = sorted(JOURNAL_DIR.glob("*/fss"))
    if not keys:
        print("journal: no sealing key yet")
    for fss in keys:
        before, after = evolve_sealing_key(fss, time.time_ns() // 1000)
        print(f"journal: sealing key at interval {after}" +
              (f" (evolved from {before})" if after != before else ""))  # fmt: skip
    return 0


CHAINS = {"mainnet": "main", "testnet": "test", "signet": "signet", "regtest": "regtest"}


def bitcoind_argv(config: NodeConfig, datadir: Path, salt: str) -> list[str]:
    """Bitcoin Core's command line for this node (pure: the salt is given)."""
    chain = config.bitcoin
    if chain is None or chain.rpc_user is None:
        raise ConfigError("bitcoind: the image's bitcoind needs bitcoind.rpc_user (its password "
                          "is the credential bitcoind-rpc-password)")  # fmt: skip
    password = read_secret(chain.rpc_password)
    digest = hmac.new(salt.encode(), password.encode(), hashlib.sha256).hexdigest()
    url = urlsplit(chain.rpc_url)
    zmq = urlsplit(chain.zmq_block)
    for name, host in (("rpc_url", url.hostname), ("zmq_block", zmq.hostname)):
        if host not in ("127.0.0.1", "localhost"):
            raise ConfigError(f"bitcoind.{name}: the image's bitcoind listens on loopback only, "
                              f"not on {host}")  # fmt: skip
    return [
        "/usr/bin/bitcoind", f"-datadir={datadir}", f"-chain={CHAINS[chain.network]}",
        "-server=1", "-disablewallet=1", "-printtoconsole=1", "-listen=1",
        f"-rpcauth={chain.rpc_user}:{salt}${digest}", "-rpcbind=127.0.0.1",
        "-rpcallowip=127.0.0.1", f"-rpcport={url.port or 8332}",
        f"-zmqpubhashblock={chain.zmq_block}", f"-zmqpubrawblock={chain.zmq_block}",
        f"-prune={chain.prune_mib}",
        *(f"-addnode={peer}" for peer in chain.peers),
    ]  # fmt: skip


def bitcoind(config_path: Path, datadir: Path) -> int:
    argv = bitcoind_argv(load_config(config_path), datadir, secrets.token_hex(16))
    os.execv(argv[0], argv)  # noqa: S606 (a fixed path, no shell involved)


def breakglass() -> int:
    audit("breakglass.opened", "success",
          "break-glass console opened on the serial console (wire.breakglass on the kernel "
          "command line)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.boot",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("provision")
    p.add_argument("--config", type=Path, required=True)
    s = steps.add_parser("seal-journal")
    s.add_argument("--state-dir", type=Path, default=Path("/var/lib/wire-mpc"))
    s.add_argument("--owner", default="wire-mpc")
    b = steps.add_parser("bitcoind")
    b.add_argument("--config", type=Path, required=True)
    b.add_argument("--datadir", type=Path, default=Path("/var/lib/bitcoind"))
    steps.add_parser("breakglass")
    steps.add_parser("evolve-sealing-key")
    args = parser.parse_args(argv)
    try:
        if args.step == "provision":
            return provision(args.config)
        if args.step == "seal-journal":
            return seal_journal(args.state_dir, args.owner)
        if args.step == "bitcoind":
            return bitcoind(args.config, args.datadir)
        if args.step == "evolve-sealing-key":
            return evolve_sealing_keys()
        return breakglass()
    except (ConfigError, HsmError, AuditUnavailableError, OSError, ValueError) as exc:
        print(f"{args.step}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
