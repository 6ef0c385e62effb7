"""Restoring a key share through a running engine: only this node's share of a key its own
DKG made goes back into its vault; an operator's own key, another participant's share, a
tampered share or another cluster's backup is refused before anything is written."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import sqlite3
import time

import pkcs11
import pytest

from appliance.control import EngineError
from appliance.frost import SECP256K1_TR, KeyShare, SecretScalar, trusted_dealer_keygen
from hsm.backup import Passphrase, create_backup
from hsm.config import SOFTHSM_MODULE, HsmConfig, SecretSource
from hsm.keystore import Keystore
from hsm.vault import ShareRecord, ShareVault
from tests.cluster.test_bitcoin import bitcoin_states, bitcoind
from tools.devcluster import DevCluster, DevNode

from .conftest import run_dkg

__all__ = ["bitcoind"]  # the fixture, shared with test_bitcoin

PASSPHRASE = "an operator's backup passphrase"


def vault_files(node: DevNode) -> dict[str, str]:
    """Every file under the node's vault directory, by name, with a digest of its bytes."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((node.data_dir / "keys").iterdir())
    }


def backup(record: ShareRecord, share: KeyShare) -> str:
    """A validly encrypted backup of `share` under PASSPHRASE, as the engine takes it."""
    data = create_backup(record, share, Passphrase(PASSPHRASE), "2026-11-21T00:00:00Z")
    return base64.b64encode(data).decode()


def restore(node: DevNode, data: str) -> dict:
    return node.call("restore-key-share", backup=data, passphrase=PASSPHRASE)


def refused(node: DevNode, data: str) -> EngineError:
    with pytest.raises(EngineError) as caught:
        restore(node, data)
    return caught.value


def node_keystore(node: DevNode, monkeypatch: pytest.MonkeyPatch) -> Keystore:
    """The node's own token, opened by the test (with the node stopped)."""
    monkeypatch.setenv("SOFTHSM2_CONF", str(node.root / "softhsm2.conf"))
    pkcs11.lib(str(SOFTHSM_MODULE)).reinitialize()
    return Keystore.open(
        HsmConfig(
            token_label=node.node_id,
            pin=SecretSource("unused", node.root / "credentials" / "hsm-pin"),
        )
    )


def node_share(
    node: DevNode, monkeypatch: pytest.MonkeyPatch, record_name: str = "custody-1"
) -> tuple[ShareRecord, int]:
    """The node's vault record of a key and its share's value, read from its own token
    (the node is stopped for it)."""
    vault = ShareVault(node.data_dir / "keys")
    with node_keystore(node, monkeypatch) as keystore:
        share = vault.open(keystore, record_name)
        value = share.signing_share.reveal()
        share.wipe()
    return vault.load(record_name), value


