"""Regtest blocks as Bitcoin Core's miner makes them (BIP34 coinbase with the witness
commitment, merkle root, nonce ground against the regtest target), for the node and tests."""

from __future__ import annotations

import struct

from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from .encoding import BlockHeader, ParsedBlock, ParsedTx, compact_size, merkle_root, sha256d
from .encoding import to_parsed as parse_built

__all__ = [
    "BLOCK_VERSION",
    "COINBASE_MATURITY",
    "MAX_BLOCK_WEIGHT",
    "REGTEST_BITS",
    "assemble_block",
    "bits_to_target",
    "block_subsidy",
    "block_work",
    "build_coinbase",
    "difficulty",
    "script_number",
    "witness_commitment",
]

REGTEST_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000  # BIP9 top bits, no deployment signalled
SUBSIDY_HALVING_INTERVAL = 150  # regtest
COINBASE_MATURITY = 100
MAX_BLOCK_WEIGHT = 4_000_000
COIN = 100_000_000
_WITNESS_RESERVED_VALUE = bytes(32)
_COMMITMENT_HEADER = bytes.fromhex("6a24aa21a9ed")


def block_subsidy(height: int) -> int:
    halvings = height // SUBSIDY_HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def bits_to_target(bits: int) -> int:
    exponent, mantissa = bits >> 24, bits & 0x7FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def block_work(bits: int) -> int:
    target = bits_to_target(bits)
    return (1 << 256) // (target + 1) if target else 0


def difficulty(bits: int) -> float:
    # The same floating-point steps as bitcoind's GetDifficulty, so the digits match.
    shift = (bits >> 24) & 0xFF
    value = float(0x0000FFFF) / float(bits & 0x00FFFFFF)
    while shift < 29:
        value *= 256.0
        shift += 1
    while shift > 29:
        value /= 256.0
        shift -= 1
    return value


def script_number(n: int) -> bytes:
    """A push of `n` as CScript's `<< n` writes it (OP_0, OP_1..OP_16, or minimal bytes)."""
    if n == 0:
        return b"\x00"
    if n == -1:
        return b"\x4f"
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    magnitude, body = abs(n), bytearray()
    while magnitude:
        body.append(magnitude & 0xFF)
        magnitude >>= 8
    if body[-1] & 0x80:
        body.append(0x80 if n < 0 else 0)
    elif n < 0:
        body[-1] |= 0x80
    return bytes([len(body)]) + bytes(body)


def witness_commitment(others: list[ParsedTx]) -> bytes:
    """The coinbase output committing to the wtxids of the block's other transactions
    (BIP141); the coinbase's own wtxid counts as zero."""
    root = merkle_root([bytes(32)] + [t.wtxid for t in others])
    return _COMMITMENT_HEADER + sha256d(root + _WITNESS_RESERVED_VALUE)


def build_coinbase(height: int, payout: bytes, value: int, others: list[ParsedTx]) -> ParsedTx:
    """The coinbase bitcoind's miner builds: `<height> OP_0` as scriptSig, one payout and the
    witness commitment over `others`, the block's other transactions."""
    script_sig = script_number(height) + b"\x00"
    coinbase = Transaction(
        version=2,
        vin=[
            TransactionInput(
                bytes(32),
                0xFFFFFFFF,
                Script(script_sig),
                0xFFFFFFFF,
                Witness([_WITNESS_RESERVED_VALUE]),
            )
        ],
        vout=[
            TransactionOutput(value, Script(payout)),
            TransactionOutput(0, Script(witness_commitment(others))),
        ],
        locktime=0,
    )
    return parse_built(coinbase)


def assemble_block(
    prev_hash: bytes,
    time: int,
    txs: list[ParsedTx],
    *,
    bits: int = REGTEST_BITS,
    version: int = BLOCK_VERSION,
) -> ParsedBlock:
    """Header and body for `txs` (coinbase first), with a nonce that meets `bits`.

    `prev_hash` is in internal byte order (the reverse of what RPC shows).
    """
    root = merkle_root([t.txid for t in txs])
    target = bits_to_target(bits)
    prefix = struct.pack("<i", version) + prev_hash + root + struct.pack("<II", time, bits)
    for nonce in range(1 << 32):
        digest = sha256d(prefix + struct.pack("<I", nonce))
        if int.from_bytes(digest, "little") <= target:
            break
    else:
        raise RuntimeError("no nonce meets the target; change the time and try again")
    header = BlockHeader(version, prev_hash, root, time, bits, nonce)
    body = compact_size(len(txs)) + b"".join(t.raw for t in txs)
    return ParsedBlock(header, list(txs), header.serialize() + body)
