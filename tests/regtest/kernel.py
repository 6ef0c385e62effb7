"""libbitcoinkernel as the judge: every block the node connects and every input script it
accepts is checked by Bitcoin Core's own consensus code, through py-bitcoinkernel."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pbk
from pbk.script import PrecomputedTransactionData
from pbk.script import ScriptVerificationFlags as Flags

from .encoding import ParsedTx
from .validation import Coin

__all__ = ["BlockRejected", "ConsensusKernel", "KernelBlock", "first_invalid_input"]


class BlockRejected(Exception):
    """The kernel did not connect a block; `reason` is bitcoind's reject reason."""

    def __init__(self, block_hash: bytes, reason: str):
        super().__init__(f"block {block_hash[::-1].hex()} rejected: {reason}")
        self.block_hash = block_hash
        self.reason = reason


class KernelBlock(Protocol):
    @property
    def hash(self) -> bytes: ...

    @property
    def raw(self) -> bytes: ...


class _KernelLog:
    """The kernel's log messages, kept so a rejection can be reported with the kernel's
    own reason. The kernel has one logger per process, so this is a singleton."""

    _instance: _KernelLog | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[str] = []
        pbk.logging_set_options(pbk.LoggingOptions(log_timestamps=False))
        self._connection = pbk.LoggingConnection(self._receive)

    @classmethod
    def get(cls) -> _KernelLog:
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _receive(self, message: str) -> None:
        with self._lock:
            self._messages.append(message)
            del self._messages[:-200]  # only the latest block's messages matter

    def drain(self) -> list[str]:
        with self._lock:
            messages, self._messages = self._messages, []
        return messages


# Where the kernel's log states a block's reject reason. What follows is bitcoind's
# "reason, detail"; the reason itself may hold spaces ("...-failed (Invalid Schnorr signature)").
_REASON_PATTERNS = [
    re.compile(r"ConnectBlock [0-9a-f]{64} failed, (.+)"),
    re.compile(r"Block validation error: (.+)"),
    re.compile(r"AcceptBlock FAILED \((.+)\)"),
]


def _reason_from_log(messages: list[str], fallback: str) -> str:
    for pattern in _REASON_PATTERNS:
        for message in messages:
            match = pattern.search(message.strip())
            if match:
                return match.group(1).split(", ", 1)[0]
    return fallback


class ConsensusKernel:
    """A libbitcoinkernel chainstate on regtest that mirrors the node's active chain.

    The kernel offers no invalidateblock or reconsiderblock, so when the node's chain
    leaves the kernel's, a fresh chainstate replays the node's chain from genesis.
    Not thread-safe: the node calls it under its own lock.
    """

    def __init__(self, root: Path, *, worker_threads: int = 2) -> None:
        self._root = root
        self._worker_threads = worker_threads
        self._generation = 0
        self._log = _KernelLog.get()
        self._parameters = pbk.ChainParameters(pbk.ChainType.REGTEST)
        shutil.rmtree(root, ignore_errors=True)
        self._chainman, self._directory = self._open()
        chain = self._chainman.get_active_chain()
        self.genesis = bytes(self._chainman.blocks[chain.block_tree_entries[0]])

    def _open(self) -> tuple[pbk.ChainstateManager, Path]:
        self._generation += 1
        directory = self._root / f"chainstate-{self._generation}"
        directory.mkdir(parents=True)
        options = pbk.ContextOptions()
        options.set_chainparams(self._parameters)
        context = pbk.Context(options)
        manager_options = pbk.ChainstateManagerOptions(
            context, str(directory), str(directory / "blocks")
        )
        manager_options.set_worker_threads_num(self._worker_threads)
        manager_options.update_block_tree_db_in_memory(True)
        manager_options.update_chainstate_db_in_memory(True)
        return pbk.ChainstateManager(manager_options), directory

    def check_block(self, raw: bytes) -> bool:
        """The kernel's context-free block checks (proof of work, merkle root, sizes,
        coinbase shape, per-transaction rules)."""
        try:
            block = pbk.Block(raw)
        except Exception:
            return False
        state = block.check(self._parameters.consensus_params)
        return state.validation_mode == pbk.ValidationMode.VALID

    def tip(self) -> tuple[int, bytes]:
        """Height and hash (internal byte order) of the kernel's active tip."""
        chain = self._chainman.get_active_chain()
        height = chain.height
        return height, bytes(chain.block_tree_entries[height].block_hash)

    def follow(self, chain: Sequence[KernelBlock]) -> None:
        """Makes the kernel's active chain `chain` (genesis first), or raises BlockRejected
        for the first block of it the kernel refuses; blocks before it stay connected."""
        height, tip = self.tip()
        if height < len(chain) and chain[height].hash == tip:
            start = height + 1
        else:
            self._rebuild()
            start = 1
        for expected_height in range(start, len(chain)):
            self._connect(chain[expected_height], expected_height)

    def _connect(self, block: KernelBlock, expected_height: int) -> None:
        self._log.drain()
        fallback = "rejected by libbitcoinkernel"
        try:
            self._chainman.process_block(pbk.Block(block.raw))
        except pbk.ProcessBlockException:
            fallback = "duplicate-invalid"
        except Exception as exc:  # a block the kernel cannot even read
            raise BlockRejected(block.hash, f"block decode failed: {exc}") from exc
        height, tip = self.tip()
        if (height, tip) != (expected_height, block.hash):
            raise BlockRejected(block.hash, _reason_from_log(self._log.drain(), fallback))

    def _rebuild(self) -> None:
        old = self._directory
        self._chainman, self._directory = self._open()
        shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        del self._chainman
        shutil.rmtree(self._root, ignore_errors=True)


def first_invalid_input(ptx: ParsedTx, coins: list[Coin]) -> int | None:
    """The index of the first input whose script libbitcoinkernel refuses under all
    consensus flags, or None when every input is valid."""
    kernel_tx = pbk.Transaction(ptx.raw)
    scripts = [pbk.ScriptPubkey(coin.script_pubkey) for coin in coins]
    spent = [
        pbk.TransactionOutput(script, coin.value)
        for script, coin in zip(scripts, coins, strict=True)
    ]
    precomputed = PrecomputedTransactionData(kernel_tx, spent)
    for index, (script, coin) in enumerate(zip(scripts, coins, strict=True)):
        if not script.verify(coin.value, kernel_tx, precomputed, index, Flags.ALL):
            return index
    return None
