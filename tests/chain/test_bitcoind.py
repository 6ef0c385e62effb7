"""The chain interface against the regtest node, through its real RPC and ZMQ: deposits and
confirmations under reorgs and forks, a silenced ZMQ stream, bitcoind's sync states, and
withdrawals that Bitcoin Core's rules (libbitcoinkernel) accept or refuse."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance.chain.address import script_of_address
from appliance.chain.broadcast import BroadcastRefused, broadcast
from appliance.chain.custody import CustodyKey
from appliance.chain.fees import bumped_fee_rate, estimate_fee_rate, is_stuck
from appliance.chain.service import ChainService
from appliance.chain.transaction import Transaction, TxOut
from appliance.chain.withdrawal import (
    Payout,
    Spendable,
    WithdrawalPlan,
    build_withdrawal,
    replace_withdrawal,
)
from appliance.frost import SECP256K1_TR, KeyShare, trusted_dealer_keygen
from appliance.store import Store
from tests.chain.helpers import CONFIG, Audit
from tests.frost.helpers import sign_with
from tests.regtest.harness import RegtestProcess, RpcCallError, block_on


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RegtestProcess]:
    with RegtestProcess(tmp_path / "bitcoind") as process:
        process.call("generatetoaddress", 101, process.call("getnewaddress"))
        yield process


@pytest.fixture(scope="module")
def custody() -> tuple[dict[int, KeyShare], bytes]:
    shares, package = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    return shares, package.group_key


class Bitcoin:
    """A ChainService of one node on the regtest node, and ways to drive both."""

    def __init__(self, node: RegtestProcess, path: Path, group_key: bytes, **config: Any) -> None:
        self.node = node
        self.store = Store(path / "node.db")
        self.audit = Audit()
        self.changed = asyncio.Event()
        self.config = dataclasses.replace(
            CONFIG,
            rpc_url=node.rpc_url,
            rpc_user=None,
            cookie_file=node.cookie_path,
            zmq_block=node.zmq_endpoint,
            **config,
        )
        self.service = ChainService(
            self.config, self.store, self.audit, on_change=lambda _: self.changed.set()
        )
        self.view = self.service.view
        self.key = CustodyKey(group_key, "regtest")
        self.service.watch_custody(group_key)

    async def caught_up(self, within: float = 15.0) -> None:
        """Wait until the view's tip is the node's best block."""
        best = self.node.call("getbestblockhash")
        async with asyncio.timeout(within):  # checked every 50 ms: bounded
            while self.view.tip is None or self.view.tip[0] != best:
                await asyncio.sleep(0.05)

    def mine(self, blocks: int = 1) -> list[str]:
        return self.node.call("generatetoaddress", blocks, self.node.call("getnewaddress"))

    def mine_empty(self, blocks: int) -> list[str]:
        """Blocks without the mempool's transactions (a stuck transaction stays stuck)."""
        address = self.node.call("getnewaddress")
        return [self.node.call("generateblock", address, [])["hash"] for _ in range(blocks)]

    def pay(self, address: str, btc: str) -> str:
        return self.node.call("sendtoaddress", address, btc)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def bitcoin(node, tmp_path, custody) -> Iterator[Bitcoin]:
    chain = Bitcoin(node, tmp_path, custody[1])
    yield chain
    chain.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# ---- deposits, confirmations, reorgs ----------------------------------------------------


def test_a_deposit_is_reported_once_at_six_confirmations(node, tmp_path, custody) -> None:
    # Polling is slowed to a minute: only ZMQ can bring these blocks in time.
    bitcoin = Bitcoin(node, tmp_path, custody[1], poll_seconds=60)

    async def scenario() -> None:
        await bitcoin.service.start()
        try:
            output, address, _ = await bitcoin.service.watch_deposit(custody[1], "wire:alice", None)
            txid = bitcoin.pay(address, "0.5")
            bitcoin.mine(5)
            await bitcoin.caught_up()
            assert bitcoin.view.take_confirmed_deposits() == []
            bitcoin.mine(1)
            await bitcoin.caught_up()
            (deposit,) = bitcoin.view.take_confirmed_deposits()
            assert (deposit.txid, deposit.amount, deposit.recipient) == (
                txid,
                50_000_000,
                "wire:alice",
            )
            assert (
                node.call("getrawtransaction", txid, True)["vout"][deposit.vout]["scriptPubKey"][
                    "hex"
                ]
                == output.script.hex()
            )
            bitcoin.mine(3)
            await bitcoin.caught_up()
            assert bitcoin.view.take_confirmed_deposits() == []
            assert bitcoin.service.watcher.notifications > 0
            assert bitcoin.service.watcher.state.synced
        finally:
            await bitcoin.service.close()

    run(scenario())
    bitcoin.close()


