"""The chain view on synthetic blocks: confirmations, reorgs of any depth, the fork rule,
deposits reported once, the custody UTXO set, and the pause after an attested deposit is
reorged away. (The same behaviour through a real RPC and ZMQ is in test_watcher.py.)"""

from __future__ import annotations

import hashlib
import itertools
import struct

import pytest

from appliance.chain.custody import CustodyKey
from appliance.chain.transaction import (
    Block,
    BlockHeader,
    Outpoint,
    Transaction,
    TxIn,
    TxOut,
    sha256d,
)
from appliance.chain.view import ChainView, ConnectedBlock
from appliance.frost import SECP256K1_TR, trusted_dealer_keygen
from appliance.store import ChainRecords, Store
from tests.chain.helpers import CONFIG, Audit

_nonces = itertools.count()


def transaction(outputs: list[TxOut], spends: list[Outpoint] = ()) -> Transaction:  # type: ignore[assignment]
    inputs = [TxIn(p) for p in spends] or [TxIn(Outpoint(next(_nonces).to_bytes(32, "big"), 0))]
    return Transaction(2, tuple(inputs), tuple(outputs))


def coinbase() -> Transaction:
    tag = next(_nonces).to_bytes(8, "big")
    return Transaction(2, (TxIn(Outpoint(bytes(32), 0xFFFFFFFF), tag),), (TxOut(0, b"\x51"),))


class Chain:
    """Blocks by hash, built on any parent: a test makes whatever branches it needs."""

    def __init__(self) -> None:
        self.blocks: dict[str, tuple[int, Block]] = {}
        self.genesis = self.block(None, [])

    def block(self, parent: str | None, txs: list[Transaction]) -> str:
        previous = bytes.fromhex(parent)[::-1] if parent else bytes(32)
        height = self.blocks[parent][0] + 1 if parent else 0
        merkle = hashlib.sha256(next(_nonces).to_bytes(8, "big")).digest()
        raw = struct.pack("<i32s32sIII", 2, previous, merkle, 1_700_000_000 + height, 0, 0)
        block = Block(
            BlockHeader(2, previous, merkle, 0, 0, 0, raw), (coinbase(), *txs)
        )  # fmt: skip
        block_hash = sha256d(raw)[::-1].hex()
        self.blocks[block_hash] = (height, block)
        return block_hash

    def extend(self, parent: str, count: int, txs: list[Transaction] = ()) -> list[str]:  # type: ignore[assignment]
        hashes = []
        for i in range(count):
            parent = self.block(parent, list(txs) if i == 0 else [])
            hashes.append(parent)
        return hashes

    def switch(self, view: ChainView, hashes: list[str]) -> None:
        """Make `hashes` (consecutive, on any parent) the canonical tip, as a watcher would."""
        first_height = self.blocks[hashes[0]][0]
        view.apply(
            first_height - 1,
            [ConnectedBlock(h, self.blocks[h][0], self.blocks[h][1]) for h in hashes],
        )


@pytest.fixture
def setup(tmp_path):
    store = Store(tmp_path / "node.db")
    audit = Audit()
    view = ChainView(ChainRecords(store), CONFIG, audit)
    chain = Chain()
    chain.switch(view, [chain.genesis])
    _, package = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    key = CustodyKey(package.group_key, "regtest")
    yield view, chain, audit, key
    store.close()


def test_deposit_is_reported_once_at_six_confirmations(setup) -> None:
    view, chain, audit, key = setup
    alice = key.deposit("wire:alice")
    view.watch(alice)
    pay = transaction([TxOut(50_000, alice.script), TxOut(1_000, b"\x51")])
    blocks = chain.extend(chain.genesis, 5, [pay])
    chain.switch(view, blocks)
    assert view.take_confirmed_deposits() == []  # five confirmations
    chain.switch(view, chain.extend(blocks[-1], 1))
    (deposit,) = view.take_confirmed_deposits()
    assert (deposit.txid, deposit.vout, deposit.amount) == (pay.txid_hex, 0, 50_000)
    assert deposit.recipient == "wire:alice"
    assert deposit.block_hash == blocks[0]
    assert view.take_confirmed_deposits() == []
    chain.switch(view, chain.extend(view.tip[0], 10))
    assert view.take_confirmed_deposits() == []
    assert audit.events().count("chain.deposit-confirmed") == 1


def test_a_deposit_reorged_away_before_six_is_never_reported(setup) -> None:
    view, chain, audit, key = setup
    bob = key.deposit("wire:bob")
    view.watch(bob)
    pay = transaction([TxOut(70_000, bob.script)])
    doomed = chain.extend(chain.genesis, 4, [pay])
    chain.switch(view, doomed)
    winner = chain.extend(chain.genesis, 30)  # a longer branch without the deposit
    chain.switch(view, winner)
    assert view.tip == (winner[-1], 30)
    assert view.take_confirmed_deposits() == []
    assert "chain.reorg" in audit.events()
    assert view.minting_paused() is None


