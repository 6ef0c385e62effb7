"""A peer floods a node with validly signed large envelopes: for ceremonies the node never
consented to, for signing ceremonies it joined (rounds they do not run, rounds beyond their
attempts, conflicting copies) and more ceremonies than it joins; or, as a party, into the
DKG it takes part in. The node refuses and audits what it does not take, holds at most
its budget for that peer, keeps its resident memory (VmHWM of the real wire-mpcd) within a
stated bound, and its ceremonies with the honest nodes complete meanwhile."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from appliance.ceremony import requests
from appliance.ceremony.base import canonical
from appliance.engine import JOINED_PER_PEER, PEER_BUDGET, PENDING_PER_PEER
from appliance.mesh.envelope import seal_envelope
from appliance.workflows.payouts import APPROVAL_ROUND, UNKNOWN_APPROVALS_PER_PEER
from tests.cluster.flooding_node import FLOOD_DONE
from tests.cluster.test_attacks import Impostor
from tools.devcluster import DevCluster, DevNode, wait_until

from .conftest import run_dkg

MIB = 1 << 20
BIG = 2 * MIB  # each large envelope's payload, half the mesh's limit
GROWTH_BOUND = PEER_BUDGET + 64 * MIB
"""How far node 1's peak resident memory may rise above where it was before the flood:
one peer's budget, plus what is in flight (libzmq reads ahead up to 16 messages of the
connection, and an envelope is copied a few times while its signature is checked). The
first flood sends about 130 MiB: here the engine rose by about 50 MiB; before peers had a
budget and ceremonies took only their own rounds, by about 280 MiB."""


def memory_mib(node: DevNode) -> tuple[int, int]:
    """(VmRSS, VmHWM) of the node's wire-mpcd process, in MiB."""
    assert node.process is not None
    lines = Path(f"/proc/{node.process.pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines)
    return int(status["VmRSS"].split()[0]) // 1024, int(status["VmHWM"].split()[0]) // 1024


class Flooder:
    """Node 3's keys, sending envelopes of any ceremony, round and size to node 1."""

    def __init__(self, cluster: DevCluster, monkeypatch: Any) -> None:
        self.cluster_id = cluster.cluster_id
        self.impostor = Impostor(cluster[3], monkeypatch)
        target = cluster[1]
        target.party_curve_key = target.curve_public
        self.socket = self.impostor.connect(target)
        self.sent = 0

    def send(self, ceremony: str, round_name: str, payload: bytes) -> None:
        self.impostor.sequence += 1
        sequence = self.impostor.sequence
        sign = self.impostor.keystore.sign
        data = seal_envelope(self.cluster_id, ceremony, round_name, 3, sequence, payload, sign)
        self.socket.send(data)
        self.sent += len(payload)

    def close(self) -> None:
        self.socket.close(linger=1000)
        self.impostor.close()


def large(tag: int) -> bytes:
    return tag.to_bytes(4, "big") * (BIG // 4)


def test_a_flooding_peer_is_held_to_its_budget_while_honest_signing_goes_on(
    make_cluster, journal, monkeypatch
) -> None:
    cluster = make_cluster(3, 2, round_timeout=4.0)
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    node = cluster[1]
    signings: list[dict[str, Any]] = []

    def sign(message: str) -> None:
        cluster[2].call("test-signing", message=message, coordinate=False)
        signings.append(node.call("test-signing", message=message, signers=[1, 2]))

    sign("before the flood")
    cluster.stop([3])
    # A request node 1's operator approved, so node 1 joins the flooder's signing
    # ceremonies and waits in them for the package.
    node.call("test-signing", message="flood", keys=["attestation"], coordinate=False)
    no_custody: Any = None  # an attestation-only request needs no custody key
    request = requests.test_signing_request(no_custody, [b"flood"], ["attestation"])
    request_payload = canonical({"request": request.to_json()})
    rss_before, _ = memory_mib(node)
    flooder = Flooder(cluster, monkeypatch)
    honest = threading.Thread(target=lambda: [sign(f"during the flood {i}") for i in range(3)])
    try:
        honest.start()
        # Signing ceremonies node 1 joins, more than it joins for one peer; a package
        # larger than any package of this cluster into the first.
        joined = [f"joined-{j}" for j in range(JOINED_PER_PEER + 2)]
        for ceremony in joined:
            flooder.send(ceremony, "sign.request.1", request_payload)
        flooder.send(joined[0], "sign.package.2", large(0))
        flooder.send(joined[1], "sign.request.2", b"not a request")  # ends that ceremony
        # Ceremonies node 1 never consented to: large round-1 envelopes, and more of them
        # than it holds for one peer.
        for i in range(16):
            flooder.send(f"unconsented-big-{i}", "dkg.round1", large(i))
        for i in range(3 * PENDING_PER_PEER):
            flooder.send(f"unconsented-{i}", "dkg.round1", b"{}" + b" " * 8000)
        flooder.send("unconsented-0", "dkg.echo", b"{}")
        flooder.send("", "mesh.ping", large(0))  # a pong would echo it back
        # Into each joined ceremony: large requests of a later attempt (held until read)
        # and conflicting copies of them, rounds a participant never takes and an attempt
        # beyond the last.
        for ceremony in joined[:JOINED_PER_PEER]:
            for round_name, tag in [
                ("sign.request.3", 1),
                ("sign.request.3", 2),
                ("sign.request.3", 3),
                ("sign.share.1", 5),
                ("sign.junk", 6),
                ("sign.request.9", 7),
            ]:
                flooder.send(ceremony, round_name, large(tag))
        honest.join(timeout=120)
        # The joined ceremonies end when no package comes (three rounds): by then node 1
        # has taken in the whole flood.
        wait_until(lambda: not node.call("status")["open_ceremonies"], 30, "ceremonies ended")
    finally:
        flooder.close()
    assert flooder.sent > 128 * MIB
    _, peak = memory_mib(node)
    assert peak - rss_before <= GROWTH_BOUND // MIB, (rss_before, peak)
    pid = node.process.pid
    reasons = "oversized unsolicited unknown-ceremony too-many-ceremonies conflicting"
    for reason in (reasons + " unexpected-round over-budget malformed").split():
        assert journal.wait_for(WIRE_EVENT="mesh.message-rejected", WIRE_REASON=reason, _PID=pid), (
            f"no audit record of a refusal for {reason}"
        )
    details = [
        r["WIRE_DETAIL"] for r in journal.records(WIRE_EVENT="mesh.message-rejected", _PID=pid)
    ]
    for detail in [
        "sign.package.2 of 2097152 bytes",
        "mesh.ping of 2097152 bytes",
        "(kept as evidence)",
        "dkg.round1 of 2097152 bytes",
    ]:
        assert any(detail in d for d in details), detail
    ended = node.call("ceremony", ceremony_id="joined-1")
    assert ended["state"] == "failed"
    assert ended["blame"][0]["participant"] == 3
    assert "sent a malformed request" in ended["blame"][0]["reason"]
    assert [s["state"] for s in signings] == ["completed"] * 4, signings
    sign("after the flood")
    assert signings[-1]["state"] == "completed"


def test_a_dkg_completes_while_a_party_floods_a_node(make_cluster, journal) -> None:
    """Node 3 takes part in the DKG honestly and floods node 1 meanwhile (its own keys,
    its own sequence: nothing of it is a replay)."""
    cluster = make_cluster(3, 2, round_timeout=4.0, start=False)
    for i in (1, 2):
        cluster[i].start()
    cluster[3].start([sys.executable, "-m", "tests.cluster.flooding_node"])
    deadline = time.monotonic() + 60
    for node in cluster.nodes.values():
        node.wait_ready(deadline)
    node = cluster[1]
    rss_before, _ = memory_mib(node)
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    cluster[2].call("test-signing", message="while flooded", coordinate=False)
    assert node.call("test-signing", message="while flooded", signers=[1, 2])["state"] == (
        "completed"
    )
    wait_until(lambda: FLOOD_DONE in cluster[3].log_path.read_text(), 60, "the flood sent")
    wait_until(lambda: node.call("status"), 10, "node 1 answers")
    pid = node.process.pid
    for reason in ["oversized", "unexpected-round", "conflicting"]:
        assert journal.wait_for(WIRE_EVENT="mesh.message-rejected", WIRE_REASON=reason, _PID=pid), (
            f"no audit record of a refusal for {reason}"
        )
    _, peak = memory_mib(node)
    assert peak - rss_before <= GROWTH_BOUND // MIB, (rss_before, peak)


def test_approvals_of_unknown_burns_are_bounded_and_bad_ones_refused(
    make_cluster, journal, monkeypatch
) -> None:
    """Approvals may come before the burn's feed entry, so a node keeps some for burns it
    does not hold: at most a fixed number per peer, not whatever a peer sends."""
    cluster = make_cluster(3, 2)
    cluster.stop([3])
    flooder = Flooder(cluster, monkeypatch)
    try:
        for i in range(UNKNOWN_APPROVALS_PER_PEER + 20):
            body = {"burn_id": f"burn-{i}", "approver": 3, "signature": "00" * 64}
            flooder.send(f"approval-{i}", APPROVAL_ROUND, canonical(body))
        pid = cluster[1].process.pid if cluster[1].process else 0
        refused = journal.wait_for(
            WIRE_EVENT="mesh.message-rejected", WIRE_REASON="over-budget", _PID=pid
        )
        assert refused, "approvals beyond the bound were not refused"
    finally:
        flooder.close()
    db = cluster[1].data_dir / "state.db"
    held = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
        "SELECT COUNT(*) FROM burn_approvals WHERE approver = 3"
    )
    assert held.fetchone()[0] == UNKNOWN_APPROVALS_PER_PEER
