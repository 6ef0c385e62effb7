"""The chain interface against Bitcoin Core's own bitcoind, through its real RPC and ZMQ: a
signing node's bitcoind peered over P2P with a miner that funds and mines. Deposits and
confirmations under reorgs and real competing branches, headers that arrive before their
blocks, a silent ZMQ stream, bitcoind in initial block download, behind its headers, with a
stale tip, hung, stopped and restarted with a new cookie, and withdrawals that bitcoind
accepts, refuses or lets replace."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import EVENTS
from appliance.chain.address import script_of_address
from appliance.chain.broadcast import BroadcastRefused, broadcast
from appliance.chain.custody import CustodyKey
from appliance.chain.fees import bumped_fee_rate, estimate_fee_rate, is_stuck, relay_fees
from appliance.chain.service import ChainService
from appliance.chain.transaction import Transaction, TxOut
from appliance.chain.unit import ACTIONS, BitcoindUnit, unit_installed
from appliance.chain.withdrawal import (
    Payout,
    Spendable,
    WithdrawalPlan,
    build_withdrawal,
    replace_withdrawal,
)
from appliance.errors import CommandError
from appliance.frost import SECP256K1_TR, KeyShare, trusted_dealer_keygen
from appliance.store import Store
from tests.chain.helpers import CONFIG, Audit
from tests.frost.helpers import sign_with
from tools.bitcoind import Bitcoind, BitcoinNetwork, RpcCallError
from tools.devcluster import free_ports, wait_until


@pytest.fixture
def network(tmp_path: Path) -> Iterator[BitcoinNetwork]:
    with BitcoinNetwork(tmp_path / "bitcoin", nodes=1) as bitcoin_network:
        yield bitcoin_network


@pytest.fixture(scope="module")
def custody() -> tuple[dict[int, KeyShare], bytes]:
    shares, package = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    return shares, package.group_key


class Bitcoin:
    """A ChainService of one signing node following its own bitcoind, and ways to drive
    the network that bitcoind is part of."""

    def __init__(self, network: BitcoinNetwork, path: Path, group_key: bytes, **config: Any):
        self.network = network
        self.node = network.nodes[0]  # the engine's own bitcoind
        self.store = Store(path / "node.db")
        self.audit = Audit()
        self.changed = asyncio.Event()
        self.config = dataclasses.replace(
            CONFIG,
            **{
                "rpc_url": self.node.rpc_url,
                "rpc_user": None,
                "cookie_file": self.node.cookie_path,
                "zmq_block": self.node.zmq_endpoint,
                **config,
            },
        )
        self.service = ChainService(
            self.config, self.store, self.audit, on_change=lambda _: self.changed.set()
        )
        self.view = self.service.view
        self.key = CustodyKey(group_key, "regtest")
        self.service.watch_custody(group_key)

    async def caught_up(self, within: float = 15.0) -> None:
        """Wait until the view's tip is the node's best block."""
        best = self.node.best()
        async with asyncio.timeout(within):  # checked every 50 ms: bounded
            while self.view.tip is None or self.view.tip[0] != best:
                await asyncio.sleep(0.05)

    def mine(self, blocks: int = 1) -> list[str]:
        return self.network.mine(blocks)

    def mine_empty(self, blocks: int) -> list[str]:
        """Blocks without the mempool's transactions (a stuck transaction stays stuck)."""
        return self.network.mine(blocks, empty=True)

    def pay(self, address: str, btc: str) -> str:
        return str(self.network.call("sendtoaddress", address, btc))

    def events(self, name: str) -> list[str]:
        return [message for event, _, message in self.audit if event == name]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def bitcoin(network, tmp_path, custody) -> Iterator[Bitcoin]:
    chain = Bitcoin(network, tmp_path, custody[1])
    yield chain
    chain.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# ---- deposits, confirmations, reorgs ----------------------------------------------------


def test_a_deposit_is_reported_once_at_six_confirmations(network, tmp_path, custody) -> None:
    # Polling is slowed to a minute: only bitcoind's ZMQ can bring these blocks in time.
    bitcoin = Bitcoin(network, tmp_path, custody[1], poll_seconds=60)

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
            paid = bitcoin.node.call("getrawtransaction", txid, True, deposit.block_hash)
            assert paid["vout"][deposit.vout]["scriptPubKey"]["hex"] == output.script.hex()
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
            # The miner drops the deposit's block and mines a longer branch without it; the
            # node's bitcoind follows it over P2P, and the deposit goes back to the mempools.
            bitcoin.network.miner.call("invalidateblock", deposit_block)
            bitcoin.mine_empty(10)
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


