"""Deposit → mint attestation on a local cluster, each node following its own bitcoind:
attested only once the nodes' own views count the confirmations, exactly once, in sequence,
and each attestation verifies as plain Ed25519 under the attestation group key."""

from __future__ import annotations

import contextlib
import time

import pytest

from appliance.control import EngineError
from appliance.crashpoint import CRASH_EXIT
from appliance.wire.attestation import verify
from tests.cluster.test_bitcoin import bitcoin_states, bitcoind
from tools.devcluster import DevCluster, wait_until

from .conftest import run_dkg

__all__ = ["bitcoind"]  # the fixture, shared with test_bitcoin


def views_at(cluster: DevCluster, height: int, nodes: list[int], within: float = 15.0) -> None:
    wait_until(
        lambda: all(cluster[i].call("status")["bitcoin"]["view_height"] == height for i in nodes),
        within,
        f"views of nodes {nodes} at {height}",
    )


def test_deposits_are_attested_once_after_six_confirmations(make_cluster, bitcoind) -> None:
    cluster = make_cluster(bitcoind=bitcoind)
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    bitcoin_states(cluster, "synced")
    group_key = bytes.fromhex(cluster[1].call("key-info")["keys"]["attestation"][0]["group_key"])
    # Nodes 1 and 2 watch the recipient; node 3 does not, so its own view has no deposit and
    # it refuses to sign: two of three suffice.
    for i in (1, 2):
        cluster[i].call("deposit-address", recipient="wire:alice")
    address = cluster[1].call("deposit-address", recipient="wire:alice")["address"]
    txid = bitcoind.call("sendtoaddress", address, "0.3")
    miner = bitcoind.call("getnewaddress")
    (deposit_block, *_) = bitcoind.call("generatetoaddress", 5, miner)
    views_at(cluster, 106, [1, 2])
    assert cluster[1].call("test-attestation")["state"] == "nothing-to-attest"  # 5 of 6

    bitcoind.call("generatetoaddress", 1, miner)
    views_at(cluster, 107, [1, 2])
    result = cluster[1].call("test-attestation")
    assert result["state"] == "completed", result
    (attested,) = result["attestations"]
    assert (attested["txid"], attested["amount_sats"], attested["recipient"]) == (
        txid, 30_000_000, "wire:alice"
    )  # fmt: skip
    assert (attested["block_hash"], attested["sequence"]) == (deposit_block, 0)
    checked = verify(bytes.fromhex(attested["message"]), bytes.fromhex(attested["signature"]),
                     group_key)  # fmt: skip
    assert checked.txid == txid

    # Exactly once: asking again attests nothing; the outbox holds it once.
    assert cluster[1].call("test-attestation")["state"] == "nothing-to-attest"
    outbox = cluster[1].call("attestations", after=-1)
    assert [a["sequence"] for a in outbox["attestations"]] == [0]
    assert cluster[1].call("attestations", after=0)["attestations"] == []

    # The next deposit gets the next sequence number.
    second = bitcoind.call("sendtoaddress", address, "0.2")
    bitcoind.call("generatetoaddress", 6, miner)
    views_at(cluster, 113, [1, 2])
    result = cluster[1].call("test-attestation")
    assert result["state"] == "completed", result
    assert [(a["txid"], a["sequence"]) for a in result["attestations"]] == [(second, 1)]


def test_the_lead_attests_by_itself_and_pushes_to_the_wire_system(make_cluster, bitcoind) -> None:
    from tests.wire.simulator import WireSimulator

    with WireSimulator() as wire:
        cluster = make_cluster(bitcoind=bitcoind, auto_attest=True,
                               attestation_push_url=f"{wire.url}/attestations")  # fmt: skip
        assert all(r["state"] == "completed" for r in run_dkg(cluster))
        bitcoin_states(cluster, "synced")
        info = cluster[1].call("key-info")
        group_key = bytes.fromhex(info["keys"]["attestation"][0]["group_key"])
        for node in cluster.nodes.values():
            address = node.call("deposit-address", recipient="wire:bob")["address"]
        txid = bitcoind.call("sendtoaddress", address, "0.4")
        bitcoind.call("generatetoaddress", 6, bitcoind.call("getnewaddress"))
        wait_until(lambda: wire.received_attestations, 30, "the pushed attestation")
        (pushed,) = wire.received_attestations
        attestation = verify(bytes.fromhex(pushed["message"]), bytes.fromhex(pushed["signature"]),
                             group_key)  # fmt: skip
        assert (attestation.txid, attestation.amount_sats) == (txid, 40_000_000)
        # Only the lead (node 1) coordinated: the others hold no signed attestation of their own.
        assert cluster[2].call("attestations", after=-1)["attestations"] == []


@pytest.mark.parametrize("point", ["mint.proposed", "mint.signed"])
def test_a_crash_at_any_step_attests_each_deposit_exactly_once(
    make_cluster, bitcoind, point
) -> None:
    from tests.cluster.test_payouts import commitments_are_fresh
    from tests.wire.simulator import WireSimulator

    with WireSimulator() as wire:
        cluster = make_cluster(bitcoind=bitcoind,
                               attestation_push_url=f"{wire.url}/attestations")  # fmt: skip
        assert all(r["state"] == "completed" for r in run_dkg(cluster))
        bitcoin_states(cluster, "synced")
        for node in cluster.nodes.values():
            address = node.call("deposit-address", recipient="wire:carol")["address"]
        txids = {bitcoind.call("sendtoaddress", address, amount) for amount in ("0.1", "0.2")}
        bitcoind.call("generatetoaddress", 6, bitcoind.call("getnewaddress"))
        views_at(cluster, 107, [1, 2, 3])
        coordinator = cluster[1]
        coordinator.stop()
        coordinator.start(crash_at=point)
        coordinator.wait_ready(time.monotonic() + 60)
        bitcoin_states(cluster, "synced")  # a node signs nothing before its view is synced
        with contextlib.suppress(EngineError, OSError):  # the engine dies during the command
            answer = coordinator.call("test-attestation", within=60)
            raise AssertionError(f"the engine answered instead of crashing: {answer}")
        assert coordinator.process is not None
        assert coordinator.process.wait(60) == CRASH_EXIT
        coordinator.stop()
        coordinator.start()
        coordinator.wait_ready(time.monotonic() + 60)
        views_at(cluster, 107, [1])
        wait_until(
            lambda: all(p["authenticated"] for p in coordinator.call("status")["peers"].values()),
            30,
            "peers back",
        )
        result = coordinator.call("test-attestation")
        assert result["state"] == "completed", result
        assert coordinator.call("test-attestation")["state"] == "nothing-to-attest"
        outbox = coordinator.call("attestations", after=-1)["attestations"]
        assert sorted(a["sequence"] for a in outbox) == [0, 1]
        assert {a["txid"] for a in outbox} == txids  # each deposit once, under one sequence
        wait_until(lambda: len(wire.received_attestations) >= 2, 30, "both pushes")
        pushed = [(a["sequence"], a["txid"]) for a in wire.received_attestations]
        assert sorted(pushed) == sorted((a["sequence"], a["txid"]) for a in outbox)
        commitments_are_fresh(cluster)
