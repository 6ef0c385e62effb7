"""A malicious coordinator (with its colluders: t-1 nodes in all) against the honest nodes of a
local cluster (each node following its own bitcoind): it shows different withdrawals of one
burn to different honest nodes, withholds and races what it got signed, replays paid burns,
spends old or unconfirmed main outputs, and lies about the burn ids of payout transactions.
The chain shows each burn paid at most once; honest nodes name the liar and keep paying."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.wire.simulator import WireSimulator
from tools.bitcoind import BitcoinNetwork
from tools.devcluster import DevCluster, DevNode, wait_until

from .test_payouts import bitcoind, funded_cluster, mine, payments, settle, wire

__all__ = ["bitcoind", "wire"]  # the fixtures


def attack(coordinator: DevNode, *proposals: dict[str, Any]) -> list[dict[str, Any]]:
    return coordinator.call("attack", proposals=list(proposals), within=180)


def queued_everywhere(cluster: DevCluster, burn_id: str) -> None:
    def held() -> bool:
        return all(
            any(b["burn_id"] == burn_id for b in member.call("payouts")["burns"])
            for member in cluster.nodes.values()
        )

    wait_until(held, 30, f"every node holds burn {burn_id}")


def send(node: BitcoinNetwork, result: dict[str, Any]) -> str | None:
    """Broadcast a signed transaction as the attacker would; bitcoind's refusal, if any."""
    try:
        node.call("sendrawtransaction", result["transaction"])
    except Exception as exc:  # bitcoind's refusal; its text is what matters
        return str(exc)
    return None


def declined_because(result: dict[str, Any], reason: str) -> None:
    assert result["state"] == "failed", result
    assert reason in (result["reason"] or ""), result


def chain_of(member: DevNode) -> dict[str, Any]:
    summary: dict[str, Any] = member.call("payouts")["payout_chain"]
    return summary


