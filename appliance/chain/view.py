"""The node's own view of the Bitcoin chain, built only from blocks its own bitcoind served.

`apply` makes a run of blocks the canonical chain above a fork point: blocks leaving the
canonical chain are only unmarked (their outputs and spends stay recorded per block), so a
reorg of any depth is a flip of flags. Confirmations count on the canonical chain only;
after a reorg or a competing branch within `fork_window_blocks`, deposits need
`fork_confirmations` instead of `normal_confirmations`. A reported deposit that a reorg
removes is an alert; if it was already attested, minting pauses until an operator looks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.config import BitcoinConfig
from appliance.frost import Tweak
from appliance.store import ChainRecords
from appliance.store.chain import DepositRow, OutputRow

from .commitment import commitment_of
from .custody import CustodyOutput
from .payout_chain import PayoutChain, SpendFacts, follow
from .transaction import Block
from .withdrawal import Spendable

__all__ = ["MINTING_PAUSED", "ChainChange", "ChainView", "ConnectedBlock"]

MINTING_PAUSED = "minting-paused"
Audit = Callable[..., None]


@dataclass(frozen=True)
class ConnectedBlock:
    hash: str
    height: int
    block: Block | None  # None: the block is known already and need not be scanned again


@dataclass
class ChainChange:
    connected: list[str]
    disconnected: list[str]
    removed_deposits: list[DepositRow]


class ChainView:
    def __init__(self, records: ChainRecords, config: BitcoinConfig, audit: Audit) -> None:
        self.records = records
        self.config = config
        self.audit = audit
        self._watched = records.watched()
        self._outpoints = records.watched_outpoints()
        self._fork_tips = records.fork_tips()

    # -- what is watched -----------------------------------------------------------------
    def watch(self, output: CustodyOutput) -> None:
        if output.script in self._watched:
            return
        with self.records.store.transaction():
            self.records.watch(output.script, output.kind, output.label, output.tweaks_json)
        self._watched = self.records.watched()

    def watched(self, script: bytes) -> bool:
        return script in self._watched

    def tweaks_of(self, script: bytes) -> tuple[Tweak, ...]:
        return tuple(
            Tweak(int(value, 16), bool(xonly)) for value, xonly in self._watched[script].tweaks
        )

    # -- the chain -------------------------------------------------------------------------
    @property
    def tip(self) -> tuple[str, int] | None:
        return self.records.tip()

    def apply(self, fork_height: int, blocks: Sequence[ConnectedBlock]) -> ChainChange:
        """Make `blocks` (in order, the first at fork_height + 1) canonical above the fork."""
        records = self.records
        with records.store.transaction():
            disconnected = records.disconnect_above(fork_height)
            previous = records.canonical_at(fork_height) or ""
            for connected in blocks:
                seen = records.connect(connected.hash, connected.height, previous)
                if not seen:
                    if connected.block is None:
                        raise ValueError(f"block {connected.hash} is new but was not fetched")
                    self._scan(connected.hash, connected.block)
                previous = connected.hash
            removed: list[DepositRow] = []
            if disconnected:
                records.record_event(
                    "reorg",
                    fork_height + 1,
                    {"disconnected": disconnected, "connected": [b.hash for b in blocks]},
                )
                removed = self._deposits_removed(disconnected)
        if disconnected:
            self.audit(
                "chain.reorg", "warning",
                f"reorg at height {fork_height + 1}: {len(disconnected)} block(s) replaced",
                height=fork_height + 1, depth=len(disconnected),
            )  # fmt: skip
        for deposit in removed:
            self._alert_removed(deposit)
        return ChainChange([b.hash for b in blocks], disconnected, removed)

    def rescan(self, block_hash: str, block: Block) -> None:
        """Scan a known block again, for scripts watched since it was first scanned."""
        with self.records.store.transaction():
            self._scan(block_hash, block)

    def _scan(self, block_hash: str, block: Block) -> None:
        outputs, spends, spenders = [], [], []
        watched, outpoints = self._watched, self._outpoints
        for tx in block.transactions:
            txid = tx.txid_hex
            if not tx.is_coinbase:
                spending = False
                for txin in tx.inputs:
                    spent = (txin.prevout.txid_hex, txin.prevout.index)
                    if spent in outpoints:
                        spends.append((spent[0], spent[1], txid))
                        spending = True
                if spending:
                    paid_out = sum(out.amount for out in tx.outputs[1:])
                    spenders.append((txid, commitment_of(tx), paid_out))
            for vout, out in enumerate(tx.outputs):
                if out.script_pubkey in watched:
                    outputs.append((txid, vout, out.amount, out.script_pubkey))
                    outpoints.add((txid, vout))
        if outputs:
            self.records.add_outputs(block_hash, outputs)
        if spends:
            self.records.add_spends(block_hash, spends)
            self.records.add_spenders(spenders)

    def _deposits_removed(self, disconnected: list[str]) -> list[DepositRow]:
        """Settle the reported deposits of disconnected blocks; returns those whose output is
        in no canonical block any more. One that is not attested yet goes back to be
        reported again once it confirms where it is now; an attested one that is gone
        pauses minting."""
        removed = []
        for deposit in self.records.deposits_in_blocks(disconnected):
            if deposit.state == "reorged":
                continue
            gone = not self.records.output_canonical(deposit.txid, deposit.vout)
            if deposit.state != "attested":
                self.records.set_deposit_state(deposit.txid, deposit.vout, "reorged")
            elif gone:
                self.records.store.set_flag(
                    MINTING_PAUSED,
                    "true",
                    f"attested deposit {deposit.txid}:{deposit.vout} was removed by a reorg",
                )
            if gone:
                removed.append(deposit)
        return removed

    def _alert_removed(self, deposit: DepositRow) -> None:
        attested = deposit.state == "attested"
        self.audit(
            "chain.deposit-reorged", "failure",
            f"{'attested' if attested else 'reported'} deposit {deposit.txid}:{deposit.vout} "
            f"of {deposit.amount} sat to {deposit.recipient} was removed by a reorg"
            + ("; minting is paused" if attested else ""),
            deposit=f"{deposit.txid}:{deposit.vout}", attested=str(attested).lower(),
        )  # fmt: skip

    def record_fork(self, tip: str, fork_height: int, branch_length: int, status: str) -> bool:
        """A competing branch bitcoind knows of (it need not have been canonical here); True
        if it is news."""
        if tip in self._fork_tips:
            return False
        self._fork_tips.add(tip)
        with self.records.store.transaction():
            self.records.record_event(
                "fork", fork_height, {"tip": tip, "length": branch_length, "status": status}
            )
        self.audit(
            "chain.fork", "warning",
            f"competing branch of {branch_length} block(s) from height {fork_height} "
            f"({status}); deposits now need {self.required_confirmations()} confirmations",
            height=fork_height, depth=branch_length,
        )  # fmt: skip
        return True

    # -- confirmations and deposits ------------------------------------------------------
    def required_confirmations(self) -> int:
        tip = self.tip
        if tip is None:
            return self.config.fork_confirmations
        window_start = tip[1] - self.config.fork_window_blocks + 1
        if self.records.events_since(window_start, ["reorg", "fork"]):
            return self.config.fork_confirmations
        return self.config.normal_confirmations

    def confirmations(self, height: int) -> int:
        tip = self.tip
        return 0 if tip is None or height > tip[1] else tip[1] - height + 1

    def take_confirmed_deposits(self) -> list[DepositRow]:
        """Deposits that reached the required confirmations since the last call. Each is
        returned once; again only if a reorg took it away and it confirmed once more."""
        tip = self.tip
        if tip is None:
            return []
        required = self.required_confirmations()
        reported = []
        with self.records.store.transaction():
            for output, recipient in self.records.deposit_candidates(tip[1] - required + 1):
                self.records.report_deposit(output, recipient)
                reported.append(
                    DepositRow(
                        output.txid,
                        output.vout,
                        recipient,
                        output.amount,
                        output.block_hash,
                        output.height,
                        "confirmed",
                    )
                )
        for deposit in reported:
            self.audit(
                "chain.deposit-confirmed", "success",
                f"deposit {deposit.txid}:{deposit.vout} of {deposit.amount} sat to "
                f"{deposit.recipient} has {self.confirmations(deposit.height)} confirmations",
                deposit=f"{deposit.txid}:{deposit.vout}", recipient=deposit.recipient,
            )  # fmt: skip
        return reported

    def mark_attested(self, txid: str, vout: int) -> None:
        with self.records.store.transaction():
            self.records.set_deposit_state(txid, vout, "attested")

    def minting_paused(self) -> str | None:
        flag = self.records.store.flag(MINTING_PAUSED)
        return None if flag is None else flag[1]

    def unspent(self, kinds: Sequence[str] | None = None) -> list[OutputRow]:
        return self.records.unspent(kinds)

    def spendables(self, kinds: Sequence[str] | None = None) -> list[Spendable]:
        """The custody key's unspent outputs, each with the tweaks that sign for it."""
        return [self.spendable(o) for o in self.unspent(kinds)]

    # -- the payout chain ----------------------------------------------------------------
    def follow_payouts(self, burns_of: Callable[[str], Sequence[str] | None]) -> PayoutChain:
        """The payout chain on this view; `burns_of` gives the burn ids this node holds for a
        transaction (checked against its commitment before they count)."""
        return follow(_ViewFacts(self, burns_of))

    def spendable(self, row: OutputRow) -> Spendable:
        return Spendable(row.txid, row.vout, row.amount, row.script, self.tweaks_of(row.script))


class _ViewFacts:
    """`PayoutFacts` read from a chain view's records."""

    def __init__(self, view: ChainView, burns_of: Callable[[str], Sequence[str] | None]) -> None:
        self.view = view
        self.records = view.records
        self._burns_of = burns_of

    def burns_of(self, txid: str) -> Sequence[str] | None:
        return self._burns_of(txid)

    def genesis(self) -> tuple[str, int] | None:
        tip = self.view.tip
        if tip is None:
            return None
        return self.records.first_custody_output(tip[1] - self.view.required_confirmations() + 1)

    def spender(self, outpoint: tuple[str, int]) -> SpendFacts | None:
        found = self.records.spend_facts(*outpoint)
        return None if found is None else SpendFacts(*found)

    def custody_output(self, outpoint: tuple[str, int]) -> Spendable | None:
        row = self.records.custody_output(*outpoint)
        return None if row is None else self.view.spendable(row)
