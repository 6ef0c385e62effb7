"""Benchmark of the bridge's two workflows end to end, on a local 2-of-3 cluster of wire-mpcd
processes, each following a bitcoind of its own (Bitcoin Core on regtest, peered over P2P
with a miner), with the simulated Wire system as burn feed and attestation endpoint. In one
run, on one cluster:

- block arrival → attestation signed (target p50 ≤ 1 s). Each sample: a deposit to a
  watched address, five blocks, every view settled; then the sixth block is mined, and the
  lead (node 1, `auto_attest`) notices the change by itself, sees the deposit confirmed and
  coordinates the signing ceremony. t0 is just before the miner mines the block; it reaches
  node 1's bitcoind over P2P, which announces it to the engine on ZMQ. t1 is when node
  1's outbox (`attestations`) first shows the signed attestation, polled every millisecond
  or so. The push to the Wire system is not the measure: it runs every `push_seconds`
  (0.5 s here) and would add up to that much; its arrival is reported beside.
- bitcoind's floor, from the same blocks: t1 is when node 1's own bitcoind answers `getblock`
  of the new block (polled over RPC): what it takes the block to reach the node at all.
- the chain-only floor, the reference, from the same blocks: t1 is when node 1's `status`
  first shows `bitcoin.view_height` at the new height, i.e. its watcher was woken by ZMQ,
  asked bitcoind over RPC and applied the block to its view. Each sample polls `status`
  until then, then `attestations`: both measures come from the same block, so their ratio
  is what the workflow (lead's attest, the signers' policy checks from their own views, the
  ceremony, recording) costs on top of following the chain. The journal's audit records of
  node 1 (`chain.deposit-confirmed` when the lead's attest takes the deposit on,
  `mint.attested` once signed; journald's receipt time) give the same moments without
  polling, as a cross-check.
- 100 verified burns → one signed withdrawal (target ≤ 2 s): the custody key funded, 100
  burns put on the feed (each to its own regtest address), taken on and verified by all
  three nodes; then the wall time of `test-burn` on node 1, which reads the feed, builds
  the batch, runs the 2-of-3 ceremony over its inputs (each signer verifies the 100 burns
  and rebuilds the transaction from its own view), records and broadcasts it; node 1's
  bitcoind must hold it in its mempool. Repeated with fresh burns; median.

Run beside a journald (tools/with-journald), as the engine audits to it. Writes JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import machine
from tests.wire.simulator import WireSimulator
from tools.bitcoind import BitcoinNetwork
from tools.devcluster import DevCluster, wait_until

SAMPLES = 15  # blocks timed, for the attestation and its floor alike
CONFIRMATIONS = 6  # the chain view's rule for a deposit
DEPOSIT = "0.01"  # BTC per sampled deposit
POLL_PAUSE = 0.001  # seconds between two polls of node 1's control socket
SAMPLE_TIMEOUT = 20.0
BURNS = 100
BURN_SATS = 100_000
WITHDRAWAL_ROUNDS = 5
FUNDING = "1.0"  # BTC per funding deposit, one per withdrawal round


class Arrivals(list[Any]):
    """The simulator's list of pushed attestations, noting when each one arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.perf_counter())
        super().append(item)


def views_at(cluster: DevCluster, height: int) -> None:
    nodes = list(cluster.nodes.values())
    wait_until(
        lambda: all(n.call("status")["bitcoin"]["view_height"] == height for n in nodes),
        30,
        f"every view at height {height}",
    )


def mine(node: BitcoinNetwork, blocks: int) -> int:
    """Mines `blocks` blocks and waits until every node's bitcoind has them; the height."""
    node.mine(blocks)
    return int(node.call("getblockcount"))


def mine_one(node: BitcoinNetwork, miner: str) -> float:
    """Mine one block on the miner alone (its wallet's deposit is in its own mempool; the
    block then travels over P2P); when generatetoaddress returned."""
    node.miner.call("generatetoaddress", 1, miner)
    return time.perf_counter()


