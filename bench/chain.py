"""Benchmark of the chain interface. In one run:

- scanning: blocks of 2,000 transactions (Taproot key-path spends, one in twenty paying a
  watched deposit address) parsed, connected and scanned by the chain view into SQLite,
  against libbitcoinkernel (py-bitcoinkernel) validating the same blocks: blocks/s each and
  the ratio;
- withdrawals: a 100-input, 100-output withdrawal built and sighashed, against embit
  computing the same BIP341 sighashes. Medians; writes JSON.

The blocks are mined by Bitcoin Core's bitcoind on regtest (`generateblock` with the
bench's own signed spends), which validates each before the bench reads them back.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from embit.script import Script
from embit.transaction import Transaction as EmbitTransaction
from embit.transaction import TransactionInput, TransactionOutput

from appliance.chain.custody import CustodyKey
from appliance.chain.transaction import parse_block
from appliance.chain.view import ChainView, ConnectedBlock
from appliance.chain.withdrawal import Payout, Spendable, build_withdrawal
from appliance.frost import SECP256K1_TR, trusted_dealer_keygen
from appliance.store import ChainRecords, Store
from tests.chain.helpers import CONFIG, Audit
from tests.regtest.kernel import ConsensusKernel
from tests.regtest.validation import Coin
from tests.regtest.wallet import TaprootKey, sign_key_path
from tools.bitcoind import Bitcoind

TRANSACTIONS = 2000
BLOCKS = 5
RECIPIENTS = 100
SPEND_FEE = 200  # sats per spend: 1 sat/vB and then some


@dataclass(frozen=True)
class RawBlock:
    hash: bytes  # internal byte order, as the kernel wants
    raw: bytes
    height: int

    @property
    def hash_hex(self) -> str:
        return self.hash[::-1].hex()


def signed_spend(
    key: TaprootKey, txid: str, vout: int, value: int, outputs: list[tuple[bytes, int]]
) -> str:
    tx = EmbitTransaction(
        vin=[TransactionInput(bytes.fromhex(txid), vout, sequence=0xFFFFFFFD)],
        vout=[TransactionOutput(amount, Script(script)) for script, amount in outputs],
    )
    sign_key_path(tx, [Coin(value, key.script_pubkey, 0, False)], [key])
    return tx.serialize().hex()


def mine_full_blocks(node: Bitcoind, watched: list[bytes]) -> list[int]:
    """BLOCKS blocks of TRANSACTIONS spends each; returns their heights."""
    key = TaprootKey.generate()
    miner = node.call("getnewaddress")
    coinbases = node.call("generatetoaddress", BLOCKS, key.address)
    node.call("generatetoaddress", 100, miner)
    heights = []
    for round_, coinbase_block in enumerate(coinbases):
        coinbase = node.call("getblock", coinbase_block, 2)["tx"][0]
        value = round(coinbase["vout"][0]["value"] * 100_000_000)
        share = (value - 100_000) // TRANSACTIONS
        fan_out = signed_spend(
            key, coinbase["txid"], 0, value, [(key.script_pubkey, share)] * TRANSACTIONS
        )
        fan_txid = node.call("sendrawtransaction", fan_out)
        node.call("generatetoaddress", 1, miner)
        spends = []
        for i in range(TRANSACTIONS):
            script = watched[(i // 20) % len(watched)] if i % 20 == 0 else key.script_pubkey
            spends.append(signed_spend(key, fan_txid, i, share, [(script, share - SPEND_FEE)]))
        block = node.call("generateblock", miner, spends)["hash"]
        heights.append(node.call("getblockheader", block)["height"])
        print(f"block {round_ + 1}/{BLOCKS} of {TRANSACTIONS + 1} transactions", file=sys.stderr)
    return heights


def raw_chain(node: Bitcoind) -> list[RawBlock]:
    chain = []
    for height in range(node.call("getblockcount") + 1):
        block_hash = node.call("getblockhash", height)
        raw = bytes.fromhex(node.call("getblock", block_hash, 0))
        chain.append(RawBlock(bytes.fromhex(block_hash)[::-1], raw, height))
    return chain


def scan_rates(chain: list[RawBlock], heights: list[int], key: CustodyKey, root: Path) -> dict:
    store = Store(root / "bench.db")
    view = ChainView(ChainRecords(store), CONFIG, Audit())
    for i in range(RECIPIENTS):
        view.watch(key.deposit(f"wire:recipient-{i}"))
    first = heights[0]
    prefix = [
        ConnectedBlock(b.hash_hex, b.height, parse_block(b.raw)) for b in chain[:first]
    ]  # fmt: skip
    view.apply(-1, prefix)
    samples = []
    for height in heights:
        block = chain[height]
        start = time.perf_counter()
        parsed = parse_block(block.raw)
        view.apply(height - 1, [ConnectedBlock(block.hash_hex, height, parsed)])
        samples.append(time.perf_counter() - start)
        if height + 1 < len(chain) and height + 1 not in heights:
            after = chain[height + 1]  # the next fan-out block, untimed
            view.apply(height, [ConnectedBlock(after.hash_hex, height + 1, parse_block(after.raw))])
    found = len(view.unspent(["deposit"]))
    store.close()
    kernel = ConsensusKernel(root / "kernel")
    kernel.follow(chain[:first])
    kernel_samples = []
    for height in heights:
        start = time.perf_counter()
        kernel.follow(chain[: height + 1])
        kernel_samples.append(time.perf_counter() - start)
        if height + 1 < len(chain) and height + 1 not in heights:
            kernel.follow(chain[: height + 2])
    kernel.close()
    ours, theirs = statistics.median(samples), statistics.median(kernel_samples)
    return {
        "transactions_per_block": TRANSACTIONS + 1,
        "blocks": len(heights),
        "watched_deposit_outputs_found": found,
        "scan_median_ms": round(ours * 1e3, 2),
        "scan_blocks_per_s": round(1 / ours, 2),
        "kernel_median_ms": round(theirs * 1e3, 2),
        "kernel_blocks_per_s": round(1 / theirs, 2),
        "ratio_scan_over_kernel": round(theirs / ours, 2),
        "target_ratio": 1.0,
    }


def median_ms(run: Callable[[], object], runs: int = 31) -> float:
    run()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return round(statistics.median(samples) * 1e3, 3)


def withdrawal_times(key: CustodyKey) -> dict:
    rng = random.Random(1)
    spendables = [
        Spendable(rng.randbytes(32).hex(), rng.randrange(4), 1_010_000, out.script, out.tweaks)
        for out in [key.custody if i % 2 else key.deposit(f"wire:{i}") for i in range(100)]
    ]
    payouts = [
        Payout(f"burn-{i:03d}", key.deposit(f"wire:payee-{i}").script, 1_010_000) for i in range(99)
    ]
    main, others = spendables[1], spendables[:1] + spendables[2:]  # a custody output first
    plan = build_withdrawal(payouts, main, others, key.custody.script, 2.0)
    assert len(plan.spent) == 100
    assert len(plan.transaction.outputs) == 101  # change, commitment, 99 payouts

    def ours() -> None:
        build_withdrawal(payouts, main, others, key.custody.script, 2.0).sighashes()

    unsigned = plan.transaction.serialize()
    scripts = [Script(s.script) for s in plan.spent]
    values = [s.amount for s in plan.spent]

    def embit_sighashes() -> list[bytes]:
        tx = EmbitTransaction.parse(unsigned)
        return [tx.sighash_taproot(i, scripts, values) for i in range(len(values))]

    assert embit_sighashes() == plan.sighashes()
    return {
        "inputs": 100,
        "outputs": 101,
        "build_and_sighash_median_ms": median_ms(ours),
        "sighash_only_median_ms": median_ms(plan.sighashes),
        "embit_sighash_median_ms": median_ms(embit_sighashes),
        "target_ms": 200,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    _, package = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    key = CustodyKey(package.group_key, "regtest")
    watched = [key.deposit(f"wire:recipient-{i}").script for i in range(RECIPIENTS)]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        with Bitcoind(root / "bitcoind", wallet=True) as node:
            bitcoind_version = node.call("getnetworkinfo")["subversion"]
            heights = mine_full_blocks(node, watched)
            chain = raw_chain(node)
        scanning = scan_rates(chain, heights, key, root)
    result = {
        "scanning": scanning,
        "withdrawal": withdrawal_times(key),
        "versions": {
            "py-bitcoinkernel": metadata.version("py-bitcoinkernel"),
            "bitcoind": bitcoind_version,
            "embit": metadata.version("embit"),
            "python": sys.version.split()[0],
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