def test_a_reorg_before_six_confirmations_reports_nothing(bitcoin) -> None:
    async def scenario() -> None:
        await bitcoin.service.start()
        try:
            _, address, _ = await bitcoin.service.watch_deposit(
                bitcoin.key.group_key, "wire:bob", None
            )
            bitcoin.pay(address, "0.2")
            (deposit_block, *_) = bitcoin.mine(3)
            await bitcoin.caught_up()
            bitcoin.node.call("invalidateblock", deposit_block)  # the deposit goes back
            bitcoin.mine_empty(10)  # to the mempool; a longer branch without it wins
            await bitcoin.caught_up()
            assert bitcoin.view.take_confirmed_deposits() == []
            assert bitcoin.view.required_confirmations() == 12
            assert "chain.reorg" in bitcoin.audit.events()
            assert bitcoin.view.minting_paused() is None
            # Mined again, it needs twelve confirmations now, not six.
            (again, *_) = bitcoin.mine(6)
            await bitcoin.caught_up()
            assert bitcoin.view.take_confirmed_deposits() == []
            bitcoin.mine(6)
            await bitcoin.caught_up()
            (deposit,) = bitcoin.view.take_confirmed_deposits()
            assert deposit.block_hash == again
        finally:
            await bitcoin.service.close()

    run(scenario())


def test_a_competing_branch_raises_required_confirmations(bitcoin) -> None:
    async def scenario() -> None:
        watcher = bitcoin.service.watcher
        _, address, _ = await bitcoin.service.watch_deposit(
            bitcoin.key.group_key, "wire:carol", None
        )
        bitcoin.pay(address, "0.1")
        bitcoin.mine(6)
        tip = bitcoin.node.call("getblockheader", bitcoin.node.call("getbestblockhash"))
        # A block at the tip's height on the tip's parent: equal work, so bitcoind keeps
        # its first-seen tip, and the rival shows in getchaintips as a valid fork.
        rival = block_on(bitcoin.node, tip["previousblockhash"], bitcoin.key.custody.script)
        # bitcoind answers "inconclusive" for a valid block that did not become its tip
        assert bitcoin.node.call("submitblock", rival.raw.hex()) == "inconclusive"
        assert (await watcher.sync_once()).synced
        assert bitcoin.view.tip[0] == tip["hash"]  # never canonical here
        assert bitcoin.view.required_confirmations() == 12
        assert "chain.fork" in bitcoin.audit.events()
        assert bitcoin.view.take_confirmed_deposits() == []  # 6 of 12
        bitcoin.mine(6)
        await watcher.sync_once()
        assert len(bitcoin.view.take_confirmed_deposits()) == 1
        await bitcoin.service.close()

    run(scenario())


def test_a_deep_reorg_of_an_attested_deposit_alerts_and_pauses_minting(bitcoin) -> None:
    async def scenario() -> None:
        watcher = bitcoin.service.watcher
        _, address, _ = await bitcoin.service.watch_deposit(
            bitcoin.key.group_key, "wire:dave", None
        )
        bitcoin.pay(address, "1.0")
        (deposit_block, *_) = bitcoin.mine(7)
        await watcher.sync_once()
        (deposit,) = bitcoin.view.take_confirmed_deposits()
        bitcoin.view.mark_attested(deposit.txid, deposit.vout)
        bitcoin.node.call("invalidateblock", deposit_block)
        bitcoin.mine_empty(9)  # a 7-deep reorg that leaves the deposit out
        await watcher.sync_once()
        assert bitcoin.view.minting_paused() is not None
        assert ("chain.deposit-reorged", "failure") in [(e, o) for e, o, _ in bitcoin.audit]
        assert bitcoin.service.status()["minting_paused"] is not None
        await bitcoin.service.close()

    run(scenario())


def test_a_silenced_zmq_stream_is_caught_up_by_polling(node, tmp_path, custody) -> None:
    bitcoin = Bitcoin(node, tmp_path, custody[1], poll_seconds=0.5)

    async def scenario() -> None:
        await bitcoin.service.start()
        try:
            await bitcoin.caught_up()
            node.call("setzmqpublishing", False)
            heard = bitcoin.service.watcher.notifications
            _, address, _ = await bitcoin.service.watch_deposit(custody[1], "wire:erin", None)
            bitcoin.pay(address, "0.3")
            bitcoin.mine(6)
            await bitcoin.caught_up()
            assert len(bitcoin.view.take_confirmed_deposits()) == 1
            assert bitcoin.service.watcher.notifications == heard  # polling alone found it
            node.call("setzmqpublishing", True)
            bitcoin.mine(1)
            await bitcoin.caught_up()
        finally:
            await bitcoin.service.close()

    run(scenario())
    bitcoin.close()


