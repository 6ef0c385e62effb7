"""Bitcoin transactions and blocks as bytes: strict parsing, serialization, txids, weight,
and the BIP341 signature message of a Taproot key-path spend.

Parsing refuses anything truncated, oversized or with trailing bytes (`EncodingError`),
so garbage from bitcoind or a peer never reaches the engine as a half-built object.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "SIGHASH_DEFAULT",
    "Block",
    "BlockHeader",
    "EncodingError",
    "Outpoint",
    "Transaction",
    "TxIn",
    "TxOut",
    "parse_block",
    "parse_transaction",
    "sha256d",
    "taproot_sighash",
]

MAX_MONEY: Final = 21_000_000 * 100_000_000
SIGHASH_DEFAULT: Final = 0x00
_ALLOWED_HASH_TYPES: Final = {0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83}
MAX_BLOCK_BYTES: Final = 4_000_000


class EncodingError(ValueError):
    """Bytes that are not a transaction or block; the message says where it broke."""


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _tagged(tag: str, data: bytes) -> bytes:
    prefix = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(prefix + prefix + data).digest()


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise EncodingError(f"truncated in {what} (offset {self.pos})")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u32(self, what: str) -> int:
        return int(struct.unpack_from("<I", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack_from("<Q", self.take(8, what))[0])

    def varint(self, what: str) -> int:
        first = self.take(1, what)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        value = int.from_bytes(self.take(size, what), "little")
        if value < (0xFD if size == 2 else 1 << (8 * size // 2)):
            raise EncodingError(f"non-canonical length in {what} (offset {self.pos})")
        return value

    def count(self, what: str, limit: int) -> int:
        n = self.varint(what)
        if n > limit:
            raise EncodingError(f"{what}: {n} exceeds {limit}")
        return n

    def bytes_(self, what: str, limit: int = MAX_BLOCK_BYTES) -> bytes:
        return self.take(self.count(what, limit), what)


@dataclass(frozen=True, slots=True)
class Outpoint:
    txid: bytes  # internal byte order (as serialized)
    index: int

    def serialize(self) -> bytes:
        return self.txid + self.index.to_bytes(4, "little")

    @property
    def txid_hex(self) -> str:
        """The txid as bitcoind displays it (reversed)."""
        return self.txid[::-1].hex()

    def __str__(self) -> str:
        return f"{self.txid_hex}:{self.index}"


@dataclass(frozen=True, slots=True)
class TxIn:
    prevout: Outpoint
    script_sig: bytes = b""
    sequence: int = 0xFFFFFFFD  # signals replacement (BIP125)
    witness: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class TxOut:
    amount: int  # satoshis
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return (
            self.amount.to_bytes(8, "little")
            + compact_size(len(self.script_pubkey))
            + (self.script_pubkey)
        )


@dataclass(frozen=True, slots=True)
class Transaction:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0

    @property
    def has_witness(self) -> bool:
        return any(i.witness for i in self.inputs)

    def serialize(self, with_witness: bool = True) -> bytes:
        witness = with_witness and self.has_witness
        parts = [self.version.to_bytes(4, "little")]
        if witness:
            parts.append(b"\x00\x01")
        parts.append(compact_size(len(self.inputs)))
        for txin in self.inputs:
            parts += [
                txin.prevout.serialize(),
                compact_size(len(txin.script_sig)),
                txin.script_sig,
                txin.sequence.to_bytes(4, "little"),
            ]
        parts.append(compact_size(len(self.outputs)))
        parts += [o.serialize() for o in self.outputs]
        if witness:
            for txin in self.inputs:
                parts.append(compact_size(len(txin.witness)))
                for item in txin.witness:
                    parts += [compact_size(len(item)), item]
        parts.append(self.locktime.to_bytes(4, "little"))
        return b"".join(parts)

    @property
    def txid(self) -> bytes:
        """Internal byte order; `txid_hex` is bitcoind's display form."""
        return sha256d(self.serialize(with_witness=False))

    @property
    def txid_hex(self) -> str:
        return self.txid[::-1].hex()

    @property
    def weight(self) -> int:
        base = len(self.serialize(with_witness=False))
        return base * 3 + len(self.serialize(with_witness=True))

    @property
    def vsize(self) -> int:
        return -(-self.weight // 4)

    @property
    def is_coinbase(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].prevout == Outpoint(bytes(32), 0xFFFFFFFF)

    def with_witnesses(self, witnesses: Sequence[tuple[bytes, ...]]) -> Transaction:
        inputs = tuple(
            TxIn(i.prevout, i.script_sig, i.sequence, w)
            for i, w in zip(self.inputs, witnesses, strict=True)
        )
        return Transaction(self.version, inputs, self.outputs, self.locktime)


def _read_transaction(reader: _Reader) -> Transaction:
    version = reader.u32("version")
    marker_at = reader.pos
    n_inputs = reader.count("input count", 100_000)
    segwit = False
    if n_inputs == 0:
        flag = reader.take(1, "segwit flag")[0]
        if flag != 1:
            raise EncodingError(f"bad segwit flag {flag} (offset {marker_at})")
        segwit = True
        n_inputs = reader.count("input count", 100_000)
        if n_inputs == 0:
            raise EncodingError("a transaction needs inputs")
    inputs = []
    for i in range(n_inputs):
        txid = reader.take(32, f"input {i} txid")
        index = reader.u32(f"input {i} index")
        script_sig = reader.bytes_(f"input {i} scriptSig", 10_000)
        sequence = reader.u32(f"input {i} sequence")
        inputs.append(TxIn(Outpoint(txid, index), script_sig, sequence))
    n_outputs = reader.count("output count", 100_000)
    outputs = []
    for i in range(n_outputs):
        amount = reader.u64(f"output {i} amount")
        if amount > MAX_MONEY:
            raise EncodingError(f"output {i} amount {amount} exceeds 21 million BTC")
        outputs.append(TxOut(amount, reader.bytes_(f"output {i} scriptPubKey", 10_000)))
    if segwit:
        with_witness = []
        for i, txin in enumerate(inputs):
            items = tuple(
                reader.bytes_(f"input {i} witness item", 4_000_000)
                for _ in range(reader.count(f"input {i} witness count", 10_000))
            )
            with_witness.append(TxIn(txin.prevout, txin.script_sig, txin.sequence, items))
        inputs = with_witness
        if not any(i.witness for i in inputs):
            raise EncodingError("segwit serialization with no witness")
    locktime = reader.u32("locktime")
    return Transaction(version, tuple(inputs), tuple(outputs), locktime)


def parse_transaction(data: bytes) -> Transaction:
    reader = _Reader(bytes(data))
    tx = _read_transaction(reader)
    if reader.pos != len(reader.data):
        raise EncodingError(f"{len(reader.data) - reader.pos} trailing bytes after the transaction")
    return tx


@dataclass(frozen=True, slots=True)
class BlockHeader:
    version: int
    previous: bytes  # internal byte order
    merkle_root: bytes
    time: int
    bits: int
    nonce: int
    raw: bytes

    @property
    def hash(self) -> bytes:
        return sha256d(self.raw)

    @property
    def hash_hex(self) -> str:
        return self.hash[::-1].hex()

    @property
    def previous_hex(self) -> str:
        return self.previous[::-1].hex()


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    transactions: tuple[Transaction, ...]

    @property
    def hash_hex(self) -> str:
        return self.header.hash_hex

    def merkle_root_matches(self) -> bool:
        level = [tx.txid for tx in self.transactions]
        if not level:
            return False
        while len(level) > 1:
            if len(level) % 2:
                level.append(level[-1])
            level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        return level[0] == self.header.merkle_root


def parse_block(data: bytes) -> Block:
    """Parse a serialized block; its merkle root must match its transactions."""
    if len(data) > MAX_BLOCK_BYTES:
        raise EncodingError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_BYTES}")
    reader = _Reader(bytes(data))
    raw = reader.take(80, "block header")
    version, previous, merkle, time_, bits, nonce = struct.unpack("<i32s32sIII", raw)
    header = BlockHeader(version, previous, merkle, time_, bits, nonce, raw)
    count = reader.count("transaction count", 100_000)
    if count == 0:
        raise EncodingError("a block needs a coinbase transaction")
    transactions = tuple(_read_transaction(reader) for _ in range(count))
    if reader.pos != len(reader.data):
        raise EncodingError(f"{len(reader.data) - reader.pos} trailing bytes after the block")
    block = Block(header, transactions)
    if not block.merkle_root_matches():
        raise EncodingError("block merkle root does not match its transactions")
    return block


