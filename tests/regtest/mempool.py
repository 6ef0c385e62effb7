"""The mempool: the unconfirmed transactions the node holds, bitcoind's acceptance rules for a
new one (policy, BIP125 replacement, package limits), and block template selection."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from .chain import ChainState, Outpoint
from .encoding import ParsedTx
from .kernel import first_invalid_input
from .validation import (
    Coin,
    TxRejected,
    check_standard,
    check_transaction,
    check_tx_inputs,
    fee_for,
    format_feerate,
    format_money,
    is_final,
    script_failure_reason,
    sequence_locks_met,
    signals_rbf,
)

__all__ = ["Admission", "Mempool", "MempoolEntry", "evaluate"]

MIN_RELAY_FEERATE = 1000  # sat/kvB, bitcoind's -minrelaytxfee and incremental relay fee
ANCESTOR_LIMIT = 25
DESCENDANT_LIMIT = 25
ANCESTOR_SIZE_LIMIT = 101_000  # vbytes
DESCENDANT_SIZE_LIMIT = 101_000
MAX_REPLACEMENT_CANDIDATES = 100


@dataclass(eq=False)
class MempoolEntry:
    ptx: ParsedTx
    fee: int
    coins: list[Coin]
    time: int
    height: int  # chain height when it entered
    order: int = 0  # entry order; parents always come before their children
    parents: set[bytes] = field(default_factory=set)
    children: set[bytes] = field(default_factory=set)

    @property
    def txid(self) -> bytes:
        return self.ptx.txid

    @property
    def vsize(self) -> int:
        return self.ptx.vsize


@dataclass
class Admission:
    """What accepting a transaction would do: add `entry`, evict `evicted`."""

    entry: MempoolEntry
    evicted: set[bytes]


class Mempool:
    def __init__(self) -> None:
        self.entries: dict[bytes, MempoolEntry] = {}
        self.by_wtxid: dict[bytes, bytes] = {}
        self.spenders: dict[Outpoint, bytes] = {}
        self.sequence = 0  # counts additions and removals (getrawmempool's mempool_sequence)
        self._next_order = 0

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, txid: bytes) -> MempoolEntry | None:
        return self.entries.get(txid)

    def output_coin(self, outpoint: Outpoint, height: int) -> Coin | None:
        entry = self.entries.get(outpoint[0])
        if entry is None or outpoint[1] >= len(entry.ptx.tx.vout):
            return None
        out = entry.ptx.tx.vout[outpoint[1]]
        return Coin(out.value, out.script_pubkey.data, height, False)

    def _closure(self, start: Iterable[bytes], link: str) -> set[bytes]:
        found: set[bytes] = set()
        pending = list(start)
        while pending:
            txid = pending.pop()
            if txid in found:
                continue
            found.add(txid)
            pending.extend(getattr(self.entries[txid], link))
        return found

    def ancestors(self, txid: bytes) -> set[bytes]:
        return self._closure(self.entries[txid].parents, "parents")

    def with_ancestors(self, txids: Iterable[bytes]) -> set[bytes]:
        return self._closure(txids, "parents")

    def descendants(self, txid: bytes) -> set[bytes]:
        return self._closure(self.entries[txid].children, "children")

    def with_descendants(self, txids: Iterable[bytes]) -> set[bytes]:
        return self._closure(txids, "children")

    def replaceable(self, txid: bytes) -> bool:
        """bip125-replaceable as getmempoolentry reports it (inherited signalling counts)."""
        return any(signals_rbf(self.entries[t].ptx) for t in {txid} | self.ancestors(txid))

    def in_order(self) -> list[MempoolEntry]:
        return sorted(self.entries.values(), key=lambda e: e.order)

    def admit(self, admission: Admission) -> list[MempoolEntry]:
        """Evicts the replaced transactions and adds the new one; returns the evicted."""
        evicted = self.remove(admission.evicted)
        entry = admission.entry
        entry.order = self._next_order
        self._next_order += 1
        self.sequence += 1
        entry.children = set()
        entry.parents = {inp.txid[::-1] for inp in entry.ptx.tx.vin} & self.entries.keys()
        for parent in entry.parents:
            self.entries[parent].children.add(entry.txid)
        for inp in entry.ptx.tx.vin:
            self.spenders[(inp.txid[::-1], inp.vout)] = entry.txid
        self.entries[entry.txid] = entry
        self.by_wtxid[entry.ptx.wtxid] = entry.txid
        return evicted

    def remove(self, txids: Iterable[bytes]) -> list[MempoolEntry]:
        """Removes exactly these transactions (the caller adds descendants if it must)."""
        removed = []
        for txid in list(txids):
            entry = self.entries.pop(txid, None)
            if entry is None:
                continue
            removed.append(entry)
            self.sequence += 1
            self.by_wtxid.pop(entry.ptx.wtxid, None)
            for inp in entry.ptx.tx.vin:
                outpoint = (inp.txid[::-1], inp.vout)
                if self.spenders.get(outpoint) == txid:
                    del self.spenders[outpoint]
            for parent in entry.parents:
                if parent in self.entries:
                    self.entries[parent].children.discard(txid)
            for child in entry.children:
                if child in self.entries:
                    self.entries[child].parents.discard(txid)
        return removed

    def remove_for_block(self, txs: list[ParsedTx]) -> None:
        """Drops what a connected block confirmed, and what now conflicts with it."""
        confirmed = [ptx.txid for ptx in txs if ptx.txid in self.entries]
        self.remove(confirmed)
        conflicting = set()
        for ptx in txs[1:]:
            for inp in ptx.tx.vin:
                spender = self.spenders.get((inp.txid[::-1], inp.vout))
                if spender is not None and spender != ptx.txid:
                    conflicting.add(spender)
        if conflicting:
            self.remove(self.with_descendants(conflicting))

    def clear(self) -> list[MempoolEntry]:
        entries = self.in_order()
        self.sequence += len(entries)
        self.entries.clear()
        self.by_wtxid.clear()
        self.spenders.clear()
        return entries

    def select_for_block(self, weight_limit: int) -> list[MempoolEntry]:
        """Transactions for a block by ancestor feerate (bitcoind's package selection),
        parents before children, within `weight_limit`."""
        chosen: set[bytes] = set()
        selected: list[MempoolEntry] = []
        weight = 0
        version: dict[bytes, int] = {}
        heap: list[tuple[float, int, int, bytes]] = []

        def package(txid: bytes) -> list[MempoolEntry]:
            members = (self.ancestors(txid) - chosen) | {txid}
            return sorted((self.entries[t] for t in members), key=lambda e: e.order)

        def push(txid: bytes) -> None:
            members = package(txid)
            fee = sum(e.fee for e in members)
            vsize = sum(e.vsize for e in members)
            version[txid] = version.get(txid, 0) + 1
            heapq.heappush(heap, (-fee / vsize, self.entries[txid].order, version[txid], txid))

        for txid in self.entries:
            push(txid)
        while heap:
            _, _, seen_version, txid = heapq.heappop(heap)
            if txid in chosen or seen_version != version[txid]:
                continue
            members = package(txid)
            package_weight = sum(e.ptx.weight for e in members)
            if weight + package_weight > weight_limit:
                continue
            weight += package_weight
            for entry in members:
                chosen.add(entry.txid)
                selected.append(entry)
            # Descendants of what was chosen now carry fewer unconfirmed ancestors.
            for stale in self.with_descendants(e.txid for e in members) - chosen:
                push(stale)
        return selected


def evaluate(
    ptx: ParsedTx,
    pool: Mempool,
    chain: ChainState,
    *,
    now: int,
    full_rbf: bool = False,
    allow_replacement: bool = True,
    scripts_known_valid: bool = False,
) -> Admission:
    """bitcoind's AcceptToMemoryPool checks, in its order, without changing anything.

    Raises TxRejected with bitcoind's reason. Scripts are verified by libbitcoinkernel
    unless the caller knows they already were (`scripts_known_valid`).
    """
    check_transaction(ptx)
    if ptx.is_coinbase:
        raise TxRejected("coinbase")
    check_standard(ptx)
    next_height = chain.height + 1
    if not is_final(ptx, next_height, chain.tip.median_time_past):
        raise TxRejected("non-final")
    if ptx.wtxid in pool.by_wtxid:
        raise TxRejected("txn-already-in-mempool")
    if ptx.txid in pool:
        raise TxRejected("txn-same-nonwitness-data-in-mempool")

    conflicts: set[bytes] = set()
    for inp in ptx.tx.vin:
        spender = pool.spenders.get((inp.txid[::-1], inp.vout))
        if spender is None or spender in conflicts:
            continue
        if not allow_replacement:
            raise TxRejected("bip125-replacement-disallowed")
        # bitcoind honours only the conflicting transaction's own signal, not an
        # ancestor's (CVE-2021-31876), unless full RBF is on.
        if not full_rbf and not signals_rbf(pool.entries[spender].ptx):
            raise TxRejected("txn-mempool-conflict")
        conflicts.add(spender)

    coins: list[Coin] = []
    parents: set[bytes] = set()
    for inp in ptx.tx.vin:
        outpoint = (inp.txid[::-1], inp.vout)
        coin = chain.utxos.get(outpoint)
        if coin is None:
            coin = pool.output_coin(outpoint, next_height)
            if coin is not None:
                parents.add(outpoint[0])
        if coin is None:
            if any((ptx.txid, n) in chain.utxos for n in range(len(ptx.tx.vout))):
                raise TxRejected("txn-already-known")
            raise TxRejected("bad-txns-inputs-missingorspent", missing_inputs=True)
        coins.append(coin)

    if not sequence_locks_met(ptx, coins, next_height, chain.median_time_past_at):
        raise TxRejected("non-BIP68-final")
    fee = check_tx_inputs(ptx, coins, next_height)
    vsize = ptx.vsize
    minimum = fee_for(MIN_RELAY_FEERATE, vsize)
    if fee < minimum:
        raise TxRejected("min relay fee not met", f"{fee} < {minimum}")

    ancestors = pool.with_ancestors(parents)
    _check_package_limits(ptx, pool, ancestors)
    if conflicts & ancestors:
        conflict = sorted(conflicts & ancestors)[0]
        raise TxRejected(
            "bad-txns-spends-conflicting-tx",
            f"{ptx.txid_hex} spends conflicting transaction {conflict[::-1].hex()}",
        )
    evicted = _check_replacement(ptx, fee, pool, conflicts) if conflicts else set()

    if not scripts_known_valid:
        index = first_invalid_input(ptx, coins)
        if index is not None:
            detail = script_failure_reason(ptx, index, coins[index])
            raise TxRejected(f"mandatory-script-verify-flag-failed ({detail})")
    entry = MempoolEntry(ptx, fee, coins, now, chain.height)
    return Admission(entry, evicted)


def _check_package_limits(ptx: ParsedTx, pool: Mempool, ancestors: set[bytes]) -> None:
    if len(ancestors) + 1 > ANCESTOR_LIMIT:
        raise TxRejected(
            "too-long-mempool-chain", f"too many unconfirmed ancestors [limit: {ANCESTOR_LIMIT}]"
        )
    if sum(pool.entries[a].vsize for a in ancestors) + ptx.vsize > ANCESTOR_SIZE_LIMIT:
        raise TxRejected(
            "too-long-mempool-chain",
            f"exceeds ancestor size limit [limit: {ANCESTOR_SIZE_LIMIT}]",
        )
    for ancestor in ancestors:
        family = pool.descendants(ancestor) | {ancestor}
        if len(family) + 1 > DESCENDANT_LIMIT:
            raise TxRejected(
                "too-long-mempool-chain",
                f"exceeds descendant limit for tx {ancestor[::-1].hex()} "
                f"[limit: {DESCENDANT_LIMIT}]",
            )
        if sum(pool.entries[t].vsize for t in family) + ptx.vsize > DESCENDANT_SIZE_LIMIT:
            raise TxRejected(
                "too-long-mempool-chain",
                f"exceeds descendant size limit for tx {ancestor[::-1].hex()} "
                f"[limit: {DESCENDANT_SIZE_LIMIT}]",
            )


def _check_replacement(ptx: ParsedTx, fee: int, pool: Mempool, conflicts: set[bytes]) -> set[bytes]:
    """BIP125 rules as bitcoind enforces them; returns every transaction to evict."""
    txid_hex = ptx.txid_hex
    vsize = ptx.vsize
    new_rate = fee * 1000 // vsize
    for txid in sorted(conflicts):
        original = pool.entries[txid]
        old_rate = original.fee * 1000 // original.vsize
        if new_rate <= old_rate:
            raise TxRejected(
                "insufficient fee",
                f"rejecting replacement {txid_hex}; new feerate {format_feerate(new_rate)} "
                f"<= old feerate {format_feerate(old_rate)}",
            )
    candidates = sum(len(pool.descendants(t)) + 1 for t in conflicts)
    if candidates > MAX_REPLACEMENT_CANDIDATES:
        raise TxRejected(
            "too many potential replacements",
            f"rejecting replacement {txid_hex}; too many potential replacements "
            f"({candidates} > {MAX_REPLACEMENT_CANDIDATES})",
        )
    conflict_parents = {
        inp.txid[::-1] for txid in conflicts for inp in pool.entries[txid].ptx.tx.vin
    }
    for index, inp in enumerate(ptx.tx.vin):
        parent = inp.txid[::-1]
        if parent not in conflict_parents and parent in pool:
            raise TxRejected(
                "replacement-adds-unconfirmed",
                f"replacement {txid_hex} adds unconfirmed input, idx {index}",
            )
    evicted = pool.with_descendants(conflicts)
    evicted_fees = sum(pool.entries[t].fee for t in evicted)
    if fee < evicted_fees:
        raise TxRejected(
            "insufficient fee",
            f"rejecting replacement {txid_hex}, less fees than conflicting txs; "
            f"{format_money(fee)} < {format_money(evicted_fees)}",
        )
    relay_fee = fee_for(MIN_RELAY_FEERATE, vsize)
    if fee - evicted_fees < relay_fee:
        raise TxRejected(
            "insufficient fee",
            f"rejecting replacement {txid_hex}, not enough additional fees to relay; "
            f"{format_money(fee - evicted_fees)} < {format_money(relay_fee)}",
        )
    return evicted