def test_a_restore_takes_back_only_this_nodes_share_of_its_own_key(
    make_cluster, bitcoind, journal, monkeypatch
) -> None:
    cluster: DevCluster = make_cluster(bitcoind=bitcoind)
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    cluster.stop([1, 2])
    own_record, own_value = node_share(cluster[1], monkeypatch)
    other_record, other_value = node_share(cluster[2], monkeypatch)
    attestation_record, attestation_value = node_share(cluster[1], monkeypatch, "attestation-1")
    cluster.start([1, 2])
    bitcoin_states(cluster, "synced")
    node = cluster[1]
    key_info = node.call("key-info")
    keys = node.call("status")["keys"]
    address = node.call("deposit-address", recipient="wire:alice")["address"]
    files = vault_files(node)
    public = own_record.public

    # The attack as found: an operator's own FROST key, named custody-0 (a lower epoch than
    # the DKG's), in a valid backup of this cluster and participant.
    shares, _ = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    own_key = ShareRecord(cluster.cluster_id, node.node_id, "custody-0", 1, shares[1].public, b"")
    error = refused(node, backup(own_key, shares[1]))
    assert error.code == "unknown-key"
    assert "holds no custody key of epoch 0" in str(error)
    # The same key under the DKG key's own name: not the package this node recorded.
    as_epoch_1 = dataclasses.replace(own_key, key_name="custody-1")
    error = refused(node, backup(as_epoch_1, shares[1]))
    assert error.code == "unknown-key"
    assert "other group key, verifying shares" in str(error)
    # Names that are not <key>-<epoch>: refused by name, no stray file.
    for name in ("custody", "custody-01", "custody-x", "wallet-1", "custody--1"):
        record = ShareRecord(cluster.cluster_id, node.node_id, name, 1, shares[1].public, b"")
        error = refused(node, backup(record, shares[1]))
        assert error.code == "unknown-key", name
        assert "is not <key>-<epoch>" in str(error)
    # Node 2's real share: another participant's.
    error = refused(node, backup(other_record, KeyShare(2, SecretScalar(other_value), public)))
    assert error.code == "foreign-backup"
    assert "participant 2" in str(error)
    # Node 2's real share labelled as participant 1's, and node 1's share altered by one.
    relabelled = ShareRecord(cluster.cluster_id, node.node_id, "custody-1", 1, public, b"")
    error = refused(node, backup(relabelled, KeyShare(1, SecretScalar(other_value), public)))
    assert error.code == "share-mismatch"
    tampered = KeyShare(1, SecretScalar((own_value + 1) % SECP256K1_TR.group.order), public)
    assert refused(node, backup(relabelled, tampered)).code == "share-mismatch"
    # A backup of another cluster.
    foreign = ShareRecord("another-cluster", node.node_id, "custody-1", 1, public, b"")
    error = refused(node, backup(foreign, KeyShare(1, SecretScalar(own_value), public)))
    assert error.code == "foreign-backup"

    # Nothing changed: the vault's files, the keys, and the deposit address.
    assert vault_files(node) == files
    assert node.call("key-info") == key_info
    assert node.call("status")["keys"] == keys
    assert node.call("deposit-address", recipient="wire:alice")["address"] == address
    assert cluster[2].call("deposit-address", recipient="wire:alice")["address"] == address
    records = journal.wait_for(WIRE_EVENT="key.restore", _PID=node.process.pid)
    reasons = {r["WIRE_REASON"] for r in records}
    assert reasons == {"unknown-key", "foreign-backup", "share-mismatch"}
    assert all(r["WIRE_OUTCOME"] == "refused" for r in records)

    # The good path: this node's own share, after its sealed record was lost.
    good = backup(own_record, KeyShare(1, SecretScalar(own_value), public))
    (node.data_dir / "keys" / "custody-1.json").unlink()
    answer = restore(node, good)
    assert answer == {"key": "custody", "epoch": 1, "fingerprint": public.fingerprint}
    assert vault_files(node).keys() == files.keys()
    again = vault_files(node)
    assert restore(node, good) == answer  # restoring the same share again writes nothing
    assert vault_files(node) == again
    assert signs_custody(cluster, "after a restore")["state"] == "completed"
    assert node.call("key-info") == key_info

    # A record of another key put into the vault some other way (sealed with the node's own
    # token) is not used; a restore replaces it with the node's own share. And a key
    # recorded before the store kept verifying shares cannot be checked: refused.
    node.stop()
    plant_record(node, shares[1], monkeypatch)
    with sqlite3.connect(node.data_dir / "state.db") as db:
        db.execute("UPDATE keys SET verifying_shares = NULL WHERE name = 'attestation'")
    node.start()
    node.wait_ready(time.monotonic() + 30)
    result = signs_custody(cluster, "with a planted record")
    assert result["state"] == "failed"
    assert f"holds key {shares[1].public.fingerprint}, not the key" in result["reason"]
    assert restore(node, good) == answer
    assert signs_custody(cluster, "with the share restored")["state"] == "completed"
    share = KeyShare(1, SecretScalar(attestation_value), attestation_record.public)
    error = refused(node, backup(attestation_record, share))
    assert error.code == "unknown-key"
    assert "recorded before this node kept its verifying shares" in str(error)


def signs_custody(cluster: DevCluster, message: str) -> dict:
    cluster[2].call("test-signing", message=message, keys=["custody"], coordinate=False)
    return cluster[1].call("test-signing", message=message, keys=["custody"])


def plant_record(node: DevNode, share: KeyShare, monkeypatch: pytest.MonkeyPatch) -> None:
    with node_keystore(node, monkeypatch) as keystore:
        vault = ShareVault(node.data_dir / "keys")
        vault.store(keystore, share, node.cluster.cluster_id, node.node_id, "custody-1", True)


def test_a_restore_never_writes_where_the_store_knows_no_key(make_cluster) -> None:
    """Before any DKG (or on a node whose store was lost) no backup is taken back."""
    cluster: DevCluster = make_cluster()
    node = cluster[1]
    shares, _ = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    record = ShareRecord(cluster.cluster_id, node.node_id, "custody-1", 1, shares[1].public, b"")
    error = refused(node, backup(record, shares[1]))
    assert error.code == "unknown-key"
    assert "holds no custody key of epoch 1" in str(error)
    assert vault_files(node) == {}
    assert node.call("status")["keys"] == {}
