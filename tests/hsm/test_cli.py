"""`python -m hsm` as an operator runs it: provision, check, back up, restore, refuse."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pkcs11

from appliance.frost import SECP256K1_TR, trusted_dealer_keygen
from hsm.config import SOFTHSM_MODULE, HsmConfig
from hsm.keystore import Keystore
from hsm.vault import ShareVault

from ..conftest import REPO


def hsm_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsm", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=120,
        check=False,
    )


def test_operator_flow_through_the_command(softhsm: Path, tmp_path: Path) -> None:
    token = ["--token-label", "node-1"]
    run = hsm_cli("--json", "provision", *token)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["token_created"]
    assert report["objects_created"] == ["wire-kek", "wire-identity"]
    again = json.loads(hsm_cli("--json", "provision", *token).stdout)
    assert again == {**report, "token_created": False, "objects_created": []}
    checked = json.loads(hsm_cli("--json", "check", *token).stdout)
    assert checked["identity_public_key"] == report["identity_public_key"]

    # The DKG would put the share here; the test puts a dealer share in the vault.
    pkcs11.lib(str(SOFTHSM_MODULE)).reinitialize()
    shares, public = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    data = tmp_path / "data"
    with Keystore.open(HsmConfig(token_label="node-1")) as keystore:
        ShareVault(data / "keys").store(keystore, shares[3], "c1", "node-3", "custody")

    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a long operator passphrase\n")
    passphrase.chmod(0o600)
    backup = tmp_path / "custody.backup"
    run = hsm_cli(
        "--json", "backup", *token, "--data-dir", str(data), "--key", "custody",
        "--output", str(backup), "--passphrase-file", str(passphrase),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["fingerprint"] == public.fingerprint
    assert backup.stat().st_mode & 0o777 == 0o600

    # The token is lost (its KEK with it); the data directory is kept. A new token, and the
    # restore seals the share again over the vault's record.
    shutil.rmtree(softhsm)
    softhsm.mkdir()
    assert hsm_cli("provision", *token).returncode == 0
    restore = [
        "restore", *token, "--data-dir", str(data), "--input", str(backup),
        "--cluster-id", "c1", "--node-id", "node-3", "--identifier", "3",
    ]  # fmt: skip
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    wrong.chmod(0o600)
    run = hsm_cli(*restore, "--passphrase-file", str(wrong))
    assert run.returncode == 1
    assert "wrong passphrase" in run.stderr
    run = hsm_cli("--json", *restore, "--passphrase-file", str(passphrase))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {
        "restored": "custody",
        "identifier": 3,
        "fingerprint": public.fingerprint,
    }
    pkcs11.lib(str(SOFTHSM_MODULE)).reinitialize()
    with Keystore.open(HsmConfig(token_label="node-1")) as keystore:
        restored = ShareVault(data / "keys").open(keystore, "custody")
    assert restored.signing_share.reveal() == shares[3].signing_share.reveal()

    # Without the vault's record the command cannot know the key: it refuses, writes nothing.
    shutil.rmtree(data)
    run = hsm_cli(*restore, "--passphrase-file", str(passphrase))
    assert run.returncode == 1
    assert "holds no share of key 'custody'" in run.stderr
    assert "only seals a share again over the record" in run.stderr
    assert list((data / "keys").iterdir()) == []


def test_refusals_exit_1_with_the_reason(softhsm: Path) -> None:
    assert hsm_cli("provision", "--token-label", "node-1").returncode == 0
    run = hsm_cli("check", "--token-label", "node-1", env={"WIRE_MPC_HSM_PIN": "wrong-pin-1"})
    assert run.returncode == 1
    assert "refused the user PIN" in run.stderr
    assert "wrong-pin-1" not in run.stderr
    run = hsm_cli("check", "--token-label", "node-7")
    assert run.returncode == 1
    assert "tokens present: 'node-1'" in run.stderr
    run = hsm_cli("check", "--module", "/nonexistent/libvendor.so")
    assert run.returncode == 1
    assert "does not exist" in run.stderr
    assert hsm_cli("frobnicate").returncode == 2


def test_recovery_key_command(tmp_path: Path) -> None:
    out = tmp_path / "recovery.pem"
    run = hsm_cli("--json", "recovery-key", "--output", str(out))
    assert run.returncode == 0, run.stderr
    assert len(bytes.fromhex(json.loads(run.stdout)["public_key"])) == 32
    assert out.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in out.read_bytes()
