"""Checks of one transaction that give bitcoind's reject reasons: the consensus rules needed
before the kernel sees anything, and relay policy; scripts themselves are left to the kernel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .blocks import COIN, COINBASE_MATURITY
from .encoding import ParsedTx
from .scripts import (
    dust_threshold,
    is_push_only,
    is_standard_output,
    script_type,
    witness_program,
)

__all__ = [
    "MAX_MONEY",
    "MAX_STANDARD_TX_WEIGHT",
    "Coin",
    "TxRejected",
    "check_standard",
    "check_transaction",
    "check_tx_inputs",
    "fee_for",
    "format_feerate",
    "format_money",
    "is_final",
    "script_failure_reason",
    "sequence_locks_met",
    "signals_rbf",
]

MAX_MONEY = 21_000_000 * COIN
MAX_STANDARD_TX_WEIGHT = 400_000
MIN_STANDARD_TX_NONWITNESS_SIZE = 65
MAX_STANDARD_SCRIPTSIG_SIZE = 1650
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_FINAL = 0xFFFFFFFF
_SEQUENCE_DISABLE_FLAG = 1 << 31
_SEQUENCE_TYPE_FLAG = 1 << 22
_SEQUENCE_MASK = 0x0000FFFF
_SEQUENCE_GRANULARITY = 9


@dataclass(frozen=True, slots=True)
class Coin:
    """An unspent output as the UTXO set keeps it."""

    value: int
    script_pubkey: bytes
    height: int
    is_coinbase: bool


class TxRejected(Exception):
    """A transaction bitcoind would refuse, with its reject reason and detail.

    `missing_inputs` marks the one refusal bitcoind reports differently (RPC -25 and
    testmempoolaccept's "missing-inputs").
    """

    def __init__(self, reason: str, detail: str = "", *, missing_inputs: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.missing_inputs = missing_inputs

    @property
    def message(self) -> str:
        # bitcoind's TxValidationState::ToString
        return f"{self.reason}, {self.detail}" if self.detail else self.reason


def format_money(sats: int) -> str:
    """bitcoind's FormatMoney: at least two decimals, trailing zeros trimmed."""
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), COIN)
    digits = f"{frac:08d}".rstrip("0")
    return f"{sign}{whole}.{digits.ljust(2, '0')}"


def format_feerate(sat_per_kvb: int) -> str:
    whole, frac = divmod(sat_per_kvb, COIN)
    return f"{whole}.{frac:08d} BTC/kvB"


