"""Follows this node's bitcoind: ZeroMQ block notifications for speed, polling for truth.

A notification only wakes the watcher; what it believes comes from RPC (and a raw block
announced by ZMQ is used only if its hash is the one RPC names). A poll every
`poll_seconds` catches up whatever a silently stalled ZMQ stream missed. The watcher also
judges bitcoind: in initial block download, behind its headers or with an old tip, or
unreachable, the node is not synced and signs nothing, and says why.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from appliance.config import BitcoinConfig

from .rpc import BitcoindError, BitcoindRpc, RpcProtocolError, RpcUnavailable
from .transaction import Block, EncodingError, parse_block
from .view import ChainChange, ChainView, ConnectedBlock

__all__ = ["ChainWatcher", "NotSynced", "SyncState"]

log = logging.getLogger(__name__)

MAX_WALK_BACK = 1000
SCAN_BATCH = 100
FORK_STATUSES = ("valid-fork", "valid-headers", "headers-only")


class NotSynced(Exception):
    """The node's bitcoind is not in a state to sign against; the message says why."""


@dataclass(frozen=True)
class SyncState:
    name: str  # "synced", "starting", "initial-block-download", "behind", "unreachable"
    reason: str
    height: int | None = None
    best_hash: str | None = None
    tip_time: float | None = None  # the block time of bitcoind's tip, when known

    @property
    def synced(self) -> bool:
        return self.name == "synced"


