"""Lying and hostile peers: equivocation, bad shares, and garbage on the wire. Every honest
node names the culprit from signed evidence; garbage is refused, audited, and harmless."""

from __future__ import annotations

import time

import pkcs11
import zmq

from appliance.mesh.envelope import seal_envelope
from hsm.config import SOFTHSM_MODULE, HsmConfig, SecretSource
from hsm.keystore import Keystore
from tools.devcluster import wait_until

from .conftest import run_dkg


def blamed_by(node, ceremony_id: str) -> set[int]:
    return {b["participant"] for b in node.call("ceremony", ceremony_id=ceremony_id)["blame"]}


def test_an_equivocating_dealer_is_named_by_every_honest_node(make_cluster, journal) -> None:
    cluster = make_cluster(3, 2, round_timeout=2.0, faults={3: "equivocate"})
    results = run_dkg(cluster)
    for node, result in zip((cluster[1], cluster[2]), results[:2], strict=True):
        assert result["state"] == "failed", result
        assert [b["participant"] for b in result["blamed"]] == [3]
        assert "different round-1 packages" in result["blamed"][0]["reason"]
        assert blamed_by(node, "dkg-1") == {3}
        records = journal.wait_for(
            WIRE_EVENT="ceremony.blame", WIRE_PARTICIPANT=3, _PID=node.process.pid
        )
        assert records, f"no audit record of the blame on {node.node_id}"


def test_a_dealer_of_a_bad_share_is_named_by_every_honest_node(make_cluster) -> None:
    cluster = make_cluster(3, 2, round_timeout=2.0, faults={3: "bad-dkg-share"})
    results = run_dkg(cluster)
    for node, result in zip((cluster[1], cluster[2]), results[:2], strict=True):
        assert result["state"] == "failed", result
        assert [b["participant"] for b in result["blamed"]] == [3]
        assert "does not match its commitment" in result["blamed"][0]["reason"]
        assert blamed_by(node, "dkg-1") == {3}


def test_a_bad_signature_share_is_named_and_signing_succeeds_without_it(
    make_cluster, journal
) -> None:
    cluster = make_cluster(3, 2, round_timeout=2.0, faults={2: "bad-signature-share"})
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    for i in (2, 3):
        cluster[i].call("test-signing", message="blame me", coordinate=False)
    result = cluster[1].call("test-signing", message="blame me")
    assert result["state"] == "completed", result
    assert result["signers"] == [1, 3]
    assert [b["participant"] for b in result["blamed"]] == [2]
    # Node 3 checked the coordinator's evidence itself and names node 2 as well.
    wait_until(lambda: blamed_by(cluster[3], result["ceremony"]) == {2}, 5, "node 3 blames 2")
    assert blamed_by(cluster[3], result["ceremony"]) == {2}
    assert blamed_by(cluster[1], result["ceremony"]) == {2}
    for node in (cluster[1], cluster[3]):
        assert journal.wait_for(
            WIRE_EVENT="ceremony.blame", WIRE_PARTICIPANT=2, _PID=node.process.pid
        )


class Impostor:
    """Node 3's keys in the hands of an attacker: its CURVE key and its HSM identity."""

    def __init__(self, node, monkeypatch) -> None:
        monkeypatch.setenv("SOFTHSM2_CONF", str(node.root / "softhsm2.conf"))
        pkcs11.lib(str(SOFTHSM_MODULE)).reinitialize()
        credentials = node.root / "credentials"
        self.keystore = Keystore.open(
            HsmConfig(
                token_label=node.node_id,
                pin=SecretSource("unused", credentials / "hsm-pin"),
            )
        )
        self.curve_secret = (credentials / "curve-secret-key").read_text().strip().encode()
        self.curve_public = zmq.curve_public(self.curve_secret)
        self.context = zmq.Context()
        self.sequence = time.time_ns() // 1000 + 10**9

    def connect(self, target, secret: bytes | None = None, public: bytes | None = None):
        socket = self.context.socket(zmq.DEALER)
        socket.curve_secretkey = secret or self.curve_secret
        socket.curve_publickey = public or self.curve_public
        socket.curve_serverkey = target.party_curve_key.encode()
        socket.linger = 1000
        socket.connect(f"tcp://127.0.0.1:{target.port}")
        return socket

    def envelope(self, cluster_id: str, round_name: str, payload: bytes, sender: int = 3) -> bytes:
        self.sequence += 1
        return seal_envelope(
            cluster_id, "attack", round_name, sender, self.sequence, payload, self.keystore.sign
        )

    def close(self) -> None:
        self.keystore.close()
        self.context.destroy(linger=1000)


