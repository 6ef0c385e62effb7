"""The node's Bitcoin side, wired together: its bitcoind (RPC and ZMQ), its chain view and
the custody key's outputs it watches. The engine owns one when `bitcoind` is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.config import BitcoinConfig
from appliance.store import ChainRecords, Store
from hsm.config import read_secret

from .custody import CustodyKey, CustodyOutput
from .rpc import BitcoindRpc
from .view import ChainChange, ChainView
from .watcher import ChainWatcher

__all__ = ["ChainService"]


class ChainService:
    def __init__(
        self,
        config: BitcoinConfig,
        store: Store,
        audit: Callable[..., None],
        on_change: Callable[[ChainChange], None] | None = None,
    ) -> None:
        self.config = config
        password = read_secret(config.rpc_password) if config.rpc_user is not None else None
        self.rpc = BitcoindRpc(
            config.rpc_url,
            config.rpc_user,
            password,
            config.cookie_file,
            config.rpc_timeout_seconds,
        )
        self.view = ChainView(ChainRecords(store), config, audit)
        self.watcher = ChainWatcher(config, self.rpc, self.view, audit, on_change)

    async def start(self) -> None:
        await self.watcher.start()

    async def close(self) -> None:
        await self.watcher.close()

    def custody_key(self, group_key: bytes) -> CustodyKey:
        return CustodyKey(group_key, self.config.network)

    def watch_custody(self, group_key: bytes) -> None:
        """Watch the custody key's own output (change) and the fee reservoir."""
        key = self.custody_key(group_key)
        self.view.watch(key.custody)
        self.view.watch(key.reservoir)

    async def watch_deposit(
        self, group_key: bytes, recipient: str, since_height: int | None
    ) -> tuple[CustodyOutput, str, int]:
        """Watch a recipient's deposit address; rescan the canonical blocks from
        `since_height` (for deposits made before it was watched here). Returns the output,
        its address and the number of blocks rescanned."""
        key = self.custody_key(group_key)
        output = key.deposit(recipient)
        self.view.watch(output)
        rescanned = 0
        tip = self.view.tip
        if since_height is not None and tip is not None:
            for height in range(max(since_height, self.config.scan_from_height), tip[1] + 1):
                block_hash = self.view.records.canonical_at(height)
                if block_hash is not None:
                    self.view.rescan(block_hash, await self.watcher.fetch_block(block_hash))
                    rescanned += 1
        return output, key.address(output), rescanned

    def status(self) -> dict[str, Any]:
        state = self.watcher.state
        tip = self.view.tip
        unspent = self.view.unspent()
        return {
            "network": self.config.network,
            "sync": state.name,
            "reason": state.reason,
            "bitcoind_height": state.height,
            "view_height": tip[1] if tip else None,
            "view_tip": tip[0] if tip else None,
            "required_confirmations": self.view.required_confirmations(),
            "minting_paused": self.view.minting_paused(),
            "custody_utxos": len(unspent),
            "custody_sats": sum(o.amount for o in unspent),
            "garbage_refused": self.watcher.garbage,
        }