def journal(event: str, pid: int) -> list[dict[str, Any]]:
    """The audit records of one kind a node's engine wrote (this run's private journald)."""
    run = subprocess.run(
        ["journalctl", "-o", "json", "--no-pager", "--all", f"WIRE_EVENT={event}", f"_PID={pid}"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def journal_time(records: list[dict[str, Any]], field: str, value: str) -> float | None:
    """journald's receipt time (epoch seconds) of the first record with `field` = value."""
    times = [int(r["__REALTIME_TIMESTAMP"]) / 1e6 for r in records if r.get(field) == value]
    return min(times) if times else None


def pid(cluster: DevCluster, identifier: int) -> int:
    process = cluster[identifier].process
    assert process is not None
    return process.pid


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "p50_s": round(statistics.median(values), 4),
        "p90_s": round(percentile(values, 0.9), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
        "samples": len(values),
    }


# --- deposits: block arrival → attestation signed, and the chain-only floor ----------------


def block_to_attestation(
    cluster: DevCluster, node: BitcoinNetwork, wire: WireSimulator
) -> dict[str, Any]:
    for member in cluster.nodes.values():  # every node watches the recipient
        address = member.call("deposit-address", recipient="wire:bench")["address"]
    miner = node.mining_address()
    lead, own = cluster[1], node.nodes[0]  # node 1 and its bitcoind
    arrived, floor, signed, pushed, mining = [], [], [], [], []
    confirmed_journal, attested_journal = [], []
    starts: list[tuple[float, str]] = []  # (wall-clock t0, deposit) for the journal
    sequence = -1
    with concurrent.futures.ThreadPoolExecutor(1) as miner_thread:
        for n in range(SAMPLES):
            txid = node.call("sendtoaddress", address, DEPOSIT)
            height = mine(node, CONFIRMATIONS - 1)
            views_at(cluster, height)
            # Let the lead's attest of the fifth block (nothing to attest) end first, so that
            # the sample times one attestation, not one queued behind another.
            time.sleep(0.3)
            pushes = len(wire.received_attestations)

            wall, t0 = time.time(), time.perf_counter()
            block = miner_thread.submit(mine_one, node, miner)
            got = seen = attestation = None
            while time.perf_counter() - t0 < SAMPLE_TIMEOUT:
                if got is None:
                    best = own.call("getblockchaininfo")
                    if best["blocks"] == height + 1:
                        own.call("getblock", best["bestblockhash"], 0)
                        got = time.perf_counter() - t0
                elif seen is None:
                    if lead.call("status")["bitcoin"]["view_height"] == height + 1:
                        seen = time.perf_counter() - t0
                else:
                    outbox = lead.call("attestations", after=sequence)["attestations"]
                    found = [a for a in outbox if a["txid"] == txid]
                    if found:
                        attestation = time.perf_counter() - t0
                        (item,) = found
                        break
                time.sleep(POLL_PAUSE)
            mining.append(block.result() - t0)
            if got is None or seen is None or attestation is None:
                raise RuntimeError(f"sample {n}: no attestation within {SAMPLE_TIMEOUT} s "
                                   f"(view at {seen} s)")  # fmt: skip
            sequence = item["sequence"]
            arrived.append(got)
            floor.append(seen)
            signed.append(attestation)
            deposit = f"{txid}:{item['vout']}"
            starts.append((wall, deposit))
            wait_until(lambda p=pushes: len(wire.received_attestations) > p, 10, "the push")
            pushed.append(wire.received_attestations.times[-1] - t0)
            views_at(cluster, height + 1)
            print(f"sample {n + 1}/{SAMPLES}: bitcoind {got * 1e3:.1f} ms, view "
                  f"{seen * 1e3:.1f} ms, attestation {attestation * 1e3:.1f} ms",
                  file=sys.stderr)  # fmt: skip

    confirmed_records = journal("chain.deposit-confirmed", pid(cluster, 1))
    attested_records = journal("mint.attested", pid(cluster, 1))
    for wall, deposit in starts:
        confirmed = journal_time(confirmed_records, "WIRE_DEPOSIT", deposit)
        attested = journal_time(attested_records, "WIRE_DEPOSIT", deposit)
        if confirmed is not None and attested is not None:
            confirmed_journal.append(confirmed - wall)
            attested_journal.append(attested - wall)

    attestation_summary = spread(signed)
    floor_summary = spread(floor)
    bitcoind_summary = spread(arrived)
    return {
        "block_to_attestation": {
            **attestation_summary,
            "target_s": 1.0,
            "met": attestation_summary["p50_s"] <= 1.0,
            "method": (
                "t0 just before generatetoaddress 1 (the 6th confirmation of a fresh deposit "
                "to a watched address; views settled beforehand); t1 when node 1's "
                "`attestations` outbox first shows the signed attestation, polled over the "
                f"control socket every ~{POLL_PAUSE * 1e3:.0f} ms plus the call (an upper "
                "bound by one poll). The lead attests by itself (auto_attest) on the chain "
                "change. Same blocks as chain_floor."
            ),
            "pushed_to_wire_p50_s": round(statistics.median(pushed), 4),
            "push_note": "arrival of the push at the Wire simulator; the push loop wakes "
            "every push_seconds (0.5 s in the dev cluster), so it lags the signing",
            "journal_mint_attested_p50_s": round(statistics.median(attested_journal), 4),
            "journal_samples": len(attested_journal),
        },
        "chain_floor": {
            **floor_summary,
            "method": (
                "same blocks: t0 just before generatetoaddress 1; t1 when node 1's `status` "
                "first shows bitcoin.view_height at the new height (ZMQ wake-up, RPC, block "
                "applied to the view), polled as above before switching to `attestations`. "
                "The journal's chain.deposit-confirmed of node 1 is written inside the lead's "
                "attest, so it is reported as a breakdown, not as the floor."
            ),
            "generatetoaddress_returned_p50_s": round(statistics.median(mining), 4),
            "journal_lead_deposit_confirmed_p50_s": round(statistics.median(confirmed_journal), 4),
        },
        "bitcoind_floor": {
            **bitcoind_summary,
            "method": (
                "same blocks: t0 just before the miner's generatetoaddress 1; t1 when node "
                "1's own bitcoind, which has the block from the miner over P2P, answers "
                "getblock of it (getblockchaininfo polled until its height moves). What any "
                "follower of this bitcoind waits at least."
            ),
        },
        "ratio_attestation_to_floor": round(
            attestation_summary["p50_s"] / floor_summary["p50_s"], 2
        ),
        "ratio_attestation_to_bitcoind": round(
            attestation_summary["p50_s"] / bitcoind_summary["p50_s"], 2
        ),
    }


# --- burns: 100 verified burns → one signed, broadcast withdrawal ------------------------


def taken_on(cluster: DevCluster, burn_ids: set[str]) -> bool:
    """Every node verified and queued each of `burn_ids` (its burn.accepted audit records:
    the `payouts` listing shows only the oldest 200 burns, so later rounds are not in it)."""
    for identifier in cluster.nodes:
        accepted = {r.get("WIRE_BURN") for r in journal("burn.accepted", pid(cluster, identifier))}
        if not burn_ids <= accepted:
            return False
    return True


def burns_to_withdrawal(
    cluster: DevCluster, node: BitcoinNetwork, wire: WireSimulator
) -> dict[str, Any]:
    node.call("sendtoaddress", cluster.custody_address(), "0.0001")  # the payout chain's genesis
    for member in cluster.nodes.values():
        address = member.call("deposit-address", recipient="wire:treasury")["address"]
    for _ in range(WITHDRAWAL_ROUNDS):
        node.call("sendtoaddress", address, FUNDING)
    views_at(cluster, mine(node, CONFIRMATIONS))
    times, inputs = [], []
    for round_ in range(WITHDRAWAL_ROUNDS):
        burn_ids = {
            wire.burn(node.call("getnewaddress"), BURN_SATS)["record"]["burn_id"]
            for _ in range(BURNS)
        }
        wait_until(lambda ids=burn_ids: taken_on(cluster, ids), 60, "100 burns on every node")
        if round_ == 0:  # while the listing holds them all, it must say the same
            for member in cluster.nodes.values():
                queued = [b for b in member.call("payouts")["burns"] if b["state"] == "queued"]
                if len(queued) != BURNS:
                    raise RuntimeError(f"{member.node_id} lists {len(queued)} queued burns")
        time.sleep(0.5)  # background feed polls and chain follow-ups end

        start = time.perf_counter()
        result = cluster[1].call("test-burn")
        elapsed = time.perf_counter() - start

        (withdrawal,) = result["withdrawals"]
        if (withdrawal["state"], withdrawal["payouts"]) != ("broadcast", BURNS):
            raise RuntimeError(f"round {round_}: {withdrawal}")
        node.nodes[0].call("getmempoolentry", withdrawal["txid"])  # raises unless node 1's
        # own bitcoind took it
        listing = cluster[1].call("payouts")["withdrawals"]
        (recorded,) = [w for w in listing if w["revisions"][-1]["txid"] == withdrawal["txid"]]
        inputs.append(len(recorded["inputs"]))
        times.append(elapsed)
        print(f"withdrawal {round_ + 1}/{WITHDRAWAL_ROUNDS}: {elapsed * 1e3:.0f} ms, "
              f"{inputs[-1]} inputs", file=sys.stderr)  # fmt: skip
        views_at(cluster, mine(node, CONFIRMATIONS))  # confirmed; its change is spendable
    median = statistics.median(times)
    return {
        "burns": BURNS,
        "burn_sats": BURN_SATS,
        "median_s": round(median, 4),
        "times_s": [round(t, 4) for t in times],
        "inputs": inputs,
        "target_s": 2.0,
        "met": median <= 2.0,
        "samples": len(times),
        "method": (
            "wall time of `test-burn` on node 1 (feed read, batch built, 2-of-3 ceremony "
            "over every input with each signer verifying the burns and rebuilding the "
            "transaction, recorded, broadcast to node 1's bitcoind, which validates it), "
            "after all three nodes audited burn.accepted for each of the 100 burns; the "
            "transaction checked in that bitcoind's mempool"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wire-bench-") as scratch, WireSimulator() as wire:
        wire.received_attestations = Arrivals()
        root = Path(scratch)
        with BitcoinNetwork(root / "bitcoin", nodes=3) as node:
            cluster = DevCluster(
                root / "cluster", 3, 2, bitcoind=node.sections(3, poll_seconds=0.5),
                auto_attest=True, attestation_push_url=f"{wire.url}/attestations",
                wire={"burn_feed_url": wire.url, "burn_authority_key": wire.authority_key.hex(),
                      "paid_report_url": f"{wire.url}/paid", "feed_poll_seconds": 0.5},
            )  # fmt: skip
            try:
                cluster.create()
                cluster.start()
                with concurrent.futures.ThreadPoolExecutor(3) as pool:
                    dkg = list(pool.map(lambda m: m.call("dkg", ceremony_id="bench-dkg"),
                                        cluster.nodes.values()))  # fmt: skip
                if any(r["state"] != "completed" for r in dkg):
                    raise RuntimeError(f"DKG failed: {dkg}")
                wait_until(
                    lambda: all(m.call("status")["bitcoin"]["sync"] == "synced"
                                for m in cluster.nodes.values()),
                    30, "every node synced",
                )  # fmt: skip
                version = node.miner.call("getnetworkinfo")["subversion"]
                deposits = block_to_attestation(cluster, node, wire)
                withdrawals = burns_to_withdrawal(cluster, node, wire)
            finally:
                cluster.close()
    report = {
        "benchmark": "workflows",
        "setup": (
            "2-of-3 cluster of wire-mpcd processes (SoftHSM, CURVE mesh on loopback), each "
            "following its own bitcoind over RPC and ZMQ (poll_seconds 0.5), the bitcoinds "
            "peered over P2P with a miner; the Wire simulator as burn feed "
            "(feed_poll_seconds 0.5) and attestation endpoint, all on this machine"
        ),
        "bitcoind": f"{version} ({node.binary})",
        "machine": machine(),
        **deposits,
        "burns_to_signed_withdrawal": withdrawals,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