def test_garbage_on_the_wire_is_refused_audited_and_harmless(
    make_cluster, journal, monkeypatch
) -> None:
    cluster = make_cluster(3, 2)
    run_dkg(cluster)
    cluster.stop([3])
    target = cluster[1]
    target.party_curve_key = cluster[1].curve_public
    impostor = Impostor(cluster[3], monkeypatch)
    try:
        socket = impostor.connect(target)
        cid = cluster.cluster_id
        valid = impostor.envelope(cid, "dkg.round1", b"{}")
        unsigned = valid[:-64] + bytes(64)
        sends = {
            "malformed": b"\x01\x05wire",
            "unknown-version": b"\x07" + valid[1:],
            "foreign-cluster": impostor.envelope("someone-else", "dkg.round1", b"{}"),
            "bad-signature": unsigned,
            "impersonation": impostor.envelope(cid, "dkg.round1", b"{}", sender=2),
            "oversized": impostor.envelope(cid, "dkg.round1", b"x" * (5 << 20)),
            "unknown-ceremony": impostor.envelope(cid, "sign.share.1", b"{}"),
        }
        for data in sends.values():
            socket.send(data)
        replay = impostor.envelope(cid, "dkg.round1", b"{}")
        socket.send(replay)
        socket.send(replay)
        sends["replayed"] = replay

        # An unknown CURVE key does not even get a connection.
        stranger_public, stranger_secret = zmq.curve_keypair()
        stranger = impostor.connect(target, stranger_secret, stranger_public)
        stranger.send(b"hello")

        pid = target.process.pid
        for reason in sends:
            assert journal.wait_for(
                WIRE_EVENT="mesh.message-rejected", WIRE_REASON=reason, _PID=pid
            ), f"no audit record for a {reason} message"
        refused = journal.wait_for(WIRE_EVENT="mesh.connection-refused", _PID=pid)
        assert any(r["WIRE_CURVE_KEY"] == stranger_public.decode() for r in refused)
    finally:
        impostor.close()

    # The node kept working through all of it.
    report = target.call("test-communication")["peers"]
    assert report["node-2"]["authenticated"]
    cluster[2].call("test-signing", message="still here", coordinate=False)
    assert target.call("test-signing", message="still here")["state"] == "completed"


def test_a_replay_after_the_receivers_restart_is_refused(
    make_cluster, journal, monkeypatch
) -> None:
    cluster = make_cluster(3, 2)
    cluster.stop([3])
    target = cluster[1]
    target.party_curve_key = cluster[1].curve_public
    impostor = Impostor(cluster[3], monkeypatch)
    try:
        captured = impostor.envelope(cluster.cluster_id, "sign.share.1", b"{}")
        socket = impostor.connect(target)
        socket.send(captured)
        first_pid = target.process.pid
        assert journal.wait_for(
            WIRE_EVENT="mesh.message-rejected", WIRE_REASON="unknown-ceremony", _PID=first_pid
        )
        socket.close(linger=0)
        target.stop()
        target.start()
        target.wait_ready(time.monotonic() + 30)
        socket = impostor.connect(target)
        socket.send(captured)  # the same bytes, to a node that has restarted since
        assert journal.wait_for(
            WIRE_EVENT="mesh.message-rejected", WIRE_REASON="replayed", _PID=target.process.pid
        )
    finally:
        impostor.close()
