"""Crashes in the middle of ceremonies: kill -9 during signing and during a DKG, and a
restart that must never reuse a nonce."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from appliance.control import EngineError
from appliance.mesh.envelope import open_envelope
from tools.devcluster import wait_until

from .conftest import on_all, run_dkg


def approve(cluster, message: str, nodes) -> None:
    for i in nodes:
        assert cluster[i].call("test-signing", message=message, coordinate=False)["approved"]


def wait_dead(node, within: float = 10.0) -> int:
    wait_until(lambda: node.process.poll() is not None, within, f"{node.node_id} exits")
    return int(node.process.poll())


def test_kill_9_of_a_signer_during_signing(make_cluster) -> None:
    """Node 2 (the preferred signer) dies by SIGKILL on receiving the package, after it
    committed: the coordinator times it out and completes with node 3."""
    cluster = make_cluster(3, 2, round_timeout=2.0, faults={2: "die-on-package"})
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    approve(cluster, "payout check", [2, 3])
    result = cluster[1].call("test-signing", message="payout check")
    assert wait_dead(cluster[2]) == -9
    assert result["state"] == "completed", result
    assert result["signers"] == [1, 3]
    assert result["attempts"] == 2
    assert result["missing"] == [2]


def test_kill_9_during_a_3_of_5_dkg_names_the_node_and_the_dkg_can_be_rerun(make_cluster):
    cluster = make_cluster(5, 3, round_timeout=2.0, faults={5: "die-after-round1"})
    honest = [cluster[i] for i in range(1, 5)]
    with pytest.raises((EngineError, OSError)):
        cluster[5].call("dkg", ceremony_id="dkg-1", within=30)
    results = on_all(honest, "dkg", ceremony_id="dkg-1")
    assert wait_dead(cluster[5]) == -9
    for result in results:
        assert result["state"] == "failed", result
        assert result["missing"] == [5]
    assert all(node.call("key-info")["keys"] == {} for node in honest)

    cluster[5].stop()
    cluster[5].start()  # the honest daemon this time
    cluster[5].wait_ready(time.monotonic() + 30)
    assert cluster[5].call("ceremony", ceremony_id="dkg-1")["state"] == "abandoned"
    rerun = run_dkg(cluster, "dkg-2")
    assert all(r["state"] == "completed" for r in rerun), rerun
    assert len({json.dumps(r["keys"], sort_keys=True) for r in rerun}) == 1


def commitments_sent_by(database, sender: int) -> list[str]:
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT envelope FROM transcript WHERE sender = ? AND round LIKE 'sign.commit.%'",
            (sender,),
        ).fetchall()
    pairs = []
    for (raw,) in rows:
        envelope = open_envelope(bytes(raw))
        pairs += [a + b for a, b in json.loads(envelope.payload)["commitments"]]
    return pairs


def test_a_restarted_node_never_reuses_a_nonce(make_cluster) -> None:
    cluster = make_cluster(3, 2, round_timeout=2.0, faults={2: "die-on-package"})
    run_dkg(cluster)
    approve(cluster, "before the crash", [2, 3])
    first = cluster[1].call("test-signing", message="before the crash")
    assert first["state"] == "completed"
    assert first["missing"] == [2]
    wait_dead(cluster[2])
    cluster[2].start()
    cluster[2].wait_ready(time.monotonic() + 30)
    assert cluster[2].call("ceremony", ceremony_id=first["ceremony"])["state"] == "abandoned"

    for n in range(3):
        message = f"after the crash {n}"
        approve(cluster, message, [2])
        result = cluster[1].call("test-signing", message=message)
        assert result["state"] == "completed", result
        assert result["signers"] == [1, 2]

    # Every commitment node 2 ever sent, as node 2 recorded it and as node 1 received it.
    sent = commitments_sent_by(cluster[2].data_dir / "state.db", 2)
    received = commitments_sent_by(cluster[1].data_dir / "state.db", 2)
    assert len(sent) == 4 * 2  # one ceremony before the crash, three after; two keys each
    assert sorted(sent) == sorted(received)
    assert len(set(sent)) == len(sent), "a nonce commitment was reused"