def test_a_competing_branch_raises_required_confirmations(bitcoin, tmp_path) -> None:
    """A rival miner mines apart at the tip's height and then reaches the node: equal work,
    so the node keeps its first-seen tip and lists the rival branch among its tips."""
    network, node = bitcoin.network, bitcoin.node
    with Bitcoind(tmp_path / "rival") as rival:
        rival.connect(network.miner)
        wait_until(lambda: rival.best() == network.miner.best(), 30, "the rival in sync")
        rival.disconnect(network.miner)

        async def scenario() -> None:
            watcher = bitcoin.service.watcher
            _, address, _ = await bitcoin.service.watch_deposit(
                bitcoin.key.group_key, "wire:carol", None
            )
            bitcoin.pay(address, "0.1")
            (*_, tip) = bitcoin.mine(6)
            (rival_tip,) = rival.call("generatetoaddress", 1, address)
            rival.connect(node)
            wait_until(
                lambda: any(t["hash"] == rival_tip for t in node.call("getchaintips")),
                30, "the rival branch reaching the node",
            )  # fmt: skip
            assert (await watcher.sync_once()).synced
            assert bitcoin.view.tip[0] == tip == node.best()  # never canonical here
            assert bitcoin.view.required_confirmations() == 12
            assert "chain.fork" in bitcoin.audit.events()
            assert bitcoin.view.take_confirmed_deposits() == []  # 6 of 12
            bitcoin.mine(6)
            await watcher.sync_once()
            assert len(bitcoin.view.take_confirmed_deposits()) == 1
            await bitcoin.service.close()

        run(scenario())


def test_headers_before_their_blocks_are_no_competing_branch(bitcoin) -> None:
    """bitcoind lists a header it has not got the block of yet (and blocks it is still
    connecting) as a tip of its own, one past the active tip: the chain going on, not a
    fork, so deposits still need six confirmations."""
    network, node = bitcoin.network, bitcoin.node

    async def scenario() -> None:
        watcher = bitcoin.service.watcher
        _, address, _ = await bitcoin.service.watch_deposit(
            bitcoin.key.group_key, "wire:chris", None
        )
        bitcoin.pay(address, "0.1")
        bitcoin.mine(5)
        assert (await watcher.sync_once()).synced
        # The next block, built on the miner but not submitted: its header reaches the
        # node first, the block itself later.
        block = network.miner.call("generateblock", network.mining_address(), [], False)
        node.call("submitheader", block["hex"][:160])
        statuses = {t["status"] for t in node.call("getchaintips")}
        assert statuses & {"headers-only", "valid-headers"}, statuses
        assert (await watcher.sync_once()).synced
        assert bitcoin.view.required_confirmations() == 6
        assert node.call("submitblock", block["hex"]) is None
        network.miner.call("submitblock", block["hex"])
        await watcher.sync_once()
        assert bitcoin.view.tip[0] == block["hash"]
        assert len(bitcoin.view.take_confirmed_deposits()) == 1  # at six
        assert "chain.fork" not in bitcoin.audit.events()
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
        bitcoin.network.miner.call("invalidateblock", deposit_block)
        bitcoin.mine_empty(9)  # a 7-deep reorg that leaves the deposit out, over P2P
        await watcher.sync_once()
        assert bitcoin.view.minting_paused() is not None
        assert ("chain.deposit-reorged", "failure") in [(e, o) for e, o, _ in bitcoin.audit]
        assert bitcoin.service.status()["minting_paused"] is not None
        await bitcoin.service.close()

    run(scenario())


def test_a_silent_zmq_stream_is_caught_up_by_polling(network, tmp_path, custody) -> None:
    # The engine listens where no bitcoind publishes: polling alone must find the blocks.
    silent = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    bitcoin = Bitcoin(network, tmp_path, custody[1], poll_seconds=0.5, zmq_block=silent)

    async def scenario() -> None:
        await bitcoin.service.start()
        try:
            await bitcoin.caught_up()
            _, address, _ = await bitcoin.service.watch_deposit(custody[1], "wire:erin", None)
            bitcoin.pay(address, "0.3")
            bitcoin.mine(6)
            await bitcoin.caught_up()
            assert len(bitcoin.view.take_confirmed_deposits()) == 1
            assert bitcoin.service.watcher.notifications == 0  # polling alone found it
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