class ChainWatcher:
    def __init__(
        self,
        config: BitcoinConfig,
        rpc: BitcoindRpc,
        view: ChainView,
        audit: Callable[..., None],
        on_change: Callable[[ChainChange], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.rpc = rpc
        self.view = view
        self.audit = audit
        self.on_change = on_change
        self.clock = clock
        self.state = SyncState("starting", "the chain has not been read yet")
        self.garbage = 0
        self.notifications = 0  # ZMQ block notifications received
        self._changes: list[ChainChange] = []
        self._wake = asyncio.Event()
        self._announced: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._sequences: dict[bytes, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._context: zmq.asyncio.Context | None = None

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._context = zmq.asyncio.Context()
        self._tasks = [
            asyncio.create_task(self._listen(), name="chain-zmq"),
            asyncio.create_task(self._poll(), name="chain-poll"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._context is not None:
            self._context.destroy(linger=0)
        await self.rpc.close()

    def require_synced(self) -> None:
        if not self.state.synced:
            raise NotSynced(f"bitcoind is {self.state.name}: {self.state.reason}")

    # -- polling: the truth -----------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            try:
                await self.sync_once()
            except Exception:  # the watcher must outlive any single failure
                log.exception("chain sync failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
            self._wake.clear()

    async def sync_once(self) -> SyncState:
        """Ask bitcoind where it is, bring the view to its best block, judge the state; then
        tell `on_change` what changed (so it sees the state the change left)."""
        try:
            return await self._sync()
        finally:
            changes, self._changes = self._changes, []
            if self.on_change is not None:
                for change in changes:
                    self.on_change(change)

    async def _sync(self) -> SyncState:
        try:
            info = await self.rpc.call("getblockchaininfo")
            best, height, headers, ibd, tip_time = _chain_info(info)
            if ibd:
                return self._set("initial-block-download", "bitcoind is in initial block download")
            if self.view.tip is None or self.view.tip[0] != best:
                await self._catch_up(best, height)
            self._note_forks(await self.rpc.call("getchaintips"), height)
        except RpcUnavailable as exc:
            return self._set("unreachable", str(exc))
        except (RpcProtocolError, EncodingError, BitcoindError) as exc:
            self._garbage(f"RPC: {exc}")
            return self._set("unreachable", f"bitcoind answered with garbage: {exc}")
        if headers > height + 1:
            return self._set(
                "behind", f"bitcoind has {headers - height} headers it has not validated",
                height, best, tip_time,
            )  # fmt: skip
        age = self.clock() - tip_time
        if age > self.config.max_tip_age_seconds:
            return self._set(
                "behind", f"bitcoind's tip is {int(age)} s old", height, best, tip_time
            )
        tip = self.view.tip
        if tip is None or tip[0] != best:
            return self._set(
                "behind", "the chain moved while it was being read", height, best, tip_time
            )
        return self._set("synced", f"at height {height}", height, best, tip_time)

    def _set(
        self,
        name: str,
        reason: str,
        height: int | None = None,
        best: str | None = None,
        tip_time: float | None = None,
    ) -> SyncState:
        previous = self.state
        self.state = SyncState(name, reason, height, best, tip_time)
        if previous.name != name:
            self.audit(
                "chain.sync-state", "success" if name == "synced" else "warning",
                f"bitcoind is {name}: {reason}", state=name,
            )  # fmt: skip
        return self.state

    async def fetch_block(self, block_hash: str) -> Block:
        raw = self._announced.pop(block_hash, None)
        if raw is None:
            result = await self.rpc.call("getblock", block_hash, 0)
            if not isinstance(result, str):
                raise RpcProtocolError(f"getblock returned {type(result).__name__}, not hex")
            try:
                raw = bytes.fromhex(result)
            except ValueError as exc:
                raise RpcProtocolError("getblock returned a non-hex string") from exc
        block = parse_block(raw)
        if block.hash_hex != block_hash:
            raise RpcProtocolError(f"bitcoind served block {block.hash_hex} for {block_hash}")
        return block

    async def _catch_up(self, best: str, height: int) -> None:
        tip = self.view.tip
        start = self.config.scan_from_height
        if tip is None:
            await self._scan_forward(start, height)
            return
        # Walk back from bitcoind's best block to a block the view has as canonical.
        path: list[ConnectedBlock] = []
        block_hash, block_height = best, height
        records = self.view.records
        while not records.is_canonical(block_hash):
            if block_height < start or len(path) >= MAX_WALK_BACK:
                raise RpcProtocolError(
                    f"no common block with bitcoind within {len(path)} blocks below {best}"
                )
            known = records.known(block_hash)
            block = None if known else await self.fetch_block(block_hash)
            path.append(ConnectedBlock(block_hash, block_height, block))
            if block is None:
                header = await self.rpc.call("getblockheader", block_hash, True)
                previous = header.get("previousblockhash") if isinstance(header, dict) else None
                if not isinstance(previous, str):
                    raise RpcProtocolError(f"getblockheader of {block_hash} has no parent")
                block_hash = previous
            else:
                block_hash = block.header.previous_hex
            block_height -= 1
        path.reverse()
        self._changes.append(self.view.apply(block_height, path))

    async def _scan_forward(self, start: int, height: int) -> None:
        """First read of the chain: every block from `scan_from_height` to the tip."""
        for first in range(start, height + 1, SCAN_BATCH):
            batch = []
            for h in range(first, min(first + SCAN_BATCH, height + 1)):
                block_hash = await self.rpc.call("getblockhash", h)
                if not isinstance(block_hash, str):
                    raise RpcProtocolError("getblockhash returned a non-string")
                batch.append(ConnectedBlock(block_hash, h, await self.fetch_block(block_hash)))
            self._changes.append(self.view.apply(first - 1, batch))

    def _note_forks(self, tips: Any, height: int) -> None:
        """Competing branches bitcoind has seen (valid or only headers) within the window.

        A branch competes only if it leaves the active chain below its tip. One that starts
        on the tip itself is the chain going on: headers that came before their blocks, or
        blocks bitcoind is still connecting (it lists both as tips of their own)."""
        for tip_hash, tip_height, length, status in _chain_tips(tips):
            fork_height = tip_height - length + 1  # the branch's first block
            if (
                status in FORK_STATUSES
                and fork_height <= height
                and height - fork_height < self.config.fork_window_blocks
            ):
                self.view.record_fork(tip_hash, fork_height, length, status)

    # -- ZMQ: speed ------------------------------------------------------------------------
    async def _listen(self) -> None:
        assert self._context is not None
        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.RCVHWM, 1000)
        socket.setsockopt(zmq.MAXMSGSIZE, 8 << 20)
        for topic in (b"hashblock", b"rawblock"):
            socket.setsockopt(zmq.SUBSCRIBE, topic)
        socket.connect(self.config.zmq_block)
        while True:
            frames = await socket.recv_multipart()
            try:
                self._notification(frames)
            except (EncodingError, ValueError) as exc:
                self._garbage(f"ZMQ: {exc}")
            self._wake.set()

    def _notification(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            raise ValueError(f"notification of {len(frames)} frames, not 3")
        if len(frames[2]) != 4:
            raise ValueError(f"sequence number of {len(frames[2])} bytes, not 4")
        topic, body, sequence = frames[0], frames[1], int.from_bytes(frames[2], "little")
        self.notifications += 1
        expected = self._sequences.get(topic)
        if expected is not None and sequence != expected:
            log.warning("ZMQ %s sequence jumped from %d to %d", topic.decode(), expected, sequence)
        self._sequences[topic] = (sequence + 1) & 0xFFFFFFFF
        if topic == b"rawblock":
            block = parse_block(body)  # refuses garbage before it is cached
            self._announced[block.hash_hex] = body
            while len(self._announced) > 16:
                self._announced.popitem(last=False)
        elif topic == b"hashblock" and len(body) != 32:
            raise ValueError(f"hashblock of {len(body)} bytes")

    def _garbage(self, detail: str) -> None:
        self.garbage += 1
        log.warning("garbage from bitcoind: %s", detail)
        if self.garbage <= 5 or self.garbage % 100 == 0:
            self.audit(
                "chain.garbage", "refused", f"refused from bitcoind: {detail}", count=self.garbage
            )


def _chain_info(info: Any) -> tuple[str, int, int, bool, float]:
    if not isinstance(info, dict):
        raise RpcProtocolError("getblockchaininfo did not return an object")
    try:
        best = info["bestblockhash"]
        height = info["blocks"]
        headers = info["headers"]
        ibd = info["initialblockdownload"]
        tip_time = info["time"]
    except KeyError as exc:
        raise RpcProtocolError(f"getblockchaininfo lacks {exc}") from exc
    if not (
        isinstance(best, str)
        and len(best) == 64
        and isinstance(height, int)
        and isinstance(headers, int)
        and isinstance(ibd, bool)
        and isinstance(tip_time, int)
    ):
        raise RpcProtocolError("getblockchaininfo has fields of the wrong types")
    return best, height, headers, ibd, float(tip_time)


def _chain_tips(tips: Any) -> list[tuple[str, int, int, str]]:
    if not isinstance(tips, list):
        raise RpcProtocolError("getchaintips did not return a list")
    parsed = []
    for tip in tips:
        if not isinstance(tip, dict):
            raise RpcProtocolError("getchaintips returned a non-object")
        tip_hash, height = tip.get("hash"), tip.get("height")
        length, status = tip.get("branchlen"), tip.get("status")
        if not (
            isinstance(tip_hash, str)
            and len(tip_hash) == 64
            and isinstance(height, int)
            and isinstance(length, int)
            and 0 <= length <= height
            and isinstance(status, str)
        ):
            raise RpcProtocolError(f"getchaintips has a malformed tip: {tip!r:.120}")
        parsed.append((tip_hash, height, length, status))
    return parsed
