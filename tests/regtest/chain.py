"""The node's books on the chain: every block it knows (a tree), the active branch, and that
branch's UTXO set and transaction index with undo data for reorgs; the kernel judges validity."""

from __future__ import annotations

from dataclasses import dataclass, field

from .blocks import block_work
from .encoding import ParsedBlock, ParsedTx
from .scripts import is_unspendable
from .validation import Coin

__all__ = ["BlockRecord", "BlockTree", "ChainState", "Outpoint"]

Outpoint = tuple[bytes, int]  # (txid in internal byte order, output index)


@dataclass(eq=False)
class BlockRecord:
    """A known block and what the node learnt about it."""

    block: ParsedBlock
    height: int
    parent: BlockRecord | None
    sequence: int  # arrival order: the tie-break between branches of equal work
    chainwork: int
    median_time_past: int
    children: list[BlockRecord] = field(default_factory=list)
    # invalidateblock on this block, or the kernel refused it (the reason says which).
    failed: bool = False
    failure_reason: str = ""
    failed_ancestor: bool = False
    # Set once the block was connected: the coins it spent and each transaction's fee.
    undo: list[tuple[Outpoint, Coin]] | None = None
    fees: list[int | None] | None = None

    @property
    def hash(self) -> bytes:
        return self.block.hash

    @property
    def raw(self) -> bytes:
        return self.block.raw

    @property
    def hash_hex(self) -> str:
        return self.block.hash_hex

    @property
    def invalid(self) -> bool:
        return self.failed or self.failed_ancestor

    def descendants(self) -> list[BlockRecord]:
        found, pending = [], list(self.children)
        while pending:
            record = pending.pop()
            found.append(record)
            pending.extend(record.children)
        return found

    def ancestors(self) -> list[BlockRecord]:
        found, record = [], self.parent
        while record is not None:
            found.append(record)
            record = record.parent
        return found


class BlockTree:
    """All blocks the node stored, by hash, with their validity marks."""

    def __init__(self, genesis: ParsedBlock) -> None:
        root = BlockRecord(
            genesis,
            0,
            None,
            0,
            block_work(genesis.header.bits),
            genesis.header.time,
        )
        self.genesis = root
        self.by_hash: dict[bytes, BlockRecord] = {genesis.hash: root}
        self._arrivals = 1

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self.by_hash

    def get(self, block_hash: bytes) -> BlockRecord | None:
        return self.by_hash.get(block_hash)

    def add(self, block: ParsedBlock) -> BlockRecord:
        """Stores a block whose parent is known (the caller checked)."""
        parent = self.by_hash[block.header.prev_hash]
        times = [block.header.time]
        walker: BlockRecord | None = parent
        while walker is not None and len(times) < 11:
            times.append(walker.block.header.time)
            walker = walker.parent
        record = BlockRecord(
            block,
            parent.height + 1,
            parent,
            self._arrivals,
            parent.chainwork + block_work(block.header.bits),
            sorted(times)[len(times) // 2],
            failed_ancestor=parent.invalid,
        )
        self._arrivals += 1
        parent.children.append(record)
        self.by_hash[block.hash] = record
        return record

    def best(self) -> BlockRecord:
        """The valid block with the most work; between equals, the one that came first."""
        best = self.genesis
        for record in self.by_hash.values():
            if record.invalid:
                continue
            if (record.chainwork, -record.sequence) > (best.chainwork, -best.sequence):
                best = record
        return best

    def mark_failed(self, record: BlockRecord, reason: str) -> None:
        record.failed = True
        record.failure_reason = reason
        for descendant in record.descendants():
            descendant.failed_ancestor = True

    def clear_failures(self, record: BlockRecord) -> None:
        """reconsiderblock: the block, its descendants and its ancestors become candidates
        again (the kernel will judge them anew)."""
        for touched in [record, *record.ancestors(), *record.descendants()]:
            touched.failed = False
            touched.failure_reason = ""
        self._recompute_inherited(self.genesis)

    def _recompute_inherited(self, root: BlockRecord) -> None:
        pending = [(root, False)]
        while pending:
            record, inherited = pending.pop()
            record.failed_ancestor = inherited
            pending.extend((child, record.invalid) for child in record.children)

    def tips(self) -> list[BlockRecord]:
        return [record for record in self.by_hash.values() if not record.children]


class ChainState:
    """The active chain with its UTXO set and transaction index."""

    def __init__(self, genesis: BlockRecord) -> None:
        # The genesis coinbase is not spendable in bitcoind, so it never enters the UTXO set.
        self.active: list[BlockRecord] = [genesis]
        self.utxos: dict[Outpoint, Coin] = {}
        self.tx_index: dict[bytes, tuple[BlockRecord, int]] = {}
        genesis.undo, genesis.fees = [], [None]

    @property
    def tip(self) -> BlockRecord:
        return self.active[-1]

    @property
    def height(self) -> int:
        return len(self.active) - 1

    def contains(self, record: BlockRecord) -> bool:
        return record.height < len(self.active) and self.active[record.height] is record

    def median_time_past_at(self, height: int) -> int:
        return self.active[height].median_time_past

    def connect(self, record: BlockRecord) -> None:
        """Applies a block the kernel connected on top of the tip."""
        if record.parent is not self.tip:
            raise RuntimeError("connect: block does not extend the active tip")
        undo: list[tuple[Outpoint, Coin]] = []
        fees: list[int | None] = []
        for position, ptx in enumerate(record.block.txs):
            coinbase = position == 0
            if coinbase:
                fees.append(None)
            else:
                value_in = 0
                for inp in ptx.tx.vin:
                    outpoint = (inp.txid[::-1], inp.vout)
                    coin = self.utxos.pop(outpoint, None)
                    if coin is None:
                        raise RuntimeError(
                            f"connect: the kernel accepted a spend of {inp.txid.hex()}:"
                            f"{inp.vout} the node's UTXO set does not have"
                        )
                    undo.append((outpoint, coin))
                    value_in += coin.value
                fees.append(value_in - sum(out.value for out in ptx.tx.vout))
            self._add_outputs(ptx, record.height, coinbase)
            self.tx_index[ptx.txid] = (record, position)
        record.undo, record.fees = undo, fees
        self.active.append(record)

    def _add_outputs(self, ptx: ParsedTx, height: int, coinbase: bool) -> None:
        for n, out in enumerate(ptx.tx.vout):
            spk = out.script_pubkey.data
            if not is_unspendable(spk):
                self.utxos[(ptx.txid, n)] = Coin(out.value, spk, height, coinbase)

    def disconnect(self) -> BlockRecord:
        """Undoes the tip; returns it."""
        record = self.active.pop()
        if record.undo is None:
            raise RuntimeError("disconnect: block has no undo data")
        for ptx in reversed(record.block.txs):
            for n in range(len(ptx.tx.vout)):
                self.utxos.pop((ptx.txid, n), None)
            entry = self.tx_index.get(ptx.txid)
            if entry is not None and entry[0] is record:
                del self.tx_index[ptx.txid]
        for outpoint, coin in record.undo:
            self.utxos[outpoint] = coin
        return record