def test_bitcoind_states_that_stop_signing(tmp_path, custody) -> None:
    """Each state of a real bitcoind that must stop signing, in the order a node can meet
    them: initial block download, a stale tip, headers it has not validated, hung (SIGSTOP),
    stopped; and each time back to synced (once with a new cookie)."""
    with BitcoinNetwork(tmp_path / "bitcoin", nodes=1, mature=False) as network:
        bitcoin = Bitcoin(network, tmp_path, custody[1], rpc_timeout_seconds=2.0)
        node, miner = bitcoin.node, network.miner

        async def scenario() -> None:
            watcher = bitcoin.service.watcher
            state = await watcher.sync_once()  # a new chain: only the genesis block of 2011
            assert state.name == "initial-block-download"
            with pytest.raises(Exception, match="initial block download"):
                watcher.require_synced()
            miner.call("setmocktime", int(time.time()) - 3 * 3600)
            bitcoin.mine(101)  # three hours old: out of IBD, past the tip's age limit
            state = await watcher.sync_once()
            assert state.name == "behind"
            assert state.reason.startswith("bitcoind's tip is 10")  # 10800 s and a little
            miner.call("setmocktime", 0)
            bitcoin.mine(1)
            assert (await watcher.sync_once()).synced

            network.isolate(node)  # the node hears of 50 blocks by their headers only
            hashes = miner.call("generatetoaddress", 50, network.mining_address())
            for block_hash in hashes:
                node.call("submitheader", miner.call("getblockheader", block_hash, False))
            state = await watcher.sync_once()
            assert (state.name, state.reason) == (
                "behind",
                "bitcoind has 50 headers it has not validated",
            )
            network.rejoin(node)
            network.sync_blocks()
            assert (await watcher.sync_once()).synced
            assert bitcoin.view.required_confirmations() == 6  # headers ahead are no fork

            node.pause()  # hung: its sockets stay open, nothing answers
            try:
                async with asyncio.timeout(10):  # the RPC timeout (2 s) bounds it
                    state = await watcher.sync_once()
            finally:
                node.resume()
            assert state.name == "unreachable"
            assert "did not answer getblockchaininfo within 2 s" in state.reason
            assert (await watcher.sync_once()).synced

            node.stop()
            state = await watcher.sync_once()
            assert state.name == "unreachable"
            assert (
                state.reason == f"bitcoind is not running: it has no cookie at {node.cookie_path}"
            )
            old_cookie = node.cookie_path.read_text() if node.cookie_path.exists() else None
            node.start()  # a new cookie, read again on the next call
            assert node.cookie_path.read_text() != old_cookie
            assert (await watcher.sync_once()).synced
            states = [m.split(":")[0] for m in bitcoin.events("chain.sync-state")]
            assert states == [
                "bitcoind is initial-block-download",
                "bitcoind is behind",
                "bitcoind is synced",
                "bitcoind is behind",
                "bitcoind is synced",
                "bitcoind is unreachable",
                "bitcoind is synced",
                "bitcoind is unreachable",
                "bitcoind is synced",
            ]
            await bitcoin.service.close()

        run(scenario())
        bitcoin.close()


class PathUnits(threading.Thread):
    """Stands in for the image's wire-bitcoind-<action>.path units, which need systemd as
    the system's manager (the QEMU cluster runs the real ones): when a request file is
    written, does to the test's bitcoind what `systemctl <action> bitcoind.service` does."""

    def __init__(self, requests: Path, node: Bitcoind, acting: bool = True) -> None:
        super().__init__(daemon=True)
        self.requests, self.node, self.acting = requests, node, acting
        self.done: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        seen: dict[str, float] = {}
        while not self.halt.wait(0.05):
            for action in ACTIONS:
                path = self.requests / f"bitcoind-{action}"
                mtime = path.stat().st_mtime if path.exists() else None
                if mtime is None or seen.get(action) == mtime:
                    continue
                seen[action] = mtime
                if self.acting:
                    if action != "start":
                        self.node.stop()
                    if action != "stop" and not self.node.running:
                        self.node.start()
                self.done.append(action)


