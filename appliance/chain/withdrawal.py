"""Building the custody key's transactions: batched payouts with deterministic coin
selection, RBF signalled, fees from a rate, dust and size limits, and replacement of a stuck
transaction with the same inputs; the fee reservoir's sweep.

A withdrawal always has the same shape, so that Bitcoin decides between two of them:

    inputs   0: the main custody output (the previous withdrawal's output 0, or the genesis)
             1..: other custody and deposit outputs, in outpoint order
    outputs  0: change to the custody key: the next main custody output (never dust)
             1: OP_RETURN commitment to the burn ids paid (`appliance.chain.commitment`)
             2..: the payouts, in burn id order

Every node builds the same transaction from the same facts (payouts, outputs, fee rate), so
a coordinator's proposal can be checked byte for byte against a node's own view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.frost import Tweak

from .address import DUST, script_type
from .commitment import commitment_script
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


def _transaction(spent: Sequence[Spendable], outputs: Sequence[TxOut]) -> Transaction:
    inputs = tuple(TxIn(s.outpoint, b"", RBF_SEQUENCE) for s in spent)
    return Transaction(2, inputs, tuple(outputs), 0)


def _vsize(inputs: int, scripts: Sequence[bytes]) -> int:
    """The virtual size of the signed transaction, computed without building it."""
    base = 4 + len(compact_size(inputs)) + inputs * 41 + len(compact_size(len(scripts))) + 4
    base += sum(8 + len(compact_size(len(s))) + len(s) for s in scripts)
    witness = 2 + inputs * (1 + 1 + 64)  # marker and flag; per input one 64-byte item
    return (base * 4 + witness + 3) // 4


def _outpoint_order(spendable: Spendable) -> tuple[str, int]:
    return spendable.txid, spendable.vout


def _settle(
    main: Spendable,
    extras: Sequence[Spendable],
    payouts: Sequence[Payout],
    change_script: bytes,
    fee_rate: float,
) -> WithdrawalPlan | None:
    """The withdrawal spending exactly `main` and `extras`, or None if they cannot pay the
    payouts and the fee and still leave a main output above dust."""
    spent = (main, *sorted(extras, key=_outpoint_order))
    commitment = commitment_script(p.reference for p in payouts)
    scripts = [change_script, commitment, *(p.script for p in payouts)]
    vsize = _vsize(len(spent), scripts)
    fee = math.ceil(fee_rate * vsize)
    change = sum(s.amount for s in spent) - sum(p.amount for p in payouts) - fee
    if change < DUST["p2tr"]:
        return None
    outputs = [TxOut(change, change_script), TxOut(0, commitment)]
    outputs += [TxOut(p.amount, p.script) for p in payouts]
    tx = _transaction(spent, outputs)
    return WithdrawalPlan(tx, spent, tuple(payouts), change, fee, fee / vsize)


def _check_inputs(main: Spendable, extras: Sequence[Spendable]) -> None:
    outpoints = [_outpoint_order(s) for s in (main, *extras)]
    if len(set(outpoints)) != len(outpoints):
        raise WithdrawalError("an output is spent twice, or the main output is among the others")
    if len(outpoints) > MAX_INPUTS:
        raise WithdrawalError(f"{len(outpoints)} inputs exceed the limit of {MAX_INPUTS}")


def _within_size(plan: WithdrawalPlan) -> WithdrawalPlan:
    signed = plan.transaction.with_witnesses([KEY_PATH_WITNESS] * len(plan.spent))
    if signed.vsize > MAX_VSIZE:
        raise WithdrawalError(f"the withdrawal would exceed {MAX_VSIZE} vB; split it")
    return plan


def build_withdrawal(
    payouts: Sequence[Payout],
    main: Spendable,
    available: Sequence[Spendable],
    change_script: bytes,
    fee_rate: float,
) -> WithdrawalPlan:
    """Pay `payouts` from the main custody output and, largest first (ties by outpoint), as
    many other outputs of `available` as payouts, fee and a main output above dust need."""
    ordered_payouts = _check_payouts(payouts)
    candidates = sorted(
        (s for s in available if _outpoint_order(s) != _outpoint_order(main)),
        key=lambda s: (-s.amount, s.txid, s.vout),
    )
    chosen: list[Spendable] = []
    for spendable in [None, *candidates]:
        if spendable is not None:
            chosen.append(spendable)
        if len(chosen) + 1 > MAX_INPUTS:
            break
        plan = _settle(main, chosen, ordered_payouts, change_script, fee_rate)
        if plan is not None:
            return _within_size(plan)
    need = sum(p.amount for p in ordered_payouts)
    have = main.amount + sum(s.amount for s in candidates[: MAX_INPUTS - 1])
    raise WithdrawalError(
        f"custody outputs ({have} sat in at most {MAX_INPUTS} inputs) cannot pay {need} sat "
        f"plus the fee at {fee_rate:.2f} sat/vB and keep a main output"
    )


def spend_exactly(
    payouts: Sequence[Payout],
    main: Spendable,
    extras: Sequence[Spendable],
    change_script: bytes,
    fee_rate: float,
) -> WithdrawalPlan:
    """The withdrawal paying `payouts` from exactly `main` and `extras` (a replacement's
    inputs, fixed once the first transaction was signed)."""
    _check_inputs(main, extras)
    plan = _settle(main, extras, _check_payouts(payouts), change_script, fee_rate)
    if plan is None:
        raise WithdrawalError(
            f"these inputs cannot pay the payouts at {fee_rate:.2f} sat/vB and keep a main output"
        )
    return _within_size(plan)


def replace_withdrawal(
    plan: WithdrawalPlan, fee_rate: float, change_script: bytes
) -> WithdrawalPlan:
    """The same payouts from the same inputs at a higher fee rate (BIP125 replacement): it
    spends the same main output, so at most one of the two can ever confirm."""
    if fee_rate <= plan.fee_rate:
        raise WithdrawalError("a replacement must pay a higher fee rate")
    try:
        replacement = spend_exactly(
            plan.payouts, plan.spent[0], plan.spent[1:], change_script, fee_rate
        )
    except WithdrawalError as exc:
        raise WithdrawalError(
            f"the inputs cannot pay {fee_rate:.2f} sat/vB; the stuck transaction stays"
        ) from exc
    if replacement.fee <= plan.fee:
        raise WithdrawalError("a replacement must pay a higher absolute fee")
    return replacement


def build_sweep(spent: Sequence[Spendable], script: bytes, fee_rate: float) -> WithdrawalPlan:
    """Everything in `spent` to one output (the fee reservoir's consolidation), less the fee."""
    if not spent:
        raise WithdrawalError("a sweep needs inputs")
    if len(spent) > MAX_INPUTS:
        raise WithdrawalError(f"{len(spent)} inputs exceed the limit of {MAX_INPUTS}")
    kind = script_type(script)
    if kind is None:
        raise WithdrawalError("the sweep would pay a non-standard script")
    ordered = sorted(spent, key=_outpoint_order)
    vsize = _vsize(len(ordered), [script])
    fee = math.ceil(fee_rate * vsize)
    amount = sum(s.amount for s in ordered) - fee
    if amount < DUST[kind]:
        raise WithdrawalError(
            f"{sum(s.amount for s in ordered)} sat cannot pay a {fee} sat fee and leave more "
            f"than dust"
        )
    payout = Payout("sweep", script, amount)
    tx = _transaction(ordered, [TxOut(amount, script)])
    return WithdrawalPlan(tx, tuple(ordered), (payout,), 0, fee, fee / vsize)
