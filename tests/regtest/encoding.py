"""Bitcoin's byte formats for transactions and blocks, parsed strictly: embit objects plus the
identifiers and sizes the node needs, worked out once at parse time (ParsedTx, ParsedBlock)."""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass, field

from embit import compact
from embit.transaction import Transaction

__all__ = [
    "BlockHeader",
    "DecodeError",
    "ParsedBlock",
    "ParsedTx",
    "compact_size",
    "decode_hex",
    "merkle_root",
    "parse_block",
    "parse_transaction",
    "sha256d",
    "to_parsed",
]

_HEX = re.compile(r"\A(?:[0-9a-fA-F]{2})*\Z")


class DecodeError(ValueError):
    """Bytes (or hex) that are not a well-formed transaction or block."""


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def compact_size(n: int) -> bytes:
    return compact.to_bytes(n)


def decode_hex(text: str) -> bytes:
    # bytes.fromhex accepts spaces between bytes; bitcoind's IsHex does not.
    if not _HEX.match(text):
        raise DecodeError("not a hex string")
    return bytes.fromhex(text)


class _StrictStream(io.BytesIO):
    """A stream whose short reads raise, so embit never parses past the end silently.

    embit turns a short read into a smaller number instead of an error; without this a
    count of 2^64 inputs would loop for ever and a truncated locktime would parse.
    """

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size >= 0 and len(data) != size:
            raise DecodeError("unexpected end of data")
        return data


@dataclass(frozen=True, slots=True)
class ParsedTx:
    """A transaction with its identifiers and sizes (hashes in internal byte order)."""

    tx: Transaction
    raw: bytes
    txid: bytes
    wtxid: bytes
    stripped_size: int

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def weight(self) -> int:
        return self.stripped_size * 3 + len(self.raw)

    @property
    def vsize(self) -> int:
        return (self.weight + 3) // 4

    @property
    def txid_hex(self) -> str:
        return self.txid[::-1].hex()

    @property
    def wtxid_hex(self) -> str:
        return self.wtxid[::-1].hex()

    @property
    def has_witness(self) -> bool:
        return self.stripped_size != len(self.raw)

    @property
    def is_coinbase(self) -> bool:
        vin = self.tx.vin
        return len(vin) == 1 and vin[0].txid == bytes(32) and vin[0].vout == 0xFFFFFFFF


def _stripped(tx: Transaction) -> bytes:
    parts = [tx.version.to_bytes(4, "little"), compact_size(len(tx.vin))]
    parts.extend(inp.serialize() for inp in tx.vin)
    parts.append(compact_size(len(tx.vout)))
    parts.extend(out.serialize() for out in tx.vout)
    parts.append(tx.locktime.to_bytes(4, "little"))
    return b"".join(parts)


def to_parsed(tx: Transaction) -> ParsedTx:
    """Wraps a transaction the node built itself."""
    raw = tx.serialize()
    stripped = _stripped(tx) if tx.is_segwit else raw
    return ParsedTx(tx, raw, sha256d(stripped), sha256d(raw), len(stripped))


def _read_transaction(stream: _StrictStream) -> ParsedTx:
    start = stream.tell()
    try:
        tx = Transaction.read_from(stream)
    except DecodeError:
        raise
    except Exception as exc:  # embit raises whatever its parsers hit
        raise DecodeError(f"malformed transaction: {exc}") from exc
    raw = stream.getbuffer()[start : stream.tell()].tobytes()
    # The round trip rejects what bitcoind's decoder rejects and embit lets through:
    # non-canonical sizes and a witness flag with only empty witnesses.
    parsed = to_parsed(tx)
    if parsed.raw != raw:
        raise DecodeError("non-canonical transaction encoding")
    return parsed


def parse_transaction(raw: bytes) -> ParsedTx:
    stream = _StrictStream(raw)
    parsed = _read_transaction(stream)
    if stream.tell() != len(raw):
        raise DecodeError("trailing bytes after transaction")
    return parsed


@dataclass(frozen=True, slots=True)
class BlockHeader:
    version: int
    prev_hash: bytes
    merkle_root: bytes
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return (
            struct.pack("<i", self.version)
            + self.prev_hash
            + self.merkle_root
            + struct.pack("<III", self.time, self.bits, self.nonce)
        )

    @property
    def hash(self) -> bytes:
        return sha256d(self.serialize())

    @classmethod
    def parse(cls, raw: bytes) -> BlockHeader:
        if len(raw) != 80:
            raise DecodeError("a block header is 80 bytes")
        (version,) = struct.unpack_from("<i", raw, 0)
        time, bits, nonce = struct.unpack_from("<III", raw, 68)
        return cls(version, raw[4:36], raw[36:68], time, bits, nonce)


@dataclass(frozen=True, slots=True)
class ParsedBlock:
    header: BlockHeader
    txs: list[ParsedTx]
    raw: bytes
    hash: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", self.header.hash)

    @property
    def hash_hex(self) -> str:
        return self.hash[::-1].hex()

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def stripped_size(self) -> int:
        return 80 + len(compact_size(len(self.txs))) + sum(t.stripped_size for t in self.txs)

    @property
    def weight(self) -> int:
        return self.stripped_size * 3 + self.size


def parse_block(raw: bytes) -> ParsedBlock:
    stream = _StrictStream(raw)
    try:
        header = BlockHeader.parse(stream.read(80))
        count = compact.read_from(stream)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"malformed block: {exc}") from exc
    # Even an empty transaction takes 10 bytes; a larger count cannot be honest.
    if count > (len(raw) - stream.tell()) // 10:
        raise DecodeError("transaction count exceeds the data")
    txs = [_read_transaction(stream) for _ in range(count)]
    if stream.tell() != len(raw):
        raise DecodeError("trailing bytes after block")
    return ParsedBlock(header, txs, bytes(raw))


def merkle_root(hashes: list[bytes]) -> bytes:
    """Bitcoin's merkle root (an odd level repeats its last hash)."""
    if not hashes:
        return bytes(32)
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]