class SighashCache:
    """The per-transaction hashes of BIP341's signature message, computed once."""

    def __init__(self, tx: Transaction, spent: Sequence[TxOut]) -> None:
        if len(spent) != len(tx.inputs):
            raise ValueError("the spent output of every input is needed")
        sha = hashlib.sha256
        self.prevouts = sha(b"".join(i.prevout.serialize() for i in tx.inputs)).digest()
        self.amounts = sha(b"".join(o.amount.to_bytes(8, "little") for o in spent)).digest()
        self.scripts = sha(
            b"".join(compact_size(len(o.script_pubkey)) + o.script_pubkey for o in spent)
        ).digest()
        self.sequences = sha(b"".join(i.sequence.to_bytes(4, "little") for i in tx.inputs)).digest()
        self.outputs = sha(b"".join(o.serialize() for o in tx.outputs)).digest()


def taproot_sighash(
    tx: Transaction,
    index: int,
    spent: Sequence[TxOut],
    hash_type: int = SIGHASH_DEFAULT,
    annex: bytes | None = None,
    cache: SighashCache | None = None,
) -> bytes:
    """BIP341 signature hash of input `index` for a key-path spend."""
    if hash_type not in _ALLOWED_HASH_TYPES:
        raise ValueError(f"hash type {hash_type:#x} is not defined by BIP341")
    cache = cache or SighashCache(tx, spent)
    base, anyone_can_pay = hash_type & 0x03, bool(hash_type & 0x80)
    parts = [
        b"\x00",
        bytes((hash_type,)),
        tx.version.to_bytes(4, "little"),
        tx.locktime.to_bytes(4, "little"),
    ]
    if not anyone_can_pay:
        parts += [cache.prevouts, cache.amounts, cache.scripts, cache.sequences]
    if base not in (0x02, 0x03):
        parts.append(cache.outputs)
    parts.append(bytes((1 if annex is not None else 0,)))
    txin = tx.inputs[index]
    if anyone_can_pay:
        out = spent[index]
        parts += [
            txin.prevout.serialize(),
            out.amount.to_bytes(8, "little"),
            compact_size(len(out.script_pubkey)) + out.script_pubkey,
            txin.sequence.to_bytes(4, "little"),
        ]
    else:
        parts.append(index.to_bytes(4, "little"))
    if annex is not None:
        parts.append(hashlib.sha256(compact_size(len(annex)) + annex).digest())
    if base == 0x03:
        if index >= len(tx.outputs):
            raise ValueError("SIGHASH_SINGLE without a matching output")
        parts.append(hashlib.sha256(tx.outputs[index].serialize()).digest())
    return _tagged("TapSighash", b"".join(parts))