def test_an_admins_request_stops_starts_and_restarts_bitcoind(tmp_path, custody) -> None:
    with BitcoinNetwork(tmp_path / "bitcoin", nodes=1) as network:
        bitcoin = Bitcoin(network, tmp_path, custody[1], rpc_timeout_seconds=2.0)
        requests = tmp_path / "run"
        requests.mkdir()
        units = PathUnits(requests, bitcoin.node)
        units.start()
        watcher, rpc = bitcoin.service.watcher, bitcoin.service.rpc
        records: list[tuple[str, str, str]] = []

        def audit(event: str, outcome: str, message: str, **fields: str) -> None:
            EVENTS[event]  # the catalog's: an event it lacks fails there, as journald would
            records.append((event, outcome, message))

        async def scenario() -> None:
            assert (await watcher.sync_once()).synced
            elsewhere = BitcoindUnit(requests, rpc, watcher, False, audit)
            with pytest.raises(CommandError, match="not run by the appliance") as refused:
                await elsewhere.request("stop", "maintenance", "alice")
            assert refused.value.code == "not-appliance"
            unit = BitcoindUnit(requests, rpc, watcher, True, audit, pause=0.1)
            with pytest.raises(CommandError, match="stop, start, restart"):
                await unit.request("kill", "maintenance", "alice")
            assert list(requests.iterdir()) == [], "a refused request writes nothing"

            stopped = await unit.request("stop", "maintenance", "alice")
            assert (stopped["action"], stopped["completed"]) == ("stop", True)
            assert stopped["bitcoind"]["state"] == "unreachable"
            assert not watcher.state.synced  # the node signs nothing from here on
            wait_until(lambda: not bitcoin.node.running, 60, "bitcoind exited")

            started = await unit.request("start", "maintenance", "alice")
            assert started["completed"]
            assert started["bitcoind"]["state"] == "synced"
            assert watcher.state.synced

            pid = bitcoin.node.process.pid
            restarted, busy = await asyncio.gather(
                *(unit.request("restart", "maintenance", "alice") for _ in range(2)),
                return_exceptions=True,
            )
            assert isinstance(busy, CommandError)
            assert busy.code == "busy"
            assert restarted["completed"]
            assert restarted["bitcoind"]["state"] == "synced"
            assert bitcoin.node.process.pid != pid
            assert units.done == ["stop", "start", "restart"]
            assert [(e, o) for e, o, _ in records] == [
                ("bitcoind.stop", "success"),
                ("bitcoind.start", "success"),
                ("bitcoind.restart", "success"),
            ]
            assert "asked by alice (maintenance)" in records[0][2]

            units.acting = False  # a path unit that does nothing: said, not waited out forever
            slow = BitcoindUnit(requests, rpc, watcher, True, audit, settle_seconds=1.0)
            unanswered = await slow.request("stop", "maintenance", "alice")
            assert unanswered["completed"] is False
            assert records[-1][:2] == ("bitcoind.stop", "incomplete")
            assert bitcoin.node.running
            await bitcoin.service.close()

        try:
            run(scenario())
        finally:
            units.halt.set()
            units.join()
            bitcoin.close()


def test_the_appliance_is_told_by_its_path_units(tmp_path) -> None:
    assert not unit_installed(tmp_path)
    for action in ACTIONS[:2]:
        (tmp_path / f"wire-bitcoind-{action}.path").touch()
    assert not unit_installed(tmp_path)
    (tmp_path / "wire-bitcoind-restart.path").touch()
    assert unit_installed(tmp_path)
    image_units = Path(__file__).parents[2] / "image/tree/usr/lib/systemd/system"
    assert unit_installed(image_units)
    for action in ACTIONS:
        path_unit = (image_units / f"wire-bitcoind-{action}.path").read_text()
        assert f"PathModified=/run/wire-mpc/engine/bitcoind-{action}\n" in path_unit
        assert f"Unit=wire-bitcoind@{action}.service\n" in path_unit


# ---- withdrawals ------------------------------------------------------------------------


