"""Sealed shares on disk, encrypted backups, and the operator's flow: back up, wipe the
node, restore onto a new token, sign again."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pkcs11
import pytest
from coincurve import PublicKeyXOnly
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.frost import (
    ED25519_SHA512,
    SECP256K1_TR,
    KeyShare,
    PublicKeyPackage,
    SecretScalar,
    SigningPackage,
    aggregate,
    commit,
    sign,
    signing_key,
    taproot_tweak,
    trusted_dealer_keygen,
)
from hsm.backup import (
    Passphrase,
    create_backup,
    generate_recovery_key,
    load_recovery_key,
    read_backup,
    restore_backup,
)
from hsm.config import SOFTHSM_MODULE, HsmConfig
from hsm.errors import (
    BackupFormatError,
    BackupIntegrityError,
    ForeignBackupError,
    SealedBlobError,
    UnknownKeyError,
    VaultError,
    WrongPassphraseError,
)
from hsm.keystore import Keystore, provision
from hsm.vault import ShareRecord, ShareVault

from .conftest import second_token

CLUSTER = "cluster-test"
PASSPHRASE = Passphrase("correct horse battery staple")


def dealer_keys():
    attestation, _ = trusted_dealer_keygen(ED25519_SHA512, 2, 3)
    custody, _ = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    return {"attestation": attestation, "custody": custody}


def forms(share: KeyShare) -> list[bytes]:
    """Every way the secret could have been written down."""
    value = share.signing_share.reveal()
    raw = [value.to_bytes(32, "big"), value.to_bytes(32, "little")]
    return raw + [r.hex().encode() for r in raw] + [base64.b64encode(r) for r in raw]


def test_vault_stores_only_sealed_shares(keystore: Keystore, tmp_path: Path, softhsm: Path) -> None:
    vault = ShareVault(tmp_path / "data" / "keys")
    keys = dealer_keys()
    for name, shares in keys.items():
        vault.store(keystore, shares[1], CLUSTER, "node-1", name)
    assert vault.names() == ["attestation", "custody"]
    assert stat.S_IMODE(vault.directory.stat().st_mode) == 0o700
    for path in vault.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # No form of either share appears anywhere in the data directory or the token store.
    secrets_ = [f for shares in keys.values() for f in forms(shares[1])]
    for root in (tmp_path / "data", softhsm):
        for path in root.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert not any(s in content for s in secrets_), path
    for name, shares in keys.items():
        opened = vault.open(keystore, name)
        assert opened.signing_share.reveal() == shares[1].signing_share.reveal()
    with pytest.raises(VaultError, match="already holds"):
        vault.store(keystore, keys["custody"][1], CLUSTER, "node-1", "custody")


def test_a_record_whose_share_was_swapped_is_refused(keystore: Keystore, tmp_path: Path) -> None:
    keys = dealer_keys()["custody"]
    vault = ShareVault(tmp_path / "a" / "keys")
    other = ShareVault(tmp_path / "b" / "keys")
    vault.store(keystore, keys[1], CLUSTER, "node-1", "custody")
    other.store(keystore, keys[2], CLUSTER, "node-1", "custody")
    other.store(keystore, keys[2], CLUSTER, "node-1", "spare")
    record = json.loads((vault.directory / "custody.json").read_text())
    # Participant 2's share sealed under the very same context: it opens, but is not ours.
    same_context = json.loads((other.directory / "custody.json").read_text())["sealed_share"]
    record["sealed_share"] = same_context
    (vault.directory / "custody.json").write_text(json.dumps(record))
    with pytest.raises(VaultError, match="does not match its verifying share"):
        vault.open(keystore, "custody")
    # A blob sealed for another key name is refused before decryption.
    record["sealed_share"] = json.loads((other.directory / "spare.json").read_text())[
        "sealed_share"
    ]
    (vault.directory / "custody.json").write_text(json.dumps(record))
    with pytest.raises(SealedBlobError, match=r"sealed for .*spare"):
        vault.open(keystore, "custody")


def sign_with(shares: dict[int, KeyShare], signers: list[int], message: bytes, tweaks=()) -> bytes:
    public = shares[signers[0]].public
    nonces = {i: commit(shares[i]) for i in signers}
    package = SigningPackage.create(
        public.suite, message, [n.commitments for n in nonces.values()], tweaks
    )
    return aggregate(package, [sign(package, nonces[i], shares[i]) for i in signers], public)


@pytest.mark.parametrize("protection", ["passphrase", "recovery-key"])
def test_back_up_wipe_restore_and_sign_again(
    hsm_config: HsmConfig, tmp_path: Path, softhsm: Path, protection: str
) -> None:
    keys = dealer_keys()
    data = tmp_path / "node-1"
    vault = ShareVault(data / "keys")
    recovery_pem, recovery_public = generate_recovery_key()
    protect = PASSPHRASE if protection == "passphrase" else recovery_public
    unlock = PASSPHRASE if protection == "passphrase" else load_recovery_key(recovery_pem)
    backups = {}
    with Keystore.open(hsm_config) as keystore:
        for name, shares in keys.items():
            record = vault.store(keystore, shares[1], CLUSTER, "node-1", name)
            opened = vault.open(keystore, name)
            backups[name] = create_backup(record, opened, protect, "2026-11-21T00:00:00+00:00")
            opened.wipe()

    # The node is lost: its data directory and its whole token are gone. New hardware:
    # a new process (here: the PKCS#11 library initialised afresh), a new token and KEK.
    shutil.rmtree(data)
    shutil.rmtree(softhsm)
    softhsm.mkdir()
    pkcs11.lib(str(SOFTHSM_MODULE)).reinitialize()
    provision(hsm_config)

    # What the node's store keeps of each key: its public package.
    known = {name: shares[1].public for name, shares in keys.items()}
    vault = ShareVault(data / "keys")
    with Keystore.open(hsm_config) as keystore:
        for backup in backups.values():
            restore_backup(vault, keystore, backup, unlock, CLUSTER, "node-1", 1, known.__getitem__)
        restored = {name: vault.open(keystore, name) for name in keys}

    message = b"attestation after restore"
    sig = sign_with({1: restored["attestation"], 3: keys["attestation"][3]}, [1, 3], message)
    Ed25519PublicKey.from_public_bytes(restored["attestation"].group_key).verify(sig, message)
    custody = restored["custody"]
    tweaks = [taproot_tweak(custody.group_key)]
    digest = bytes(32)
    sig = sign_with({1: custody, 2: keys["custody"][2]}, [1, 2], digest, tweaks)
    output_key = signing_key(custody.public, tweaks).key
    assert PublicKeyXOnly(output_key[1:]).verify(sig, digest)


DEALT = dealer_keys()["custody"]  # the key the restoring node knows as "custody"


def knows_custody(key_name: str) -> PublicKeyPackage:
    """A node whose store knows "custody" as DEALT's key, and no other key."""
    if key_name != "custody":
        raise UnknownKeyError(f"this node holds no key {key_name!r}")
    return DEALT[2].public