def test_a_deposit_made_before_its_address_was_watched_is_found_by_rescan(bitcoin) -> None:
    async def scenario() -> None:
        watcher = bitcoin.service.watcher
        start = bitcoin.node.call("getblockcount")
        early = bitcoin.key.address(bitcoin.key.deposit("wire:frank"))
        bitcoin.pay(early, "0.4")
        bitcoin.mine(6)
        await watcher.sync_once()
        assert bitcoin.view.take_confirmed_deposits() == []  # not watched yet
        _, address, rescanned = await bitcoin.service.watch_deposit(
            bitcoin.key.group_key, "wire:frank", start
        )
        assert address == early
        assert rescanned == 7
        assert len(bitcoin.view.take_confirmed_deposits()) == 1
        await bitcoin.service.close()

    run(scenario())


def test_bitcoind_states_that_stop_signing(bitcoin) -> None:
    async def scenario() -> None:
        watcher = bitcoin.service.watcher
        assert (await watcher.sync_once()).synced
        bitcoin.node.call("setinitialblockdownload", True)
        state = await watcher.sync_once()
        assert state.name == "initial-block-download"
        with pytest.raises(Exception, match="initial block download"):
            watcher.require_synced()
        bitcoin.node.call("setinitialblockdownload", False)
        bitcoin.node.call("setheaders", bitcoin.node.call("getblockcount") + 50)
        state = await watcher.sync_once()
        assert (state.name, state.reason) == (
            "behind",
            "bitcoind has 50 headers it has not validated",
        )
        bitcoin.node.call("setheaders", None)
        assert (await watcher.sync_once()).synced
        bitcoin.node.stop()
        state = await watcher.sync_once()
        assert state.name == "unreachable"
        states = [m for e, _, m in bitcoin.audit if e == "chain.sync-state"]
        assert [s.split(":")[0] for s in states] == [
            "bitcoind is synced",
            "bitcoind is initial-block-download",
            "bitcoind is behind",
            "bitcoind is synced",
            "bitcoind is unreachable",
        ]
        await bitcoin.service.close()

    run(scenario())


# ---- withdrawals ------------------------------------------------------------------------


def users(node: RegtestProcess, count: int) -> list[bytes]:
    return [script_of_address(node.call("getnewaddress"), "regtest") for _ in range(count)]


def signed(plan: WithdrawalPlan, shares: dict[int, KeyShare]) -> Transaction:
    return plan.signed(
        [
            sign_with(shares, [1, 3], digest, spent.tweaks)
            for spent, digest in zip(plan.spent, plan.sighashes(), strict=True)
        ]
    )


async def funded(bitcoin: Bitcoin) -> None:
    """Custody outputs of three kinds: the custody key's own, a deposit and the reservoir."""
    _, deposit, _ = await bitcoin.service.watch_deposit(bitcoin.key.group_key, "wire:gus", None)
    bitcoin.pay(bitcoin.key.address(bitcoin.key.custody), "0.6")
    bitcoin.pay(deposit, "0.25")
    bitcoin.pay(bitcoin.key.address(bitcoin.key.reservoir), "0.15")
    bitcoin.mine(1)
    await bitcoin.service.watcher.sync_once()


def paid(node: RegtestProcess, since_height: int, scripts: list[bytes]) -> dict[bytes, int]:
    """How many outputs in the active chain above `since_height` pay each script."""
    counts = dict.fromkeys(scripts, 0)
    for height in range(since_height + 1, node.call("getblockcount") + 1):
        block = node.call("getblock", node.call("getblockhash", height), 2)
        for tx in block["tx"]:
            for out in tx["vout"]:
                script = bytes.fromhex(out["scriptPubKey"]["hex"])
                if script in counts:
                    counts[script] += 1
    return counts


def first_and_rest(spendables: list[Spendable]) -> tuple[Spendable, list[Spendable]]:
    """An output to stand for the main custody output (this module tests transactions and
    bitcoind, not the payout chain), and the others."""
    return spendables[0], spendables[1:]


