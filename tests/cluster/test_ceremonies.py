"""A local cluster as operators will use it: DKG of both keys, signing with any t of n,
key rotation; every signature checked by verifiers that share no code with the engine."""

from __future__ import annotations

import hashlib

import pytest
from coincurve import PublicKeyXOnly
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .conftest import on_all, run_dkg


def tagged(tag: str, data: bytes) -> bytes:
    prefix = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(prefix + prefix + data).digest()


def verify_test_signatures(key_info: dict, message: bytes, signatures: list[str]) -> None:
    """Check the two test-signing signatures with OpenSSL's Ed25519 and libsecp256k1."""
    attestation_key = bytes.fromhex(key_info["keys"]["attestation"][-1]["group_key"])
    Ed25519PublicKey.from_public_bytes(attestation_key).verify(
        bytes.fromhex(signatures[0]), b"wire-mpc test-signing v1\0" + message
    )
    internal = bytes.fromhex(key_info["keys"]["custody"][-1]["group_key"])[1:]
    output_key = PublicKeyXOnly(internal)
    output_key.tweak_add(tagged("TapTweak", internal))  # BIP341, no script path
    digest = tagged("wire-mpc/test-signing", message)
    assert output_key.verify(bytes.fromhex(signatures[1]), digest)


@pytest.mark.parametrize(("parties", "threshold"), [(3, 2), (5, 3)])
def test_dkg_then_test_signing(make_cluster, parties: int, threshold: int) -> None:
    cluster = make_cluster(parties, threshold)
    results = run_dkg(cluster)
    assert all(r["state"] == "completed" for r in results), results
    assert all(r["sealed_by"] == list(range(1, parties + 1)) for r in results)
    infos = on_all(list(cluster.nodes.values()), "key-info")
    keys = {
        (k, v[0]["group_key"], v[0]["fingerprint"]) for i in infos for k, v in i["keys"].items()
    }
    # Every node reports the same two group keys, to be compared out of band.
    assert len(keys) == 2
    assert all(v[0]["state"] == "active" for i in infos for v in i["keys"].values())

    message = b"launch check"
    signers = list(range(2, threshold + 1))
    for i in signers:
        assert cluster[i].call("test-signing", message="launch check", coordinate=False)["approved"]
    result = cluster[1].call("test-signing", message="launch check")
    assert result["state"] == "completed", result
    assert result["signers"] == [1, *signers]
    verify_test_signatures(infos[0], message, result["signatures"])

    # A requested signer set is honoured even when other signers would be preferred.
    if parties == 3:
        cluster[3].call("test-signing", message="chosen signers", coordinate=False)
        cluster[2].call("test-signing", message="chosen signers", coordinate=False)
        chosen = cluster[1].call("test-signing", message="chosen signers", signers=[1, 3])
        assert chosen["state"] == "completed", chosen
        assert chosen["signers"] == [1, 3]

    # A node whose operator did not approve the message declines; below t, nothing is signed.
    refused = cluster[1].call("test-signing", message="not approved elsewhere")
    assert refused["state"] == "failed"
    assert "declined" in refused["reason"] or "threshold" in refused["reason"]


def test_test_communication_reports_every_peer(make_cluster) -> None:
    cluster = make_cluster(3, 2)
    report = cluster[2].call("test-communication")["peers"]
    assert set(report) == {"node-1", "node-3"}
    for peer in report.values():
        assert peer["reachable"]
        assert peer["authenticated"]
        assert peer["curve_handshake"]
        assert 0 < peer["round_trip_ms"] < 1000
    cluster.stop([3])
    report = cluster[2].call("test-communication", timeout=1.0)["peers"]
    assert report["node-3"]["authenticated"] is False
    assert report["node-3"]["round_trip_ms"] is None
    assert report["node-1"]["authenticated"] is True


def test_key_rotation_keeps_the_keys_and_retires_old_shares(make_cluster) -> None:
    cluster = make_cluster(3, 2)
    run_dkg(cluster)
    before = cluster[1].call("key-info")
    old_records = sorted(p.name for p in (cluster[1].data_dir / "keys").iterdir())
    assert old_records == ["attestation-1.json", "custody-1.json"]
    results = on_all(list(cluster.nodes.values()), "key-rotation", ceremony_id="rotate-1",
                     reason="scheduled rotation")  # fmt: skip
    assert all(r["state"] == "completed" for r in results), results
    after = cluster[1].call("key-info")
    for name in ("attestation", "custody"):
        epochs = {e["epoch"]: e for e in after["keys"][name]}
        assert epochs[1]["state"] == "retired"
        assert epochs[2]["state"] == "active"
        assert epochs[2]["group_key"] == before["keys"][name][0]["group_key"]
    for node in cluster.nodes.values():
        records = sorted(p.name for p in (node.data_dir / "keys").iterdir())
        assert records == ["attestation-2.json", "custody-2.json"], node.node_id
    assert cluster[3].call("test-signing", message="after rotation", coordinate=False)
    result = cluster[1].call("test-signing", message="after rotation")
    assert result["state"] == "completed", result
    verify_test_signatures(after, b"after rotation", result["signatures"])


def test_key_rotation_without_every_confirmation_keeps_old_shares(make_cluster) -> None:
    cluster = make_cluster(3, 2)
    run_dkg(cluster)
    cluster.stop([3])
    results = on_all([cluster[1], cluster[2]], "key-rotation", ceremony_id="rotate-1",
                     reason="node 3 is down")  # fmt: skip
    assert all(r["state"] == "failed" and r["missing"] == [3] for r in results), results
    for node in (cluster[1], cluster[2]):
        records = sorted(p.name for p in (node.data_dir / "keys").iterdir())
        assert "custody-1.json" in records
        assert "attestation-1.json" in records
    assert cluster[2].call("test-signing", message="still signing", coordinate=False)
    assert cluster[1].call("test-signing", message="still signing")["state"] == "completed"
