"""`python -m hsm`: provision the token, check it, back up and restore a key share.

A restore seals a share again over the vault's record of its key (a new token, a damaged
sealed share); a key the vault holds no record of is refused.

PINs and passphrases are read from systemd credentials, private files or the development
environment variables (see `hsm.config`), or typed at a prompt; never from the command line.
Exit status: 0 done, 1 refused or failed (the reason is printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from appliance.frost import PublicKeyPackage

from .backup import (
    Passphrase,
    RecoveryKey,
    create_backup,
    generate_recovery_key,
    load_recovery_key,
    restore_backup,
)
from .config import SOFTHSM_MODULE, HsmConfig, SecretSource, read_secret
from .errors import HsmError, SecretUnavailableError, UnknownKeyError, VaultError
from .keystore import Keystore, provision
from .vault import ShareVault, write_private_file


def _config(args: argparse.Namespace) -> HsmConfig:
    return HsmConfig(
        module=args.module,
        token_label=args.token_label,
        pin=SecretSource("hsm-pin", args.pin_file, "WIRE_MPC_HSM_PIN"),
        so_pin=SecretSource("hsm-so-pin", args.so_pin_file, "WIRE_MPC_HSM_SO_PIN"),
    )


def _passphrase(args: argparse.Namespace, confirm: bool) -> Passphrase:
    source = SecretSource("backup-passphrase", args.passphrase_file, "WIRE_MPC_BACKUP_PASSPHRASE")
    try:
        return Passphrase(read_secret(source))
    except SecretUnavailableError:
        if not sys.stdin.isatty():
            raise
    first = getpass.getpass("Backup passphrase: ")
    if confirm and getpass.getpass("Repeat the passphrase: ") != first:
        raise SecretUnavailableError("the passphrases differ")
    if len(first) < 12:
        raise SecretUnavailableError("a backup passphrase needs at least 12 characters")
    return Passphrase(first)


def cmd_provision(args: argparse.Namespace) -> dict[str, Any]:
    report = provision(_config(args))
    return {
        "token": report.token_label,
        "token_created": report.token_created,
        "objects_created": list(report.created),
        "identity_public_key": report.identity_public_key.hex(),
    }


def cmd_check(args: argparse.Namespace) -> dict[str, Any]:
    with Keystore.open(_config(args)) as keystore:
        return {
            "token": keystore.label,
            "kek": "present, sensitive, never extractable",
            "identity_public_key": keystore.identity_public_key.hex(),
        }


def cmd_backup(args: argparse.Namespace) -> dict[str, Any]:
    vault = ShareVault(args.data_dir / "keys")
    record = vault.load(args.key)
    protect: Passphrase | RecoveryKey
    if args.recipient:
        protect = RecoveryKey(bytes.fromhex(args.recipient))
    else:
        protect = _passphrase(args, confirm=True)
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with Keystore.open(_config(args)) as keystore:
        share = vault.open(keystore, args.key)
        try:
            data = create_backup(record, share, protect, created)
        finally:
            share.wipe()
    write_private_file(args.output, data)
    return {
        "backup": str(args.output),
        "key": args.key,
        "identifier": record.identifier,
        "fingerprint": record.public.fingerprint,
        "protection": "recovery key" if args.recipient else "passphrase",
    }


def cmd_restore(args: argparse.Namespace) -> dict[str, Any]:
    data = args.input.read_bytes()
    key: Passphrase | RecoveryKey
    if args.recovery_key:
        key = load_recovery_key(args.recovery_key.read_bytes())
    else:
        key = _passphrase(args, confirm=False)
    vault = ShareVault(args.data_dir / "keys")

    def known(key_name: str) -> PublicKeyPackage:
        # Offline there is no store: the vault's own record of the key must still be there
        # (its token was replaced, or its sealed share damaged).
        try:
            return vault.load(key_name).public
        except VaultError as exc:
            raise UnknownKeyError(
                f"{exc}: this command only seals a share again over the record of a key "
                "the node holds"
            ) from None

    with Keystore.open(_config(args)) as keystore:
        record = restore_backup(
            vault, keystore, data, key, args.cluster_id, args.node_id, args.identifier, known
        )
    return {
        "restored": record.key_name,
        "identifier": record.identifier,
        "fingerprint": record.public.fingerprint,
    }


def cmd_recovery_key(args: argparse.Namespace) -> dict[str, Any]:
    pem, key = generate_recovery_key()
    write_private_file(args.output, pem)
    return {"private_key_file": str(args.output), "public_key": key.public.hex()}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m hsm", description=__doc__.splitlines()[0])
    top.add_argument("--json", action="store_true", help="print the result as JSON")
    sub = top.add_subparsers(dest="command", required=True)

    def token_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--module", type=Path, default=SOFTHSM_MODULE, help="PKCS#11 library")
        p.add_argument("--token-label", default="wire-mpc")
        p.add_argument("--pin-file", type=Path, help="file holding the user PIN (mode 0600)")
        p.add_argument("--so-pin-file", type=Path, help="file holding the SO PIN (mode 0600)")

    p = sub.add_parser("provision", help="create the token (SoftHSM) and the node's keys, once")
    token_options(p)
    p.set_defaults(run=cmd_provision)

    p = sub.add_parser("check", help="log in and check the token's keys")
    token_options(p)
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("backup", help="write an encrypted backup of a key share")
    token_options(p)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--key", required=True, help="key name, e.g. custody or attestation")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--recipient", help="recovery X25519 public key (hex) instead of a passphrase")
    p.add_argument("--passphrase-file", type=Path)
    p.set_defaults(run=cmd_backup)

    p = sub.add_parser("restore", help="restore a key share from a backup onto this token")
    token_options(p)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--cluster-id", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--identifier", type=int, required=True)
    p.add_argument("--recovery-key", type=Path, help="recovery private key (PEM)")
    p.add_argument("--passphrase-file", type=Path)
    p.set_defaults(run=cmd_restore)

    p = sub.add_parser("recovery-key", help="create a recovery X25519 key pair")
    p.add_argument("--output", type=Path, required=True, help="where the private key goes")
    p.set_defaults(run=cmd_recovery_key)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = args.run(args)
    except (HsmError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