def test_a_signed_withdrawal_is_accepted_and_tracked(bitcoin, custody) -> None:
    shares, _ = custody

    async def scenario() -> None:
        await funded(bitcoin)
        spendables = bitcoin.view.spendables()
        assert sorted(s.amount for s in spendables) == [15_000_000, 25_000_000, 60_000_000]
        payouts = [Payout(f"burn-{i}", s, 30_000_000) for i, s in enumerate(users(bitcoin.node, 3))]
        rate = await estimate_fee_rate(bitcoin.service.rpc, bitcoin.config)
        plan = build_withdrawal(
            payouts, *first_and_rest(spendables), bitcoin.key.custody.script, rate
        )
        assert len(plan.spent) == 3  # the deposit- and reservoir-tweaked keys sign too
        tx = signed(plan, shares)
        txid = await broadcast(bitcoin.service.rpc, tx, bitcoin.audit)
        entry = bitcoin.node.call("getmempoolentry", txid)
        assert entry["bip125-replaceable"] is True
        bitcoin.mine(1)
        await bitcoin.service.watcher.sync_once()
        (change,) = bitcoin.view.unspent()
        assert (change.txid, change.amount) == (txid, plan.change)
        assert "chain.broadcast" in bitcoin.audit.events()
        await bitcoin.service.close()

    run(scenario())


def test_bad_withdrawals_are_refused_with_bitcoinds_reason(bitcoin, custody) -> None:
    shares, _ = custody

    async def scenario() -> None:
        await funded(bitcoin)
        spendables = bitcoin.view.spendables()
        payouts = [Payout("burn-x", users(bitcoin.node, 1)[0], 10_000_000)]
        plan = build_withdrawal(
            payouts, *first_and_rest(spendables), bitcoin.key.custody.script, 2.0
        )
        good = signed(plan, shares)
        witness = bytearray(good.inputs[0].witness[0])
        witness[10] ^= 1
        forged = good.with_witnesses([(bytes(witness),), *[i.witness for i in good.inputs[1:]]])
        overspend_tx = dataclasses.replace(
            plan.transaction,
            outputs=(TxOut(sum(s.amount for s in plan.spent) + 1, payouts[0].script),),
        )
        overspend = signed(dataclasses.replace(plan, transaction=overspend_tx), shares)
        cheap = signed(
            build_withdrawal(payouts, *first_and_rest(spendables), bitcoin.key.custody.script, 0.2),
            shares,
        )
        cases = {
            "script-verify-flag-failed": forged,
            "bad-txns-in-belowout": overspend,
            "min relay fee not met": cheap,
        }
        for reason, tx in cases.items():
            with pytest.raises(BroadcastRefused, match=reason):
                await broadcast(bitcoin.service.rpc, tx, bitcoin.audit)
        refusals = [m for e, _, m in bitcoin.audit if e == "chain.broadcast-refused"]
        assert len(refusals) == 3
        assert bitcoin.node.call("getrawmempool") == []
        await broadcast(bitcoin.service.rpc, good, bitcoin.audit)  # the honest one still goes
        await bitcoin.service.close()

    run(scenario())


def test_a_stuck_withdrawal_is_replaced_and_users_are_paid_once(bitcoin, custody) -> None:
    shares, _ = custody

    async def scenario() -> None:
        await funded(bitcoin)
        start = bitcoin.node.call("getblockcount")
        scripts = users(bitcoin.node, 4)
        payouts = [Payout(f"burn-{i}", s, 5_000_000) for i, s in enumerate(scripts)]
        spendables = first_and_rest(bitcoin.view.spendables())
        plan = build_withdrawal(payouts, *spendables, bitcoin.key.custody.script, 1.0)
        first = await broadcast(bitcoin.service.rpc, signed(plan, shares), bitcoin.audit)
        bitcoin.mine_empty(3)  # nobody mines it
        await bitcoin.service.watcher.sync_once()
        assert is_stuck(start, bitcoin.view.tip[1], bitcoin.config)
        bitcoin.node.call("setfeeestimate", Decimal("0.00004"))  # 4 sat/vB
        estimate = await estimate_fee_rate(bitcoin.service.rpc, bitcoin.config)
        rate = bumped_fee_rate(plan.fee_rate, estimate, bitcoin.config)
        assert rate == 4.0
        bumped = replace_withdrawal(plan, rate, bitcoin.key.custody.script)
        second = await broadcast(bitcoin.service.rpc, signed(bumped, shares), bitcoin.audit)
        assert bitcoin.node.call("getrawmempool") == [second]
        bitcoin.mine(1)
        await bitcoin.service.watcher.sync_once()
        assert paid(bitcoin.node, start, scripts) == dict.fromkeys(scripts, 1)
        with pytest.raises(RpcCallError):
            bitcoin.node.call("getrawtransaction", first)
        # The stuck original can never come back: its inputs are spent by the replacement.
        with pytest.raises(BroadcastRefused, match=r"missing-inputs|already"):
            await broadcast(bitcoin.service.rpc, signed(plan, shares), bitcoin.audit)
        await bitcoin.service.close()

    run(scenario())
