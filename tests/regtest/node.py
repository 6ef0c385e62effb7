"""The regtest node: block tree, active chain, mempool, wallet and ZMQ notifications behind one
lock, and the operations bitcoind's RPCs perform on them; the kernel connects every block."""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import rpc_errors as codes
from .blocks import (
    COINBASE_MATURITY,
    MAX_BLOCK_WEIGHT,
    REGTEST_BITS,
    assemble_block,
    bits_to_target,
    block_subsidy,
    build_coinbase,
)
from .chain import BlockRecord, BlockTree, ChainState, Outpoint
from .encoding import (
    DecodeError,
    ParsedBlock,
    ParsedTx,
    decode_hex,
    merkle_root,
    parse_block,
    parse_transaction,
    to_parsed,
)
from .kernel import BlockRejected, ConsensusKernel, first_invalid_input
from .mempool import Admission, Mempool, MempoolEntry, evaluate
from .notifications import ZmqPublisher
from .rpc_errors import RpcError
from .validation import (
    Coin,
    TxRejected,
    check_transaction,
    check_tx_inputs,
    fee_for,
    is_final,
    script_failure_reason,
    sequence_locks_met,
)
from .wallet import PaymentError, Wallet, WalletCoin

__all__ = ["RegtestNode", "TrialAcceptance"]

log = logging.getLogger(__name__)

COINBASE_RESERVED_WEIGHT = 4000
MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60
WALLET_FEE_RATE = 2.0  # sat/vB
MAX_FEE_EXCEEDED = "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)"


@dataclass
class TrialAcceptance:
    ptx: ParsedTx
    entry: MempoolEntry | None
    rejection: TxRejected | None
    max_fee_exceeded: bool = False