def fee_for(sat_per_kvb: int, vsize: int) -> int:
    """CFeeRate::GetFee: rounded up, and never zero for a positive rate."""
    fee = -(-sat_per_kvb * vsize // 1000)
    return 1 if fee == 0 and sat_per_kvb > 0 and vsize > 0 else fee


def signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def check_transaction(ptx: ParsedTx) -> None:
    """Context-free consensus checks (bitcoind's CheckTransaction)."""
    tx = ptx.tx
    if not tx.vin:
        raise TxRejected("bad-txns-vin-empty")
    if not tx.vout:
        raise TxRejected("bad-txns-vout-empty")
    if ptx.stripped_size * 4 > 4_000_000:
        raise TxRejected("bad-txns-oversize")
    total = 0
    for out in tx.vout:
        # bitcoind reads amounts as signed 64-bit numbers.
        if out.value >= 1 << 63:
            raise TxRejected("bad-txns-vout-negative")
        if out.value > MAX_MONEY:
            raise TxRejected("bad-txns-vout-toolarge")
        total += out.value
        if total > MAX_MONEY:
            raise TxRejected("bad-txns-txouttotal-toolarge")
    outpoints = {(inp.txid, inp.vout) for inp in tx.vin}
    if len(outpoints) != len(tx.vin):
        raise TxRejected("bad-txns-inputs-duplicate")
    if ptx.is_coinbase:
        if not 2 <= len(tx.vin[0].script_sig.data) <= 100:
            raise TxRejected("bad-cb-length")
    elif (bytes(32), 0xFFFFFFFF) in outpoints:
        raise TxRejected("bad-txns-prevout-null")


def check_standard(ptx: ParsedTx) -> None:
    """bitcoind's IsStandardTx and the minimum size rule, in bitcoind's order."""
    tx = ptx.tx
    if not 1 <= signed32(tx.version) <= 2:
        raise TxRejected("version")
    if ptx.weight > MAX_STANDARD_TX_WEIGHT:
        raise TxRejected("tx-size")
    for inp in tx.vin:
        if len(inp.script_sig.data) > MAX_STANDARD_SCRIPTSIG_SIZE:
            raise TxRejected("scriptsig-size")
        if not is_push_only(inp.script_sig.data):
            raise TxRejected("scriptsig-not-pushonly")
    data_outputs = 0
    for out in tx.vout:
        spk = out.script_pubkey.data
        if not is_standard_output(spk):
            raise TxRejected("scriptpubkey")
        if script_type(spk) == "nulldata":
            data_outputs += 1
        elif out.value < dust_threshold(spk):
            raise TxRejected("dust")
    if data_outputs > 1:
        raise TxRejected("multi-op-return")
    if ptx.stripped_size < MIN_STANDARD_TX_NONWITNESS_SIZE:
        raise TxRejected("tx-size-small")


def is_final(ptx: ParsedTx, height: int, median_time_past: int) -> bool:
    """Whether the locktime allows inclusion in a block at `height` whose predecessor has
    `median_time_past` (BIP113)."""
    locktime = ptx.tx.locktime
    if locktime == 0:
        return True
    limit = height if locktime < LOCKTIME_THRESHOLD else median_time_past
    if locktime < limit:
        return True
    return all(inp.sequence == SEQUENCE_FINAL for inp in ptx.tx.vin)


def sequence_locks_met(
    ptx: ParsedTx,
    coins: list[Coin],
    height: int,
    median_time_past_at: Callable[[int], int],
) -> bool:
    """BIP68 relative locks for inclusion at `height`; `median_time_past_at` gives the
    median time past of the blocks of the chain the block extends, by height."""
    if signed32(ptx.tx.version) < 2:
        return True
    min_height, min_time = -1, -1
    for inp, coin in zip(ptx.tx.vin, coins, strict=True):
        sequence = inp.sequence
        if sequence & _SEQUENCE_DISABLE_FLAG:
            continue
        if sequence & _SEQUENCE_TYPE_FLAG:
            coin_time = median_time_past_at(max(coin.height - 1, 0))
            lock = (sequence & _SEQUENCE_MASK) << _SEQUENCE_GRANULARITY
            min_time = max(min_time, coin_time + lock - 1)
        else:
            min_height = max(min_height, coin.height + (sequence & _SEQUENCE_MASK) - 1)
    return min_height < height and min_time < median_time_past_at(height - 1)


def check_tx_inputs(ptx: ParsedTx, coins: list[Coin], spend_height: int) -> int:
    """Consensus checks on the spent coins (bitcoind's CheckTxInputs); returns the fee."""
    value_in = 0
    for coin in coins:
        if coin.is_coinbase and spend_height - coin.height < COINBASE_MATURITY:
            raise TxRejected(
                "bad-txns-premature-spend-of-coinbase",
                f"tried to spend coinbase at depth {spend_height - coin.height}",
            )
        value_in += coin.value
        if coin.value > MAX_MONEY or value_in > MAX_MONEY:
            raise TxRejected("bad-txns-inputvalues-outofrange")
    value_out = sum(out.value for out in ptx.tx.vout)
    if value_in < value_out:
        raise TxRejected(
            "bad-txns-in-belowout",
            f"value in ({format_money(value_in)}) < value out ({format_money(value_out)})",
        )
    return value_in - value_out


def signals_rbf(ptx: ParsedTx) -> bool:
    return any(inp.sequence < 0xFFFFFFFE for inp in ptx.tx.vin)


def script_failure_reason(ptx: ParsedTx, index: int, coin: Coin) -> str:
    """bitcoind's wording for an input the kernel found invalid.

    libbitcoinkernel answers only valid or invalid; the common key-path and P2WPKH
    failures are told apart here so callers see bitcoind's script error text.
    """
    inp = ptx.tx.vin[index]
    items = list(inp.witness.items)
    program = witness_program(coin.script_pubkey)
    if program is None:
        if items:
            return "Witness provided for non-witness script"
        return "Script evaluated without error but finished with a false/empty top stack element"
    version, data = program
    if inp.script_sig.data:
        return "Witness requires empty scriptSig"
    if not items:
        return "Witness program was passed an empty witness"
    if version == 1 and len(data) == 32:
        if len(items) >= 2 and items[-1][:1] == b"\x50":
            items = items[:-1]  # an annex
        if len(items) == 1:
            signature = items[0]
            if len(signature) not in (64, 65):
                return "Invalid Schnorr signature size"
            if len(signature) == 65 and signature[64] not in (1, 2, 3, 0x81, 0x82, 0x83):
                return "Invalid Schnorr signature hash type"
            return "Invalid Schnorr signature"
        control = items[-1]
        if len(control) < 33 or (len(control) - 33) % 32 or len(control) > 33 + 128 * 32:
            return "Invalid Taproot control block size"
        return "Witness program hash mismatch"
    if version == 0 and len(data) == 20:
        if len(items) != 2:
            return "Witness program hash mismatch"
        return "Signature must be zero for failed CHECK(MULTI)SIG operation"
    if version == 0 and len(data) == 32:
        return "Witness program hash mismatch"
    return "Script failed verification by libbitcoinkernel"