def users(bitcoin: Bitcoin, count: int) -> list[bytes]:
    """Scripts of addresses bitcoind's wallet hands out (each of its kinds in turn)."""
    kinds = ("bech32m", "bech32", "legacy", "p2sh-segwit")
    return [
        script_of_address(bitcoin.network.call("getnewaddress", "", kinds[i % 4]), "regtest")
        for i in range(count)
    ]


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


def paid(node: Bitcoind, since_height: int, scripts: list[bytes]) -> dict[bytes, int]:
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
        payouts = [Payout(f"burn-{i}", s, 30_000_000) for i, s in enumerate(users(bitcoin, 3))]
        rate = await estimate_fee_rate(bitcoin.service.rpc, bitcoin.config)
        plan = build_withdrawal(
            payouts, *first_and_rest(spendables), bitcoin.key.custody.script, rate
        )
        assert len(plan.spent) == 3  # the deposit- and reservoir-tweaked keys sign too
        tx = signed(plan, shares)
        txid = await broadcast(bitcoin.service.rpc, tx, bitcoin.audit)
        decoded = bitcoin.node.call("getrawtransaction", txid, True)
        assert all(i["sequence"] < 0xFFFFFFFE for i in decoded["vin"])  # signals BIP125
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
        payouts = [Payout("burn-x", users(bitcoin, 1)[0], 10_000_000)]
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
        relay = await relay_fees(bitcoin.service.rpc)  # 0.1 sat/vB on this bitcoind
        cheap_rate = relay.minimum / 2
        cheap = signed(
            build_withdrawal(
                payouts, *first_and_rest(spendables), bitcoin.key.custody.script, cheap_rate
            ),
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
        scripts = users(bitcoin, 4)
        payouts = [Payout(f"burn-{i}", s, 5_000_000) for i, s in enumerate(scripts)]
        spendables = first_and_rest(bitcoin.view.spendables())
        plan = build_withdrawal(payouts, *spendables, bitcoin.key.custody.script, 1.0)
        first = await broadcast(bitcoin.service.rpc, signed(plan, shares), bitcoin.audit)
        bitcoin.mine_empty(3)  # nobody mines it
        await bitcoin.service.watcher.sync_once()
        assert is_stuck(start, bitcoin.view.tip[1], bitcoin.config)
        # bitcoind has seen too few transactions to estimate: the configured floor is used.
        assert "errors" in bitcoin.node.call("estimatesmartfee", 6, "conservative")
        estimate = await estimate_fee_rate(bitcoin.service.rpc, bitcoin.config)
        assert estimate == bitcoin.config.fee_floor_sat_vb
        relay = await relay_fees(bitcoin.service.rpc)
        rate = bumped_fee_rate(plan.fee_rate, estimate, bitcoin.config, relay.incremental)
        assert rate == 1.25  # a quarter more: above bitcoind's increment (0.1 sat/vB)
        bumped = replace_withdrawal(plan, rate, bitcoin.key.custody.script)
        second = await broadcast(bitcoin.service.rpc, signed(bumped, shares), bitcoin.audit)
        assert bitcoin.node.call("getrawmempool") == [second]
        bitcoin.mine(1)
        await bitcoin.service.watcher.sync_once()
        assert paid(bitcoin.node, start, scripts) == dict.fromkeys(scripts, 1)
        with pytest.raises(RpcCallError, match="No such mempool"):
            bitcoin.node.call("getrawtransaction", first)
        # The stuck original can never come back: its inputs are spent by the replacement.
        with pytest.raises(BroadcastRefused, match=r"missing-inputs|already"):
            await broadcast(bitcoin.service.rpc, signed(plan, shares), bitcoin.audit)
        await bitcoin.service.close()

    run(scenario())


def test_every_address_bitcoinds_wallet_hands_out_is_a_burn_destination(network) -> None:
    """Legacy and P2SH addresses on regtest carry testnet's version bytes; bech32 and
    bech32m ones the bcrt prefix. Each reads as the script bitcoind itself pays to."""
    for kind in ("legacy", "p2sh-segwit", "bech32", "bech32m"):
        address = network.call("getnewaddress", "", kind)
        wanted = network.call("getaddressinfo", address)["scriptPubKey"]
        assert script_of_address(address, "regtest").hex() == wanted, kind
        with pytest.raises(ValueError, match="not"):
            script_of_address(address, "mainnet")
