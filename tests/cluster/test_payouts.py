"""Burn → withdrawal and fee consolidation on a local 2-of-3 cluster, each node following a
bitcoind of its own (Bitcoin Core, peered with a miner): burns verified by each node, paid in
one batched Taproot transaction, followed to six confirmations, replaced when stuck, reported
to the simulated Wire system; large burns wait for approvals on k nodes; the reservoir is
swept; and a burn is paid exactly once whatever point the coordinator crashes at."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from appliance.control import EngineError
from appliance.crashpoint import CRASH_EXIT
from appliance.mesh.envelope import open_envelope
from appliance.wire.burns import BurnRecord
from tests.cluster.test_bitcoin import bitcoin_states, bitcoind
from tests.wire.simulator import WireSimulator
from tools.bitcoind import BitcoinNetwork
from tools.devcluster import DevCluster, DevNode, wait_until

from .conftest import run_dkg
from .test_mint import views_at

__all__ = ["bitcoind"]  # the fixture, shared with test_bitcoin

BTC = 100_000_000


@pytest.fixture
def wire() -> Iterator[WireSimulator]:
    with WireSimulator() as simulator:
        yield simulator


def funded_cluster(
    make_cluster: Callable[..., DevCluster],
    node: BitcoinNetwork,
    wire: WireSimulator,
    deposits: tuple[str, ...] = ("1.0", "1.0"),
    **options: Any,
) -> DevCluster:
    """A cluster after its DKG whose custody key holds `deposits`, six times confirmed."""
    wire_section = {
        "burn_feed_url": wire.url,
        "burn_authority_key": wire.authority_key.hex(),
        "paid_report_url": f"{wire.url}/paid",
        "feed_poll_seconds": 0.5,
        **options.pop("wire", {}),
    }
    cluster = make_cluster(bitcoind=node, wire=wire_section, **options)
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    bitcoin_states(cluster, "synced")
    fund_genesis(cluster, node)
    for member in cluster.nodes.values():
        address = member.call("deposit-address", recipient="wire:treasury")["address"]
    for amount in deposits:
        node.call("sendtoaddress", address, amount)
    mine(node, 6)
    return cluster


def fund_genesis(cluster: DevCluster, node: BitcoinNetwork, amount: str = "0.0001") -> str:
    """The operators' first payment to the custody address: once it has the confirmations
    deposits need, it is the genesis of the payout chain (every node agrees which)."""
    return str(node.call("sendtoaddress", cluster.custody_address(), amount))


def mine(node: BitcoinNetwork, blocks: int, empty: bool = False) -> int:
    """Mines on the miner (with the nodes' transactions unless `empty`); the new height."""
    miner = node.mining_address()
    if empty:
        for _ in range(blocks):
            node.call("generateblock", miner, [])
    else:
        node.call("generatetoaddress", blocks, miner)
    return int(node.call("getblockcount"))


def settle(cluster: DevCluster, node: BitcoinNetwork, nodes: list[int] | None = None) -> None:
    views_at(cluster, int(node.call("getblockcount")), nodes or list(cluster.nodes), 30)


def payments(node: BitcoinNetwork, destination: str) -> list[tuple[str, int]]:
    """Every confirmed output paying `destination` (txid, sat), from the miner's chain."""
    paid = []
    for height in range(1, int(node.call("getblockcount")) + 1):
        block = node.call("getblock", node.call("getblockhash", height), 2)
        for tx in block["tx"]:
            for out in tx["vout"]:
                if out["scriptPubKey"].get("address") == destination:
                    paid.append((tx["txid"], round(float(out["value"]) * BTC)))
    return paid


def confirmed(member: DevNode) -> dict[str, Any] | None:
    listing = member.call("payouts")
    done = listing["withdrawals"] and listing["withdrawals"][0]["state"] == "confirmed"
    return listing if done else None


def commitments_are_fresh(cluster: DevCluster) -> None:
    """No signing nonce was used twice: every hiding commitment in any signing package any
    node recorded belongs to one ceremony attempt only."""
    seen: dict[tuple[int, str], tuple[str, str]] = {}
    for member in cluster.nodes.values():
        db = sqlite3.connect(f"file:{member.data_dir / 'state.db'}?mode=ro", uri=True)
        rows = db.execute(
            "SELECT ceremony_id, round, envelope FROM transcript WHERE round LIKE 'sign.package.%'"
        ).fetchall()
        db.close()
        for ceremony, round_name, raw in rows:
            package = json.loads(open_envelope(bytes(raw)).payload)
            for signer, pairs in package["commitments"].items():
                for hiding, _binding in pairs:
                    key = (int(signer), hiding)
                    first = seen.setdefault(key, (ceremony, round_name))
                    assert first == (ceremony, round_name), f"nonce reused: {key} in {first} "
                    f"and {(ceremony, round_name)}"


def test_burns_are_paid_in_one_batched_withdrawal_and_reported(
    make_cluster, bitcoind, wire, journal
) -> None:
    cluster = funded_cluster(make_cluster, bitcoind, wire)
    destinations = [bitcoind.call("getnewaddress") for _ in range(3)]
    for i, destination in enumerate(destinations):
        wire.burn(destination, (i + 1) * 10_000_000)
    wire.add_raw({"record": {"burn_id": "forged"}, "signature": "00" * 64})
    record = BurnRecord("forged-2", "regtest", destinations[0], 5_000_000, 99, 0).to_json()
    wire.add_raw({"record": record, "signature": wire.sign(record, key=WireSimulator().authority)})
    settle(cluster, bitcoind)

    result = cluster[1].call("test-burn")
    (withdrawal,) = result["withdrawals"]
    assert withdrawal["state"] == "broadcast", withdrawal
    assert withdrawal["payouts"] == 3
    txid = withdrawal["txid"]
    sent = bitcoind.nodes[0].call("getrawtransaction", txid, True)  # from node 1's bitcoind
    assert all(i["sequence"] < 0xFFFFFFFE for i in sent["vin"])  # it signals BIP125

    # Asking again pays nothing twice.
    again = cluster[1].call("test-burn")
    assert (again["withdrawals"], again["queued"]) == ([], 0), again

    mine(bitcoind, 6)
    settle(cluster, bitcoind)
    wait_until(lambda: len(wire.paid_reports) == 3, what="three paid reports")
    assert sorted(r["burn_id"] for r in wire.paid_reports) == ["burn-0", "burn-1", "burn-2"]
    assert {r["txid"] for r in wire.paid_reports} == {txid}
    for i, destination in enumerate(destinations):
        assert payments(bitcoind, destination) == [(txid, (i + 1) * 10_000_000)]
    for member in cluster.nodes.values():
        listing = wait_until(lambda m=member: confirmed(m), what=f"{member.node_id} confirms")
        burns = {b["burn_id"]: b for b in listing["burns"]}
        assert {b["state"] for b in burns.values()} == {"paid"}, burns
        assert "forged-2" not in burns
        pid = str(member.process.pid if member.process else 0)
        refused = journal.wait_for(WIRE_EVENT="burn.refused", _PID=pid)
        assert {r["WIRE_REASON"] for r in refused} == {"malformed", "bad-signature"}
    commitments_are_fresh(cluster)


def test_a_stuck_withdrawal_is_replaced_never_duplicated(make_cluster, bitcoind, wire) -> None:
    cluster = funded_cluster(make_cluster, bitcoind, wire,
                             bitcoind_extra={"bump_after_blocks": 2})  # fmt: skip
    destination = bitcoind.call("getnewaddress")
    wire.burn(destination, 20_000_000)
    settle(cluster, bitcoind)
    first = cluster[1].call("test-burn")["withdrawals"][0]
    assert first["state"] == "broadcast", first
    mine(bitcoind, 2, empty=True)  # blocks without the withdrawal: it is stuck
    settle(cluster, bitcoind)

    def replaced() -> dict[str, Any] | None:
        (w,) = cluster[1].call("payouts")["withdrawals"]
        done = len(w["revisions"]) == 2 and w["revisions"][1]["transaction"] is not None
        return w if done and w["revisions"][1]["txid"] in bitcoind.call("getrawmempool") else None

    withdrawal = wait_until(replaced, what="a replacement")
    original, replacement = withdrawal["revisions"]
    assert replacement["fee_rate"] > original["fee_rate"]
    mempool = bitcoind.call("getrawmempool")
    assert replacement["txid"] in mempool
    assert original["txid"] not in mempool
    mine(bitcoind, 6)
    settle(cluster, bitcoind)
    wait_until(lambda: wire.paid_reports, what="the paid report")
    assert payments(bitcoind, destination) == [(replacement["txid"], 20_000_000)]
    commitments_are_fresh(cluster)


def test_large_burns_wait_for_approvals_on_k_nodes(make_cluster, bitcoind, wire) -> None:
    cluster = funded_cluster(
        make_cluster, bitcoind, wire, deposits=("2.0",),
        policy={"approval_above_sats": 50_000_000, "approvals_required": 2,
                "max_withdrawal_sats": 150_000_000},
    )  # fmt: skip
    large, small, too_large = (bitcoind.call("getnewaddress") for _ in range(3))
    wire.burn(large, 80_000_000, burn_id="large")
    wire.burn(too_large, 160_000_000, burn_id="too-large")
    settle(cluster, bitcoind)
    waiting = cluster[1].call("test-burn")
    assert (waiting["withdrawals"], waiting["queued"]) == ([], 1), waiting
    cluster[1].call("approve-burn", burn_id="large")
    assert cluster[1].call("test-burn")["withdrawals"] == []  # one approval of two
    approved = cluster[3].call("approve-burn", burn_id="large")
    assert approved["approved_by"] == [1, 3]  # node 1's reached node 3 over the mesh
    wait_until(lambda: cluster[1].call("payouts")["burns"][0]["approvals"] == [1, 3],
               what="node 1 holds both approvals")  # fmt: skip
    wire.burn(small, 1_000_000, burn_id="small")
    # Node 2's operator approved nothing: it signs because the approvals of nodes 1 and 3
    # verify against their identity keys.
    result = cluster[1].call("test-burn")
    (withdrawal,) = result["withdrawals"]
    assert (withdrawal["state"], withdrawal["payouts"]) == ("broadcast", 2), withdrawal
    mine(bitcoind, 6)
    settle(cluster, bitcoind)
    wait_until(lambda: len(wire.paid_reports) == 2, what="two paid reports")
    assert payments(bitcoind, too_large) == []
    burns = {b["burn_id"]: b["state"] for b in cluster[2].call("payouts")["burns"]}
    assert burns == {"large": "paid", "small": "paid"}, burns


def test_the_fee_reservoir_is_swept_to_an_approved_address(make_cluster, bitcoind, wire) -> None:
    cluster = funded_cluster(make_cluster, bitcoind, wire, deposits=(),
                             fee_reservoir={"consolidation_threshold": 3,
                                            "min_fee_amount": 5000})  # fmt: skip
    settle(cluster, bitcoind)
    status = cluster[1].call("status")["bitcoin"]
    assert status["custody_utxos"] == 1  # the payout chain's genesis only
    reservoir_address = cluster[1].call("fee-reservoir")["address"]
    assert cluster[2].call("fee-reservoir")["address"] == reservoir_address
    for amount in ("0.0001", "0.0002", "0.00001"):
        bitcoind.call("sendtoaddress", reservoir_address, amount)
    bitcoind.call("sendtoaddress", reservoir_address, "0.00004")  # below min_fee_amount
    mine(bitcoind, 6)
    settle(cluster, bitcoind)
    destination = bitcoind.call("getnewaddress")
    # The sweep goes to an address only nodes whose operator approved it sign for.
    cluster[2].call("test-consolidate-fees", address=destination, coordinate=False)
    result = cluster[1].call("test-consolidate-fees", address=destination)
    assert result["state"] == "broadcast", result
    mine(bitcoind, 6)
    settle(cluster, bitcoind)
    ((txid, amount),) = payments(bitcoind, destination)
    assert txid == result["txid"]
    assert 30_000 - 1000 < amount < 30_000  # the three eligible outputs less the fee
    # Of the reservoir's outputs, only the one below min_fee_amount is left.
    assert cluster[1].call("test-consolidate-fees", address=destination)["state"] == (
        "nothing-to-consolidate"
    )


@pytest.mark.parametrize("point", ["withdrawal.proposed", "withdrawal.signed",
                                   "withdrawal.broadcast", "withdrawal.confirmed"])  # fmt: skip
def test_a_crash_at_any_step_pays_each_burn_exactly_once(
    make_cluster, bitcoind, wire, point
) -> None:
    cluster = funded_cluster(make_cluster, bitcoind, wire)
    destinations = [bitcoind.call("getnewaddress") for _ in range(2)]
    for destination in destinations:
        wire.burn(destination, 15_000_000)
    settle(cluster, bitcoind)
    coordinator = cluster[1]
    coordinator.stop()
    coordinator.start(crash_at=point)
    coordinator.wait_ready(time.monotonic() + 60)
    settle(cluster, bitcoind)
    bitcoin_states(cluster, "synced")  # a node signs nothing before its view is synced
    with contextlib.suppress(EngineError, OSError):  # the engine dies during the command
        answer = coordinator.call("test-burn", within=60)
        if point != "withdrawal.confirmed":
            raise AssertionError(f"the engine answered instead of crashing: {answer}")
    if point == "withdrawal.confirmed":
        mine(bitcoind, 6)
    assert coordinator.process is not None
    assert coordinator.process.wait(60) == CRASH_EXIT
    coordinator.stop()
    coordinator.start()
    coordinator.wait_ready(time.monotonic() + 60)
    settle(cluster, bitcoind)
    wait_until(lambda: all(p["authenticated"] for p in coordinator.call("status")["peers"]
                           .values()), what="peers back")  # fmt: skip
    coordinator.call("test-burn")
    mine(bitcoind, 6)
    settle(cluster, bitcoind)
    coordinator.call("test-burn")  # follows and reports
    wait_until(lambda: {r["burn_id"] for r in wire.paid_reports} == {"burn-0", "burn-1"},
               what="both burns reported paid")  # fmt: skip
    txids = set()
    for destination in destinations:
        ((txid, amount),) = payments(bitcoind, destination)  # paid exactly once
        assert amount == 15_000_000
        txids.add(txid)
    assert len(txids) == 1
    assert bitcoind.call("getrawmempool") == []
    commitments_are_fresh(cluster)