class RegtestNode:
    """All node state. Callers hold `lock` around every use (the RPC server does)."""

    def __init__(
        self,
        datadir: Path,
        *,
        zmq_host: str = "127.0.0.1",
        zmq_port: int = 0,
        zmq_high_water_mark: int = 1000,
        full_rbf: bool = False,
    ) -> None:
        self.lock = threading.RLock()
        self.directory = datadir / "regtest"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.full_rbf = full_rbf
        self.started = time.time()
        self.fee_estimate: int | None = None  # sat/kvB, set by setfeeestimate
        self.initial_block_download = False
        self.headers_override: int | None = None
        self.kernel = ConsensusKernel(self.directory / "kernel")
        self.tree = BlockTree(parse_block(self.kernel.genesis))
        self.chain = ChainState(self.tree.genesis)
        self.mempool = Mempool()
        self.wallet = Wallet(self.directory / "wallet.json")
        self.publisher = ZmqPublisher(zmq_host, zmq_port, high_water_mark=zmq_high_water_mark)
        self.size_on_disk = 0
        self._invalidated: set[bytes] = set()
        self._notify = False  # nothing is published while the stored chain is replayed
        self._load()
        self._block_store = (self.directory / "blocks.dat").open("ab")
        self._notify = True

    # ---- persistence ----------------------------------------------------------------

    def _load(self) -> None:
        store = self.directory / "blocks.dat"
        if store.exists():
            data = store.read_bytes()
            offset = 0
            while offset + 4 <= len(data):
                (length,) = struct.unpack_from("<I", data, offset)
                raw = data[offset + 4 : offset + 4 + length]
                if len(raw) != length:
                    break
                try:
                    block = parse_block(raw)
                except DecodeError:
                    break
                offset += 4 + length
                if block.hash not in self.tree and block.header.prev_hash in self.tree:
                    self.tree.add(block)
                    self.size_on_disk += len(raw)
            if offset != len(data):  # a record cut short by a crash
                with store.open("r+b") as handle:
                    handle.truncate(offset)
        marks = self.directory / "invalidated.json"
        if marks.exists():
            for text in json.loads(marks.read_text()):
                record = self.tree.get(bytes.fromhex(text)[::-1])
                if record is not None:
                    self._invalidated.add(record.hash)
                    self.tree.mark_failed(record, "")
        self._activate()
        saved = self.directory / "mempool.json"
        if saved.exists():
            for text, entered in json.loads(saved.read_text()):
                try:
                    admission = evaluate(
                        parse_transaction(bytes.fromhex(text)),
                        self.mempool,
                        self.chain,
                        now=int(entered),
                        full_rbf=self.full_rbf,
                    )
                except (TxRejected, DecodeError):
                    continue
                self.mempool.admit(admission)
            saved.unlink()

    def _save_invalidated(self) -> None:
        marks = self.directory / "invalidated.json"
        temporary = marks.with_suffix(".tmp")
        temporary.write_text(json.dumps(sorted(h[::-1].hex() for h in self._invalidated)))
        os.replace(temporary, marks)

    def close(self) -> None:
        saved = [[e.ptx.raw.hex(), e.time] for e in self.mempool.in_order()]
        (self.directory / "mempool.json").write_text(json.dumps(saved))
        self._block_store.close()
        self.publisher.close()
        self.kernel.close()

    def _store(self, block: ParsedBlock) -> BlockRecord:
        record = self.tree.add(block)
        self._block_store.write(struct.pack("<I", len(block.raw)) + block.raw)
        self._block_store.flush()
        self.size_on_disk += len(block.raw)
        return record

    # ---- chain activation -------------------------------------------------------------

    def _activate(self, hint: BlockRecord | None = None) -> None:
        """Makes the most-work valid branch active: the kernel connects it first; a block it
        refuses is marked failed and the next best branch is tried."""
        while True:
            if hint is not None and hint.parent is self.chain.tip and not hint.invalid:
                best = hint  # a block on the tip outweighs everything else known
            else:
                best = self.tree.best()
            hint = None
            target = [best, *best.ancestors()][::-1]
            try:
                self.kernel.follow(target)
            except BlockRejected as rejected:
                record = self.tree.by_hash[rejected.block_hash]
                log.info("kernel refused block %s: %s", record.hash_hex, rejected.reason)
                self.tree.mark_failed(record, rejected.reason)
                continue
            if best is not self.chain.tip:
                self._switch_to(target)
            return

    def _switch_to(self, target: list[BlockRecord]) -> None:
        fork = min(len(target), len(self.chain.active)) - 1
        while self.chain.active[fork] is not target[fork]:
            fork -= 1
        disconnected = []
        while self.chain.height > fork:
            disconnected.append(self.chain.disconnect())
        for record in target[fork + 1 :]:
            self.chain.connect(record)
            self.mempool.remove_for_block(record.block.txs)
            if self._notify:
                for ptx in record.block.txs:
                    self.publisher.transaction(ptx.raw)
                self.publisher.block(record.hash, record.raw)
        if disconnected:
            self._resurrect(disconnected[::-1])

    def _resurrect(self, disconnected: list[BlockRecord]) -> None:
        """After a reorg: the disconnected blocks' transactions go back to the mempool,
        then what was there is checked again against the new chain."""
        previous = self.mempool.clear()
        returning = [
            ptx
            for record in disconnected
            for ptx in record.block.txs[1:]
            if ptx.txid not in self.chain.tx_index
        ]
        now = int(time.time())
        for ptx in returning:
            if self._readmit(ptx, now) and self._notify:
                self.publisher.transaction(ptx.raw)
        for entry in previous:
            self._readmit(entry.ptx, entry.time)

    def _readmit(self, ptx: ParsedTx, entered: int) -> bool:
        try:
            admission = evaluate(
                ptx,
                self.mempool,
                self.chain,
                now=entered,
                full_rbf=self.full_rbf,
                allow_replacement=False,
                scripts_known_valid=True,  # checked on first acceptance or in a block
            )
        except TxRejected:
            return False
        self.mempool.admit(admission)
        return True

    # ---- transactions -----------------------------------------------------------------

    def accept_transaction(self, ptx: ParsedTx, *, max_feerate: int = 0) -> MempoolEntry:
        """sendrawtransaction's acceptance: raises TxRejected, or RpcError for maxfeerate."""
        admission = evaluate(
            ptx, self.mempool, self.chain, now=int(time.time()), full_rbf=self.full_rbf
        )
        if max_feerate and admission.entry.fee > fee_for(max_feerate, ptx.vsize):
            raise RpcError(codes.VERIFY_ERROR, MAX_FEE_EXCEEDED)
        self.mempool.admit(admission)
        if self._notify:
            self.publisher.transaction(ptx.raw)
        return admission.entry

    def test_accept(self, ptxs: list[ParsedTx], *, max_feerate: int) -> list[TrialAcceptance]:
        """testmempoolaccept: each transaction is tried as if the ones before it had been
        accepted; the mempool is left as it was."""
        results = []
        added: list[MempoolEntry] = []
        evicted: list[MempoolEntry] = []
        try:
            for ptx in ptxs:
                try:
                    admission = evaluate(
                        ptx, self.mempool, self.chain, now=int(time.time()), full_rbf=self.full_rbf
                    )
                except TxRejected as rejection:
                    results.append(TrialAcceptance(ptx, None, rejection))
                    continue
                if max_feerate and admission.entry.fee > fee_for(max_feerate, ptx.vsize):
                    results.append(TrialAcceptance(ptx, admission.entry, None, True))
                    continue
                evicted.extend(self.mempool.admit(admission))
                added.append(admission.entry)
                results.append(TrialAcceptance(ptx, admission.entry, None))
        finally:
            self.mempool.remove(entry.txid for entry in added)
            for entry in sorted(evicted, key=lambda e: e.order):
                if entry.txid not in self.mempool:
                    self.mempool.admit(Admission(entry, set()))
        return results

    def find_transaction(self, txid: bytes) -> tuple[ParsedTx, BlockRecord | None] | None:
        entry = self.mempool.get(txid)
        if entry is not None:
            return entry.ptx, None
        located = self.chain.tx_index.get(txid)
        if located is None:
            return None
        record, position = located
        return record.block.txs[position], record

    def spent_coins(self, ptx: ParsedTx, record: BlockRecord | None) -> list[Coin] | None:
        """The coins a transaction spent, where the node still knows them."""
        if record is None:
            entry = self.mempool.get(ptx.txid)
            return entry.coins if entry is not None else None
        if record.undo is None or ptx.is_coinbase:
            return None
        undo = dict(record.undo)
        coins = []
        for inp in ptx.tx.vin:
            coin = undo.get((inp.txid[::-1], inp.vout))
            if coin is None:  # spent an output of the same block
                coin = self._output_in_block(record, (inp.txid[::-1], inp.vout))
            if coin is None:
                return None
            coins.append(coin)
        return coins

    @staticmethod
    def _output_in_block(record: BlockRecord, outpoint: Outpoint) -> Coin | None:
        for position, ptx in enumerate(record.block.txs):
            if ptx.txid == outpoint[0] and outpoint[1] < len(ptx.tx.vout):
                out = ptx.tx.vout[outpoint[1]]
                return Coin(out.value, out.script_pubkey.data, record.height, position == 0)
        return None

    # ---- blocks -----------------------------------------------------------------------

    def block(self, block_hash: bytes) -> BlockRecord:
        record = self.tree.get(block_hash)
        if record is None:
            raise RpcError(codes.INVALID_ADDRESS_OR_KEY, "Block not found")
        return record

    def _next_block_time(self, tip: BlockRecord) -> int:
        return max(int(time.time()), tip.block.header.time + 1, tip.median_time_past + 1)

    def _mine(self, payout: bytes, coinbase_value: int, others: list[ParsedTx]) -> BlockRecord:
        tip = self.chain.tip
        coinbase = build_coinbase(tip.height + 1, payout, coinbase_value, others)
        block = assemble_block(tip.hash, self._next_block_time(tip), [coinbase, *others])
        record = self._store(block)
        self._activate(hint=record)
        if self.chain.tip is not record:
            raise RpcError(
                codes.INTERNAL_ERROR,
                f"ProcessNewBlock, block not accepted: {record.failure_reason or 'bad-prevblk'}",
            )
        return record

    def generate(self, count: int, payout: bytes) -> list[str]:
        """generatetoaddress: blocks of mempool transactions by ancestor feerate."""
        hashes = []
        for _ in range(count):
            entries = self.mempool.select_for_block(MAX_BLOCK_WEIGHT - COINBASE_RESERVED_WEIGHT)
            value = block_subsidy(self.chain.height + 1) + sum(e.fee for e in entries)
            hashes.append(self._mine(payout, value, [e.ptx for e in entries]).hash_hex)
        return hashes

    def generate_block(
        self, payout: bytes, items: list[str], *, submit: bool
    ) -> tuple[str, str | None]:
        """generateblock: exactly these transactions (mempool txids or raw hex), in order.
        Like bitcoind, the coinbase claims only the subsidy."""
        txs: list[ParsedTx] = []
        for item in items:
            if len(item) == 64:
                try:
                    txid = decode_hex(item)[::-1]
                except DecodeError:
                    txid = b""
                if txid:
                    entry = self.mempool.get(txid)
                    if entry is None:
                        raise RpcError(
                            codes.INVALID_ADDRESS_OR_KEY, f"Transaction {item} not in mempool."
                        )
                    txs.append(entry.ptx)
                    continue
            try:
                txs.append(parse_transaction(decode_hex(item)))
            except DecodeError:
                raise RpcError(
                    codes.DESERIALIZATION_ERROR,
                    f"Transaction decode failed for {item}. "
                    "Make sure the tx has at least one input.",
                ) from None
        problem = self._block_transactions_problem(txs)
        if problem is not None:
            raise RpcError(codes.VERIFY_ERROR, f"TestBlockValidity failed: {problem}")
        tip = self.chain.tip
        coinbase = build_coinbase(tip.height + 1, payout, block_subsidy(tip.height + 1), txs)
        if not submit:
            block = assemble_block(tip.hash, self._next_block_time(tip), [coinbase, *txs])
            return block.hash_hex, block.raw.hex()
        return self._mine(payout, block_subsidy(tip.height + 1), txs).hash_hex, None

    def _block_transactions_problem(self, txs: list[ParsedTx]) -> str | None:
        """What bitcoind's TestBlockValidity would say about these transactions on the tip
        (the kernel judges the block itself when it is submitted)."""
        height = self.chain.height + 1
        created: dict[Outpoint, Coin] = {}
        spent: set[Outpoint] = set()
        weight = 0
        for ptx in txs:
            try:
                check_transaction(ptx)
            except TxRejected as rejected:
                return rejected.reason
            if ptx.is_coinbase:
                return "bad-cb-multiple"
            if not is_final(ptx, height, self.chain.tip.median_time_past):
                return "bad-txns-nonfinal"
            coins = []
            for inp in ptx.tx.vin:
                outpoint = (inp.txid[::-1], inp.vout)
                coin = created.get(outpoint) or self.chain.utxos.get(outpoint)
                if coin is None or outpoint in spent:
                    return "bad-txns-inputs-missingorspent"
                coins.append(coin)
            if not sequence_locks_met(ptx, coins, height, self.chain.median_time_past_at):
                return "bad-txns-nonfinal"
            try:
                check_tx_inputs(ptx, coins, height)
            except TxRejected as rejected:
                return rejected.reason
            index = first_invalid_input(ptx, coins)
            if index is not None:
                detail = script_failure_reason(ptx, index, coins[index])
                return f"mandatory-script-verify-flag-failed ({detail})"
            spent.update((inp.txid[::-1], inp.vout) for inp in ptx.tx.vin)
            for n, out in enumerate(ptx.tx.vout):
                created[(ptx.txid, n)] = Coin(out.value, out.script_pubkey.data, height, False)
            weight += ptx.weight
        if weight > MAX_BLOCK_WEIGHT - COINBASE_RESERVED_WEIGHT:
            return "bad-blk-weight"
        return None

    def submit_block(self, raw: bytes) -> str | None:
        """submitblock: None when the block became active, else bitcoind's result string."""
        try:
            block = parse_block(raw)
        except DecodeError:
            raise RpcError(codes.DESERIALIZATION_ERROR, "Block decode failed") from None
        if not block.txs or not block.txs[0].is_coinbase:
            raise RpcError(codes.DESERIALIZATION_ERROR, "Block does not start with a coinbase")
        known = self.tree.get(block.hash)
        if known is not None:
            if known.invalid:
                return "duplicate-invalid"
            return "duplicate" if known.undo is not None else "duplicate-inconclusive"
        parent = self.tree.get(block.header.prev_hash)
        if parent is None:
            return "prev-blk-not-found"
        problem = self._block_header_problem(block, parent)
        if problem is not None:
            return problem
        record = self._store(block)
        self._activate()
        if record.failed:
            return record.failure_reason
        if record.invalid:
            return "bad-prevblk"
        return None if self.chain.contains(record) else "inconclusive"

    def _block_header_problem(self, block: ParsedBlock, parent: BlockRecord) -> str | None:
        """Checks bitcoind makes before it stores a block; blocks failing them are dropped
        (the kernel confirms the context-free part)."""
        header = block.header
        if parent.invalid:
            return "bad-prevblk"
        if header.bits != REGTEST_BITS:
            return "bad-diffbits"
        if int.from_bytes(block.hash, "little") > bits_to_target(header.bits):
            return "high-hash"
        if header.time <= parent.median_time_past:
            return "time-too-old"
        if header.time > time.time() + MAX_FUTURE_BLOCK_TIME:
            return "time-too-new"
        if header.version < 4:
            return f"bad-version(0x{header.version & 0xFFFFFFFF:08x})"
        txids = [t.txid for t in block.txs]
        if merkle_root(txids) != header.merkle_root:
            return "bad-txnmrklroot"
        if len(set(txids)) != len(txids):
            return "bad-txns-duplicate"
        if not self.kernel.check_block(block.raw):
            return "rejected by libbitcoinkernel's CheckBlock"
        return None

    def invalidate(self, record: BlockRecord) -> None:
        if record is self.tree.genesis:
            raise RpcError(codes.INVALID_PARAMETER, "Cannot invalidate the genesis block")
        self._invalidated.add(record.hash)
        self._save_invalidated()
        self.tree.mark_failed(record, "")
        self._activate()

    def reconsider(self, record: BlockRecord) -> None:
        cleared = {record, *record.ancestors(), *record.descendants()}
        self._invalidated -= {r.hash for r in cleared}
        self._save_invalidated()
        self.tree.clear_failures(record)
        self._activate()

    # ---- wallet -----------------------------------------------------------------------

    def wallet_coins(self) -> list[WalletCoin]:
        """Spendable wallet coins: confirmed ones first (coinbases once 101 deep, as
        bitcoind's wallet counts them), then change of the wallet's own unconfirmed
        transactions; larger first."""
        tip_height = self.chain.height
        confirmed = []
        for outpoint, coin in self.chain.utxos.items():
            if not self.wallet.owns(coin.script_pubkey) or outpoint in self.mempool.spenders:
                continue
            if coin.is_coinbase and tip_height - coin.height < COINBASE_MATURITY:
                continue
            confirmed.append(WalletCoin(outpoint, coin, True))
        unconfirmed = []
        for entry in self.mempool.in_order():
            if not all(self.wallet.owns(c.script_pubkey) for c in entry.coins):
                continue
            for n, out in enumerate(entry.ptx.tx.vout):
                outpoint = (entry.txid, n)
                spk = out.script_pubkey.data
                if self.wallet.owns(spk) and outpoint not in self.mempool.spenders:
                    coin = Coin(out.value, spk, tip_height + 1, False)
                    unconfirmed.append(WalletCoin(outpoint, coin, False))
        confirmed.sort(key=lambda c: -c.coin.value)
        unconfirmed.sort(key=lambda c: -c.coin.value)
        return confirmed + unconfirmed

    def new_address(self) -> str:
        return self.wallet.new_key().address

    def send(
        self,
        payments: list[tuple[bytes, int]],
        *,
        subtract_fee_from: set[int],
        sat_per_vbyte: float = WALLET_FEE_RATE,
        replaceable: bool = True,
    ) -> str:
        try:
            tx = self.wallet.pay(
                self.wallet_coins(),
                payments,
                sat_per_vbyte=sat_per_vbyte,
                subtract_fee_from=subtract_fee_from,
                locktime=self.chain.height,  # anti fee sniping, as bitcoind's wallet does
                replaceable=replaceable,
            )
        except PaymentError as error:
            raise RpcError(error.code, error.message) from None
        ptx = to_parsed(tx)
        try:
            self.accept_transaction(ptx)
        except TxRejected as rejected:
            raise RpcError(codes.WALLET_ERROR, rejected.message) from None
        return ptx.txid_hex
