"""The node's built-in wallet of single-key Taproot outputs spent by key path (BIP86-style), and
TaprootKey, which tests use to hold and spend outputs of their own."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import coincurve
from embit import ec
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from .chain import Outpoint
from .encoding import to_parsed
from .scripts import dust_threshold, script_address
from .validation import Coin

__all__ = ["InsufficientFunds", "PaymentError", "TaprootKey", "Wallet", "WalletCoin"]

_DUMMY_SIGNATURE = bytes(64)
RBF_SEQUENCE = 0xFFFFFFFD
NO_RBF_SEQUENCE = 0xFFFFFFFE  # still lets the locktime count


class TaprootKey:
    """A key-path-only Taproot output: the internal key tweaked with an empty script tree."""

    def __init__(self, secret: bytes) -> None:
        internal = ec.PrivateKey(secret)
        tweaked = internal.taproot_tweak(b"")
        self.internal_key = internal.xonly()
        self.output_key = tweaked.xonly()
        self._tweaked_secret = tweaked.secret
        self.script_pubkey = b"\x51\x20" + self.output_key
        address = script_address(self.script_pubkey)
        if address is None:
            raise ValueError("not a Taproot output")
        self.address = address

    @classmethod
    def generate(cls) -> TaprootKey:
        return cls(coincurve.PrivateKey().secret)

    def sign(self, sighash: bytes) -> bytes:
        """A BIP340 signature for a SIGHASH_DEFAULT key-path spend."""
        return coincurve.PrivateKey(self._tweaked_secret).sign_schnorr(sighash)


@dataclass(frozen=True)
class WalletCoin:
    outpoint: Outpoint
    coin: Coin
    confirmed: bool


class PaymentError(Exception):
    """A payment the wallet cannot build; `message` is bitcoind's wording."""

    def __init__(self, message: str, code: int = -4) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InsufficientFunds(PaymentError):
    def __init__(self) -> None:
        super().__init__("Insufficient funds", -6)


def sign_key_path(tx: Transaction, coins: list[Coin], keys: list[TaprootKey]) -> None:
    """Signs every input (SIGHASH_DEFAULT); `keys[i]` owns the coin input i spends."""
    tx.clear_cache()
    scripts = [Script(c.script_pubkey) for c in coins]
    values = [c.value for c in coins]
    for index, key in enumerate(keys):
        sighash = tx.sighash_taproot(index, scripts, values)
        tx.vin[index].witness = Witness([key.sign(sighash)])


class Wallet:
    """Keys derived from a seed kept in `path`; coins are found by the node, which owns the
    UTXO set and mempool, and handed to `pay`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        if path.exists():
            state = json.loads(path.read_text())
            self._seed = bytes.fromhex(state["seed"])
            count = int(state["keys"])
        else:
            self._seed, count = secrets.token_bytes(32), 0
        self._keys: dict[bytes, TaprootKey] = {}
        self._count = 0
        for _ in range(count):
            self._derive()
        self._save()

    def _derive(self) -> TaprootKey:
        counter = self._count
        while True:
            secret = hashlib.sha256(self._seed + counter.to_bytes(8, "big")).digest()
            try:
                key = TaprootKey(secret)
                break
            except Exception:  # a secret outside the group order: astronomically rare
                counter += 1 << 32
        self._count += 1
        self._keys[key.script_pubkey] = key
        return key

    def _save(self) -> None:
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"seed": self._seed.hex(), "keys": self._count}))
        os.replace(temporary, self._path)

    def new_key(self) -> TaprootKey:
        key = self._derive()
        self._save()
        return key

    def owns(self, script_pubkey: bytes) -> bool:
        return script_pubkey in self._keys

    def pay(
        self,
        candidates: list[WalletCoin],
        payments: list[tuple[bytes, int]],
        *,
        sat_per_vbyte: float,
        subtract_fee_from: set[int],
        locktime: int,
        replaceable: bool = True,
    ) -> Transaction:
        """A signed transaction paying `payments` from `candidates` (used in that order),
        change back to a new wallet key; BIP125 signalled when `replaceable`."""
        if not payments:
            raise PaymentError("Transaction must have at least one recipient", -8)
        for _, amount in payments:
            if amount <= 0:
                raise PaymentError("Invalid amount for send", -3)
        change_key = self.new_key()
        selected: list[WalletCoin] = []
        for candidate in candidates:
            selected.append(candidate)
            tx = self._settle(selected, payments, change_key, sat_per_vbyte, subtract_fee_from)
            if tx is not None:
                break
        else:
            raise InsufficientFunds()
        tx.locktime = locktime
        for inp in tx.vin:
            inp.sequence = RBF_SEQUENCE if replaceable else NO_RBF_SEQUENCE
        owners = [self._keys[c.coin.script_pubkey] for c in selected]
        sign_key_path(tx, [c.coin for c in selected], owners)
        return tx

    def _settle(
        self,
        selected: list[WalletCoin],
        payments: list[tuple[bytes, int]],
        change_key: TaprootKey,
        sat_per_vbyte: float,
        subtract_fee_from: set[int],
    ) -> Transaction | None:
        """The transaction spending `selected`, or None while they are not enough."""
        value_in = sum(c.coin.value for c in selected)
        total = sum(amount for _, amount in payments)

        def fee_of(with_change: bool) -> int:
            outputs = list(payments) + ([(change_key.script_pubkey, 0)] if with_change else [])
            vsize = to_parsed(_unsigned(selected, outputs, dummy=True)).vsize
            return int(-(-sat_per_vbyte * vsize // 1))

        for with_change in (True, False):
            fee = fee_of(with_change)
            paid_by_recipients = fee if subtract_fee_from else 0
            change = value_in - total - (fee - paid_by_recipients)
            if change < 0:
                continue
            if with_change and change < dust_threshold(change_key.script_pubkey):
                continue
            outputs = _charge(payments, paid_by_recipients, subtract_fee_from)
            if with_change:
                position = secrets.randbelow(len(outputs) + 1)
                outputs.insert(position, (change_key.script_pubkey, change))
            return _unsigned(selected, outputs, dummy=False)
        return None


def _charge(
    payments: list[tuple[bytes, int]], fee: int, subtract_fee_from: set[int]
) -> list[tuple[bytes, int]]:
    """Takes `fee` from the chosen recipients, evenly, the first one paying the rest."""
    if not fee:
        return list(payments)
    chosen = sorted(subtract_fee_from)
    share, remainder = divmod(fee, len(chosen))
    charged = []
    for index, (spk, amount) in enumerate(payments):
        if index in subtract_fee_from:
            amount -= share + (remainder if index == chosen[0] else 0)
            if amount < dust_threshold(spk):
                raise PaymentError("The transaction amount is too small to pay the fee", -4)
        charged.append((spk, amount))
    return charged


def _unsigned(
    selected: list[WalletCoin], outputs: list[tuple[bytes, int]], *, dummy: bool
) -> Transaction:
    witness = [_DUMMY_SIGNATURE] if dummy else []
    return Transaction(
        version=2,
        vin=[
            TransactionInput(
                c.outpoint[0][::-1],
                c.outpoint[1],
                sequence=RBF_SEQUENCE,
                witness=Witness(list(witness)),
            )
            for c in selected
        ],
        vout=[TransactionOutput(amount, Script(spk)) for spk, amount in outputs],
        locktime=0,
    )