@pytest.fixture
def backup_file(keystore: Keystore, tmp_path: Path) -> bytes:
    vault = ShareVault(tmp_path / "source" / "keys")
    share = DEALT[2]
    record = vault.store(keystore, share, CLUSTER, "node-2", "custody")
    return create_backup(record, share, PASSPHRASE, "2026-11-21T00:00:00+00:00")


def restore_into_fresh_vault(keystore: Keystore, tmp_path: Path, data: bytes, **overrides):
    arguments = {"key": PASSPHRASE, "cluster_id": CLUSTER, "node_id": "node-2", "identifier": 2}
    arguments.update(overrides)
    vault = ShareVault(tmp_path / f"restore-{os.urandom(4).hex()}" / "keys")
    try:
        return restore_backup(
            vault,
            keystore,
            data,
            arguments["key"],
            arguments["cluster_id"],
            arguments["node_id"],
            arguments["identifier"],
            knows_custody,
        )
    finally:
        # Refused or not: nothing but a sealed record of the known key is ever written.
        assert list(vault.directory.iterdir()) in ([], [vault.directory / "custody.json"])


def backup_of(share: KeyShare, key_name: str = "custody", identifier: int | None = None) -> bytes:
    """A backup of `share` as anyone holding the passphrase can make one: validly encrypted,
    with whatever name and identifier they write into it."""
    record = ShareRecord(CLUSTER, "node-2", key_name, share.identifier, share.public, b"")
    data = json.loads(create_backup(record, share, PASSPHRASE, "2026-11-21T00:00:00+00:00"))
    if identifier is None:
        return json.dumps(data).encode()
    # Re-encrypt under the altered metadata, so it is authentic as far as GCM goes.
    forged = KeyShare(identifier, SecretScalar(share.signing_share.reveal()), share.public)
    record = ShareRecord(CLUSTER, "node-2", key_name, identifier, share.public, b"")
    return create_backup(record, forged, PASSPHRASE, "2026-11-21T00:00:00+00:00")


