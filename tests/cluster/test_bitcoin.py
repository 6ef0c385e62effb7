"""A cluster in which each node follows a bitcoind of its own (Bitcoin Core, peered over P2P
with a miner): every node derives the same deposit address on its own, reports its
bitcoind's state, and signs nothing while its bitcoind is not synced, saying why."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.bitcoind import BitcoinNetwork
from tools.devcluster import DevCluster

from .conftest import on_all, run_dkg


@pytest.fixture
def bitcoind(tmp_path: Path) -> Iterator[BitcoinNetwork]:
    """A miner at height 101; each cluster made with it gets a bitcoind per node."""
    with BitcoinNetwork(tmp_path / "bitcoin", nodes=0) as network:
        yield network


def bitcoin_states(
    cluster: DevCluster, wanted: str, within: float = 15.0, nodes: list[int] | None = None
) -> list[dict]:
    """The `status.bitcoin` of every node (or of `nodes`), once all of them report `wanted`
    (bounded wait)."""
    deadline = time.monotonic() + within
    while True:
        states = [cluster[i].call("status")["bitcoin"] for i in nodes or list(cluster.nodes)]
        if all(s["sync"] == wanted for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


def test_nodes_agree_on_deposit_addresses_and_stop_signing_when_bitcoind_is_not_synced(
    make_cluster, bitcoind
) -> None:
    cluster = make_cluster(bitcoind=bitcoind)
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    states = bitcoin_states(cluster, "synced")
    assert [s["sync"] for s in states] == ["synced"] * 3
    assert {s["view_height"] for s in states} == {101}

    answers = on_all(list(cluster.nodes.values()), "deposit-address", recipient="wire:alice")
    assert len({a["address"] for a in answers}) == 1
    address = answers[0]["address"]
    assert address.startswith("bcrt1p")
    bitcoind.call("sendtoaddress", address, "0.5")
    bitcoind.mine(1)
    with pytest.raises(Exception, match="recipient"):
        cluster[1].call("deposit-address", recipient="")

    # Node 1's bitcoind hears of two blocks by their headers only: behind, it signs nothing.
    own = bitcoind.nodes[0]
    bitcoind.isolate(own)
    for block_hash in bitcoind.mine(2):
        own.call("submitheader", bitcoind.miner.call("getblockheader", block_hash, False))
    assert bitcoin_states(cluster, "behind", nodes=[1])[0]["reason"] == (
        "bitcoind has 2 headers it has not validated"
    )
    assert "bitcoind is behind" in cluster[1].call("status")["signing_blocked"]
    cluster[2].call("test-signing", message="while behind", coordinate=False)
    refused = cluster[1].call("test-signing", message="while behind")
    assert refused["state"] == "failed"
    assert "bitcoind" in refused["reason"]

    bitcoind.rejoin(own)  # it fetches the blocks and is synced again
    assert [s["sync"] for s in bitcoin_states(cluster, "synced")] == ["synced"] * 3
    cluster[2].call("test-signing", message="synced again", coordinate=False)
    assert cluster[1].call("test-signing", message="synced again")["state"] == "completed"
    # Each node's custody output set: the deposit, seen by every node from its own view.
    assert {s["custody_sats"] for s in bitcoin_states(cluster, "synced")} == {50_000_000}

    own.stop()  # stopped: node 1 says so and refuses; the others are untouched
    (state,) = bitcoin_states(cluster, "unreachable", nodes=[1])
    assert state["reason"] == f"bitcoind is not running: it has no cookie at {own.cookie_path}"
    cluster[2].call("test-signing", message="while stopped", coordinate=False)
    refused = cluster[1].call("test-signing", message="while stopped")
    assert refused["state"] == "failed"
    assert "not running" in refused["reason"]
    assert [cluster[i].call("status")["bitcoin"]["sync"] for i in (2, 3)] == ["synced"] * 2
