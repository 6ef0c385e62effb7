"""Building the custody key's transactions: batched payouts with deterministic coin
selection, change back to the custody key, RBF signalled, fees from a rate, dust and size
limits, and replacement of a stuck transaction with the same inputs.

Every node builds the same transaction from the same inputs (payouts, UTXOs, fee rate), so
a coordinator's proposal can be checked byte for byte against a node's own view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.frost import Tweak

from .address import DUST, script_type
from .transaction import (
    Outpoint,
    SighashCache,
    Transaction,
    TxIn,
    TxOut,
    compact_size,
    taproot_sighash,
)

__all__ = [
    "MAX_INPUTS",
    "MAX_OUTPUTS",
    "MAX_VSIZE",
    "Payout",
    "Spendable",
    "WithdrawalError",
    "WithdrawalPlan",
    "build_sweep",
    "build_withdrawal",
    "replace_withdrawal",
    "spend_exactly",
]

MAX_INPUTS = 500
MAX_OUTPUTS = 1000
MAX_VSIZE = 100_000  # standard transactions are at most 400,000 WU; stay well under
RBF_SEQUENCE = 0xFFFFFFFD
KEY_PATH_WITNESS = (bytes(64),)  # one 64-byte BIP340 signature (SIGHASH_DEFAULT)


class WithdrawalError(ValueError):
    """No transaction can be built from these payouts and outputs; the message says why."""


@dataclass(frozen=True)
class Payout:
    reference: str  # the burn it pays
    script: bytes
    amount: int


@dataclass(frozen=True)
class Spendable:
    """An output of the custody key and the tweaks that sign for it."""

    txid: str
    vout: int
    amount: int
    script: bytes
    tweaks: tuple[Tweak, ...]

    @property
    def outpoint(self) -> Outpoint:
        return Outpoint(bytes.fromhex(self.txid)[::-1], self.vout)


@dataclass(frozen=True)
class WithdrawalPlan:
    transaction: Transaction  # unsigned
    spent: tuple[Spendable, ...]  # in input order
    payouts: tuple[Payout, ...]
    change: int
    fee: int
    fee_rate: float  # sat/vB, of the signed transaction

    def sighashes(self) -> list[bytes]:
        """The BIP341 signature hash of every input (SIGHASH_DEFAULT)."""
        spent = [TxOut(s.amount, s.script) for s in self.spent]
        cache = SighashCache(self.transaction, spent)
        return [
            taproot_sighash(self.transaction, i, spent, cache=cache) for i in range(len(self.spent))
        ]

    def signed(self, signatures: Sequence[bytes]) -> Transaction:
        if len(signatures) != len(self.spent) or any(len(s) != 64 for s in signatures):
            raise WithdrawalError("one 64-byte signature per input is needed")
        return self.transaction.with_witnesses([(s,) for s in signatures])


def _check_payouts(payouts: Sequence[Payout]) -> list[Payout]:
    if not payouts:
        raise WithdrawalError("a withdrawal needs payouts")
    if len(payouts) > MAX_OUTPUTS:
        raise WithdrawalError(f"{len(payouts)} payouts exceed the limit of {MAX_OUTPUTS}")
    references = [p.reference for p in payouts]
    if len(set(references)) != len(references):
        raise WithdrawalError("a burn appears twice in one withdrawal")
    for payout in payouts:
        kind = script_type(payout.script)
        if kind is None:
            raise WithdrawalError(f"payout {payout.reference} pays a non-standard script")
        if payout.amount < DUST[kind]:
            raise WithdrawalError(
                f"payout {payout.reference} of {payout.amount} sat is below the {kind} dust "
                f"limit of {DUST[kind]} sat"
            )
    return sorted(payouts, key=lambda p: p.reference)


def _transaction(
    spent: Sequence[Spendable], payouts: Sequence[Payout], change: int, change_script: bytes
) -> Transaction:
    outputs = [TxOut(p.amount, p.script) for p in payouts]
    if change:
        outputs.append(TxOut(change, change_script))
    inputs = tuple(TxIn(s.outpoint, b"", RBF_SEQUENCE) for s in spent)
    return Transaction(2, inputs, tuple(outputs), 0)


def _vsize(inputs: int, payouts: Sequence[Payout], change_script: bytes | None) -> int:
    """The virtual size of the signed transaction, computed without building it."""
    scripts = [p.script for p in payouts] + ([change_script] if change_script else [])
    base = 4 + len(compact_size(inputs)) + inputs * 41 + len(compact_size(len(scripts))) + 4
    base += sum(8 + len(compact_size(len(s))) + len(s) for s in scripts)
    witness = 2 + inputs * (1 + 1 + 64)  # marker and flag; per input one 64-byte item
    return (base * 4 + witness + 3) // 4


def _settle(
    spent: Sequence[Spendable],
    payouts: Sequence[Payout],
    change_script: bytes,
    fee_rate: float,
) -> WithdrawalPlan | None:
    """The plan spending exactly `spent`, or None if they do not cover payouts and fee."""
    total_in = sum(s.amount for s in spent)
    total_out = sum(p.amount for p in payouts)
    with_change = _vsize(len(spent), payouts, change_script)
    fee = math.ceil(fee_rate * with_change)
    change = total_in - total_out - fee
    if change >= DUST["p2tr"]:
        tx = _transaction(spent, payouts, change, change_script)
        return WithdrawalPlan(tx, tuple(spent), tuple(payouts), change, fee, fee / with_change)
    without = _vsize(len(spent), payouts, None)
    fee = total_in - total_out  # no change: everything left is fee
    if fee < math.ceil(fee_rate * without):
        return None
    tx = _transaction(spent, payouts, 0, change_script)
    return WithdrawalPlan(tx, tuple(spent), tuple(payouts), 0, fee, fee / without)


def build_withdrawal(
    payouts: Sequence[Payout],
    available: Sequence[Spendable],
    change_script: bytes,
    fee_rate: float,
) -> WithdrawalPlan:
    """Pay `payouts` from the custody outputs: largest outputs first (ties by outpoint)
    until payouts and fee are covered; change back to the custody key unless it is dust."""
    ordered_payouts = _check_payouts(payouts)
    candidates = sorted(available, key=lambda s: (-s.amount, s.txid, s.vout))
    chosen: list[Spendable] = []
    for spendable in candidates:
        chosen.append(spendable)
        if len(chosen) > MAX_INPUTS:
            break
        plan = _settle(sorted(chosen, key=lambda s: (s.txid, s.vout)), ordered_payouts,
                       change_script, fee_rate)  # fmt: skip
        if plan is not None:
            if plan.transaction.with_witnesses([KEY_PATH_WITNESS] * len(chosen)).vsize > MAX_VSIZE:
                raise WithdrawalError(f"the withdrawal would exceed {MAX_VSIZE} vB; split it")
            return plan
    need = sum(p.amount for p in ordered_payouts)
    have = sum(s.amount for s in candidates[:MAX_INPUTS])
    raise WithdrawalError(
        f"custody outputs ({have} sat in at most {MAX_INPUTS} inputs) cannot pay {need} sat "
        f"plus the fee at {fee_rate:.2f} sat/vB"
    )


def replace_withdrawal(
    plan: WithdrawalPlan, fee_rate: float, change_script: bytes
) -> WithdrawalPlan:
    """The same payouts from the same inputs at a higher fee rate (BIP125 replacement): it
    conflicts with the original, so at most one of them can ever confirm."""
    if fee_rate <= plan.fee_rate:
        raise WithdrawalError("a replacement must pay a higher fee rate")
    replacement = _settle(plan.spent, plan.payouts, change_script, fee_rate)
    if replacement is None:
        raise WithdrawalError(
            f"the inputs cannot pay {fee_rate:.2f} sat/vB; the stuck transaction stays"
        )
    if replacement.fee <= plan.fee:
        raise WithdrawalError("a replacement must pay a higher absolute fee")
    return replacement


def spend_exactly(
    spent: Sequence[Spendable], payouts: Sequence[Payout], change_script: bytes, fee_rate: float
) -> WithdrawalPlan:
    """The plan paying `payouts` from exactly `spent` (a replacement's inputs, fixed once the
    first transaction was signed)."""
    plan = _settle(sorted(spent, key=lambda s: (s.txid, s.vout)), _check_payouts(payouts),
                   change_script, fee_rate)  # fmt: skip
    if plan is None:
        raise WithdrawalError(f"these inputs cannot pay the payouts at {fee_rate:.2f} sat/vB")
    return plan


def build_sweep(spent: Sequence[Spendable], script: bytes, fee_rate: float) -> WithdrawalPlan:
    """Everything in `spent` to one output (the fee reservoir's consolidation), less the fee."""
    if not spent:
        raise WithdrawalError("a sweep needs inputs")
    if len(spent) > MAX_INPUTS:
        raise WithdrawalError(f"{len(spent)} inputs exceed the limit of {MAX_INPUTS}")
    kind = script_type(script)
    if kind is None:
        raise WithdrawalError("the sweep would pay a non-standard script")
    ordered = sorted(spent, key=lambda s: (s.txid, s.vout))
    vsize = _vsize(len(ordered), [Payout("sweep", script, 0)], None)
    fee = math.ceil(fee_rate * vsize)
    amount = sum(s.amount for s in ordered) - fee
    if amount < DUST[kind]:
        raise WithdrawalError(
            f"{sum(s.amount for s in ordered)} sat cannot pay a {fee} sat fee and leave more "
            f"than dust"
        )
    payout = Payout("sweep", script, amount)
    tx = _transaction(ordered, [payout], 0, script)
    return WithdrawalPlan(tx, tuple(ordered), (payout,), 0, fee, fee / vsize)