def test_a_backup_of_a_key_the_node_does_not_hold_is_refused_before_anything_is_written(
    keystore: Keystore, tmp_path: Path
) -> None:
    own, _ = trusted_dealer_keygen(SECP256K1_TR, 2, 3)  # an operator's own key
    with pytest.raises(UnknownKeyError, match="other group key, verifying shares"):
        restore_into_fresh_vault(keystore, tmp_path, backup_of(own[2]))
    with pytest.raises(UnknownKeyError, match="no key 'custody-0'"):
        restore_into_fresh_vault(keystore, tmp_path, backup_of(own[2], "custody-0"))
    # The node's own group key but other verifying shares (a package built around a share
    # the operator knows) is another key package, refused the same way.
    public = DEALT[2].public
    swapped = own[2].public.verifying_share(2)
    shares = tuple((i, swapped if i == 2 else y) for i, y in public.verifying_shares)
    value = SecretScalar(own[2].signing_share.reveal())
    mixed = KeyShare(2, value, public._replace(verifying_shares=shares))
    with pytest.raises(UnknownKeyError, match=r"\(other verifying shares\)"):
        restore_into_fresh_vault(keystore, tmp_path, backup_of(mixed))


def test_a_tampered_share_or_another_participants_share_is_refused(
    keystore: Keystore, tmp_path: Path
) -> None:
    # The right key package, a share that is not this participant's.
    value = (DEALT[2].signing_share.reveal() + 1) % SECP256K1_TR.group.order
    tampered = KeyShare(2, SecretScalar(value), DEALT[2].public)
    with pytest.raises(BackupIntegrityError, match="does not match its verifying share"):
        restore_into_fresh_vault(keystore, tmp_path, backup_of(tampered))
    # Participant 3's share, labelled as participant 2's.
    with pytest.raises(BackupIntegrityError, match="participant 2 does not match"):
        restore_into_fresh_vault(keystore, tmp_path, backup_of(DEALT[3], identifier=2))
    # Participant 3's share as it is: refused as another participant's.
    with pytest.raises(ForeignBackupError, match="participant 3"):
        restore_into_fresh_vault(keystore, tmp_path, backup_of(DEALT[3]))


def test_wrong_passphrase(keystore: Keystore, tmp_path: Path, backup_file: bytes) -> None:
    with pytest.raises(WrongPassphraseError, match="wrong passphrase"):
        restore_into_fresh_vault(keystore, tmp_path, backup_file, key=Passphrase("guess"))