def test_a_reorg_raises_required_confirmations_to_twelve_for_the_window(setup) -> None:
    view, chain, _audit, key = setup
    carol = key.deposit("wire:carol")
    view.watch(carol)
    base = chain.extend(chain.genesis, 10)
    chain.switch(view, base)
    assert view.required_confirmations() == 6
    stale = chain.extend(base[-1], 1)
    chain.switch(view, stale)
    pay = transaction([TxOut(30_000, carol.script)])
    branch = chain.extend(base[-1], 7, [pay])  # replaces `stale`; the deposit has 7
    chain.switch(view, branch)
    assert view.required_confirmations() == 12
    assert view.take_confirmed_deposits() == []
    more = chain.extend(branch[-1], 5)
    chain.switch(view, more)
    assert [d.txid for d in view.take_confirmed_deposits()] == [pay.txid_hex]
    # The window (144 blocks from the reorg at height 11) passes: back to 6.
    chain.switch(view, chain.extend(more[-1], 144 - 12 + 1))
    assert view.required_confirmations() == 6


def test_a_competing_branch_raises_required_confirmations(setup) -> None:
    view, chain, audit, _key = setup
    chain.switch(view, chain.extend(chain.genesis, 20))
    assert view.required_confirmations() == 6
    assert view.record_fork("ab" * 32, 19, 2, "valid-fork")
    assert not view.record_fork("ab" * 32, 19, 2, "valid-fork")  # the same tip, not news
    assert view.required_confirmations() == 12
    assert audit.events().count("chain.fork") == 1


def test_deep_reorg_of_an_attested_deposit_pauses_minting(setup) -> None:
    view, chain, audit, key = setup
    dave = key.deposit("wire:dave")
    view.watch(dave)
    pay = transaction([TxOut(90_000, dave.script)])
    blocks = chain.extend(chain.genesis, 8, [pay])
    chain.switch(view, blocks)
    (deposit,) = view.take_confirmed_deposits()
    view.mark_attested(deposit.txid, deposit.vout)
    chain.switch(view, chain.extend(chain.genesis, 9))  # an 8-deep reorg
    assert view.minting_paused() is not None
    assert "was removed by a reorg" in view.minting_paused()
    assert ("chain.deposit-reorged", "failure") in [(e, o) for e, o, _ in audit]
    assert view.records.deposits("attested")[0].txid == deposit.txid  # never re-reported
    assert view.take_confirmed_deposits() == []


def test_a_reported_deposit_that_returns_in_another_block_is_reported_again(setup) -> None:
    view, chain, _audit, key = setup
    erin = key.deposit("wire:erin")
    view.watch(erin)
    pay = transaction([TxOut(40_000, erin.script)])
    first = chain.extend(chain.genesis, 6, [pay])
    chain.switch(view, first)
    (reported,) = view.take_confirmed_deposits()
    assert view.minting_paused() is None
    again = chain.extend(chain.genesis, 20, [pay])  # the same transaction, a new branch
    chain.switch(view, again)
    (returned,) = view.take_confirmed_deposits()
    assert returned.txid == reported.txid
    assert returned.block_hash == again[0]
    assert view.minting_paused() is None  # it was never attested


def test_custody_utxos_follow_spends_and_reorgs(setup) -> None:
    view, chain, _audit, key = setup
    view.watch(key.custody)
    view.watch(key.reservoir)
    fund = transaction([TxOut(100_000, key.custody.script), TxOut(5_000, key.reservoir.script)])
    funded = chain.extend(chain.genesis, 1, [fund])
    chain.switch(view, funded)
    assert sorted(o.amount for o in view.unspent()) == [5_000, 100_000]
    assert [o.amount for o in view.unspent(["reservoir"])] == [5_000]
    spend = transaction([TxOut(90_000, b"\x51")], [Outpoint(fund.txid, 0)])
    spent = chain.extend(funded[-1], 1, [spend])
    chain.switch(view, spent)
    assert [o.amount for o in view.unspent()] == [5_000]
    chain.switch(view, chain.extend(funded[-1], 2))  # the spend is reorged away
    assert sorted(o.amount for o in view.unspent()) == [5_000, 100_000]


def test_a_new_block_must_come_with_its_contents(setup) -> None:
    view, chain, _, _ = setup
    (block_hash,) = chain.extend(chain.genesis, 1)
    with pytest.raises(ValueError, match="was not fetched"):
        view.apply(0, [ConnectedBlock(block_hash, 1, None)])
    assert view.tip == (chain.genesis, 0)  # nothing half-applied


def test_known_blocks_switch_back_without_fetching(setup) -> None:
    view, chain, _, key = setup
    view.watch(key.custody)
    fund = transaction([TxOut(20_000, key.custody.script)])
    a = chain.extend(chain.genesis, 2, [fund])
    chain.switch(view, a)
    chain.switch(view, chain.extend(chain.genesis, 3))
    assert view.unspent() == []
    view.apply(0, [ConnectedBlock(h, chain.blocks[h][0], None) for h in a])  # known: no body
    assert [o.amount for o in view.unspent()] == [20_000]
    assert view.unspent()[0].block_hash == a[0]
