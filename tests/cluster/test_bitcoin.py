"""A cluster with bitcoind configured: every node derives the same deposit address on its
own, reports its bitcoind's state, and signs nothing while its bitcoind is not synced."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.regtest.harness import RegtestProcess
from tools.devcluster import DevCluster

from .conftest import on_all, run_dkg


@pytest.fixture
def bitcoind(tmp_path: Path) -> Iterator[RegtestProcess]:
    with RegtestProcess(tmp_path / "bitcoind") as node:
        node.call("generatetoaddress", 101, node.call("getnewaddress"))
        yield node


def section(node: RegtestProcess) -> dict[str, object]:
    return {
        "network": "regtest",
        "rpc_url": node.rpc_url,
        "cookie_file": str(node.cookie_path),
        "zmq_block": node.zmq_endpoint,
        "poll_seconds": 0.5,
    }


def bitcoin_states(cluster: DevCluster, wanted: str, within: float = 15.0) -> list[dict]:
    """Every node's `status.bitcoin`, once all of them report `wanted` (bounded wait)."""
    deadline = time.monotonic() + within
    while True:
        states = [node.call("status")["bitcoin"] for node in cluster.nodes.values()]
        if all(s["sync"] == wanted for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


def test_nodes_agree_on_deposit_addresses_and_stop_signing_when_bitcoind_is_not_synced(
    make_cluster, bitcoind
) -> None:
    cluster = make_cluster(bitcoind=section(bitcoind))
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    states = bitcoin_states(cluster, "synced")
    assert [s["sync"] for s in states] == ["synced"] * 3
    assert {s["view_height"] for s in states} == {101}

    answers = on_all(list(cluster.nodes.values()), "deposit-address", recipient="wire:alice")
    assert len({a["address"] for a in answers}) == 1
    address = answers[0]["address"]
    assert address.startswith("bcrt1p")
    bitcoind.call("sendtoaddress", address, "0.5")
    bitcoind.call("generatetoaddress", 1, bitcoind.call("getnewaddress"))
    with pytest.raises(Exception, match="recipient"):
        cluster[1].call("deposit-address", recipient="")

    bitcoind.call("setinitialblockdownload", True)
    states = bitcoin_states(cluster, "initial-block-download")
    assert [s["sync"] for s in states] == ["initial-block-download"] * 3
    assert "initial block download" in cluster[1].call("status")["signing_blocked"]
    cluster[2].call("test-signing", message="while syncing", coordinate=False)
    refused = cluster[1].call("test-signing", message="while syncing")
    assert refused["state"] == "failed"
    assert "bitcoind" in refused["reason"]

    bitcoind.call("setinitialblockdownload", False)
    assert [s["sync"] for s in bitcoin_states(cluster, "synced")] == ["synced"] * 3
    cluster[2].call("test-signing", message="synced again", coordinate=False)
    assert cluster[1].call("test-signing", message="synced again")["state"] == "completed"
    # Each node's custody output set: the deposit, seen by every node from its own view.
    assert {s["custody_sats"] for s in bitcoin_states(cluster, "synced")} == {50_000_000}