@pytest.mark.parametrize(
    ("parties", "threshold", "faults", "groups"),
    [
        (3, 2, {1: "double-payer"}, ([1, 2], [1, 3])),
        (5, 3, {1: "double-payer", 2: "colluder"}, ([1, 2, 3], [1, 2, 4])),
    ],
    ids=["2-of-3", "3-of-5"],
)
def test_a_burn_is_paid_at_most_once_whatever_the_coordinator_shows_to_whom(
    make_cluster, bitcoind, wire: WireSimulator, journal, parties, threshold, faults, groups
) -> None:
    cluster = funded_cluster(
        make_cluster,
        bitcoind,
        wire,
        deposits=("1.0", "1.0"),
        parties=parties,
        threshold=threshold,
        faults=faults,
        round_timeout=2.0,
    )
    settle(cluster, bitcoind)
    coordinator = cluster[1]
    honest = [n for i, n in cluster.nodes.items() if i not in faults]
    destination = bitcoind.call("getnewaddress")
    burn = wire.burn(destination, 30_000_000)["record"]["burn_id"]
    queued_everywhere(cluster, burn)
    outputs = coordinator.call("attack-outputs")
    main = outputs["main"]
    assert main is not None
    assert all(chain_of(m)["main_output"] == main for m in honest)
    deposits = [o["outpoint"] for o in outputs["available"] if o["amount"] == 100_000_000]
    assert len(deposits) == 2
    a, b = groups

    # 1. The split the review found: each group a withdrawal of the burn from its own deposit.
    old_shape = attack(
        coordinator,
        {"burns": [burn], "first": deposits[0], "extras": [], "signers": a},
        {"burns": [burn], "first": deposits[1], "extras": [], "signers": b},
    )
    for result in old_shape:
        declined_because(result, "not the main custody output")

    # 2. Both spending the main output: the honest nodes sign both (siblings), then the
    #    attacker withholds one, broadcasts the other, and races the first in later.
    first, second = attack(
        coordinator,
        {"burns": [burn], "first": "main", "extras": [deposits[0]], "signers": a},
        {"burns": [burn], "first": "main", "extras": [deposits[1]], "signers": b},
    )
    assert first["state"] == second["state"] == "completed", (first, second)
    assert first["txid"] != second["txid"]
    assert send(bitcoind, second) is None
    refusal = send(bitcoind, first)  # a conflict of the same fee: not taken
    assert refusal is not None, "two withdrawals of one main output both in the mempool"
    mine(bitcoind, 1)
    assert send(bitcoind, first) is not None  # its main input is spent for good
    mine(bitcoind, 6)
    settle(cluster, bitcoind)
    assert payments(bitcoind, destination) == [(second["txid"], 30_000_000)]

    # Every honest node learns the burn is paid, also those that did not sign the winner
    # (they ask their peers; the attacker's false answer is refused and it is named).
    for member in honest:
        wait_until(lambda m=member: burn_state(m, burn) == "paid", 30, f"{member.node_id} paid")
        assert chain_of(member)["missing_records"] == []
    non_signer = next(m for m in honest if m.identifier not in b)
    pid = non_signer.process.pid if non_signer.process else 0
    liar = journal.wait_for(
        WIRE_EVENT="mesh.message-rejected", WIRE_REASON="false-record", WIRE_PEER="1", _PID=pid
    )
    assert liar, f"{non_signer.node_id} did not name the lying coordinator"
    learned = journal.wait_for(
        WIRE_EVENT="payout.record-learned", WIRE_TXID=second["txid"], _PID=pid
    )
    assert learned, f"{non_signer.node_id} did not audit where it learned the burn ids"
    assert all(r["WIRE_PEER"] != "1" for r in learned)

    # 3. Replays: the paid burn again, from the new main output, to every group; and from
    #    the old main output (spent) or one still unconfirmed.
    for result in attack(
        coordinator,
        {"burns": [burn], "first": "main", "signers": a},
        {"burns": [burn], "first": "main", "signers": b},
    ):
        declined_because(result, f"burn {burn} is paid by {second['txid']}")
    other = bitcoind.call("getnewaddress")
    fresh = wire.burn(other, 10_000_000)["record"]["burn_id"]
    queued_everywhere(cluster, fresh)
    (stale,) = attack(coordinator, {"burns": [fresh], "first": main, "signers": a})
    declined_because(stale, "not the main custody output")
    (paying,) = attack(coordinator, {"burns": [fresh], "first": "main", "signers": a})
    assert paying["state"] == "completed", paying
    assert send(bitcoind, paying) is None  # in the mempool, unconfirmed
    unconfirmed = {"outpoint": f"{paying['txid']}:0", "amount": paying["change"]}
    (chained,) = attack(coordinator, {"burns": [fresh], "first": unconfirmed, "signers": b})
    declined_because(chained, "not the main custody output")

    # 4. An honest node that restarts keeps refusing: what decides is on the chain.
    mine(bitcoind, 6)
    settle(cluster, bitcoind)
    restarted = honest[0]
    restarted.stop()
    restarted.start()
    restarted.wait_ready(time.monotonic() + 60)
    settle(cluster, bitcoind)
    wait_until(lambda: burn_state(restarted, fresh) == "paid", 30, "the restarted node synced")
    group = [1, *(faults.keys() - {1}), restarted.identifier][:threshold]
    (again,) = attack(coordinator, {"burns": [fresh, burn], "first": "main", "signers": group})
    declined_because(again, "is paid by")
    assert payments(bitcoind, destination) == [(second["txid"], 30_000_000)]
    assert payments(bitcoind, other) == [(paying["txid"], 10_000_000)]


def burn_state(member: DevNode, burn_id: str) -> str | None:
    for burn in member.call("payouts")["burns"]:
        if burn["burn_id"] == burn_id:
            return str(burn["state"])
    return None


def test_a_node_down_still_lets_the_others_pay(make_cluster, bitcoind, wire) -> None:
    cluster = funded_cluster(make_cluster, bitcoind, wire)
    cluster.stop([3])
    destination = bitcoind.call("getnewaddress")
    wire.burn(destination, 20_000_000)
    settle(cluster, bitcoind, [1, 2])
    wait_until(
        lambda: not cluster[1].call("status")["peers"]["node-3"]["authenticated"],
        30,
        "node 1 sees node 3 gone",
    )
    (withdrawal,) = cluster[1].call("test-burn")["withdrawals"]
    assert withdrawal["state"] == "broadcast", withdrawal
    assert withdrawal["signers"] == [1, 2]
    mine(bitcoind, 6)
    settle(cluster, bitcoind, [1, 2])
    assert payments(bitcoind, destination) == [(withdrawal["txid"], 20_000_000)]
    # The node that was down learns, when it is back, that the burn is paid.
    cluster.start([3])
    settle(cluster, bitcoind)
    wait_until(lambda: burn_state(cluster[3], "burn-0") == "paid", 30, "node 3 catches up")