def test_truncated_and_foreign_files(
    keystore: Keystore, tmp_path: Path, backup_file: bytes
) -> None:
    with pytest.raises(BackupFormatError, match="truncated"):
        restore_into_fresh_vault(keystore, tmp_path, backup_file[: len(backup_file) // 2])
    with pytest.raises(BackupFormatError, match="not a wire-mpc key-share backup"):
        restore_into_fresh_vault(keystore, tmp_path, b'{"kind": "something else"}')
    document = json.loads(backup_file)
    document["version"] = 9
    with pytest.raises(BackupFormatError, match="version 9"):
        restore_into_fresh_vault(keystore, tmp_path, json.dumps(document).encode())
    del document["version"], document["ciphertext"]
    document["version"] = 1
    with pytest.raises(BackupFormatError, match="incomplete"):
        restore_into_fresh_vault(keystore, tmp_path, json.dumps(document).encode())


def test_backup_of_another_cluster_or_participant(
    keystore: Keystore, tmp_path: Path, backup_file: bytes
) -> None:
    with pytest.raises(ForeignBackupError, match="cluster 'cluster-test'"):
        restore_into_fresh_vault(keystore, tmp_path, backup_file, cluster_id="cluster-prod")
    with pytest.raises(ForeignBackupError, match="participant 2"):
        restore_into_fresh_vault(keystore, tmp_path, backup_file, identifier=3)


def test_altered_metadata_is_detected(
    keystore: Keystore, tmp_path: Path, backup_file: bytes
) -> None:
    document = json.loads(backup_file)
    document["metadata"]["created"] = "2020-01-01T00:00:00+00:00"
    with pytest.raises(WrongPassphraseError, match="altered"):
        restore_into_fresh_vault(keystore, tmp_path, json.dumps(document).encode())
    # An altered key package is no longer the key the node holds: refused before decryption.
    document = json.loads(backup_file)
    document["metadata"]["threshold"] = 3
    with pytest.raises(UnknownKeyError, match="other threshold"):
        restore_into_fresh_vault(keystore, tmp_path, json.dumps(document).encode())


def test_wrong_recovery_key(keystore: Keystore, tmp_path: Path) -> None:
    vault = ShareVault(tmp_path / "keys")
    share = dealer_keys()["attestation"][1]
    record = vault.store(keystore, share, CLUSTER, "node-1", "attestation")
    _, intended = generate_recovery_key()
    other_pem, _ = generate_recovery_key()
    data = create_backup(record, share, intended, "2026-11-21T00:00:00+00:00")
    assert read_backup(data).protection["recipient"] == intended.public.hex()
    with pytest.raises(WrongPassphraseError, match="encrypted to recovery key"):
        read_backup(data).unlock(load_recovery_key(other_pem))
    with pytest.raises(WrongPassphraseError, match="not a passphrase"):
        read_backup(data).unlock(PASSPHRASE)


def test_a_good_record_is_kept_and_one_that_does_not_open_is_sealed_again(
    hsm_config: HsmConfig, tmp_path: Path
) -> None:
    other = second_token(hsm_config, "node-2")  # before any session: it re-initialises
    vault = ShareVault(tmp_path / "node-2" / "keys")
    with Keystore.open(hsm_config) as keystore:
        vault.store(keystore, DEALT[2], CLUSTER, "node-2", "custody")  # sealed by node-1's token
        backup_file = create_backup(
            vault.load("custody"), DEALT[2], PASSPHRASE, "2026-11-21T00:00:00+00:00"
        )
    path = vault.directory / "custody.json"
    with Keystore.open(other) as keystore:
        with pytest.raises(SealedBlobError):
            vault.open(keystore, "custody")
        # The record does not open under this token: the restore seals the share again.
        restore_backup(
            vault, keystore, backup_file, PASSPHRASE, CLUSTER, "node-2", 2, knows_custody
        )
        assert vault.open(keystore, "custody").signing_share.reveal() == (
            DEALT[2].signing_share.reveal()
        )
        # Now it is good: restoring the same backup again writes nothing.
        before = path.stat()
        restore_backup(
            vault, keystore, backup_file, PASSPHRASE, CLUSTER, "node-2", 2, knows_custody
        )
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
