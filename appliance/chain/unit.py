"""Stopping, starting and restarting the node's bitcoind on an admin's request.

The engine may not touch systemd (it runs as its own user, with no privileges). It asks by
writing `bitcoind-<action>` in its runtime directory; on the appliance a root path unit
watches each of the three files and runs `systemctl <action> bitcoind.service`
(`wire-bitcoind-<action>.path` → `wire-bitcoind@<action>.service`). Nothing is read from the
file: the file's name is the whole request, and no other action exists.

The answer waits until bitcoind did what was asked, judged from bitcoind itself: stopped
when its RPC no longer answers (it is shutting down); started when it answers (a start of
a running bitcoind changes nothing); restarted when it answers with an uptime shorter than
the time since the request, or answers again once seen stopped. The chain watcher reads
bitcoind again at once, so the answer (and `status`) say whether the node signs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import CommandError

from .rpc import BitcoindError, BitcoindRpc, RpcProtocolError, RpcUnavailable

if TYPE_CHECKING:  # the API imports ACTIONS, and never the watcher's zmq
    from .watcher import ChainWatcher

__all__ = ["ACTIONS", "BitcoindUnit", "unit_installed"]

ACTIONS = ("stop", "start", "restart")
UNITS = Path("/usr/lib/systemd/system")
SETTLE_SECONDS = 180.0  # a stop flushes bitcoind's caches; a start in a slow VM loads its index


def unit_installed(units: Path = UNITS) -> bool:
    """Whether this system carries the path units that act on the requests."""
    return all((units / f"wire-bitcoind-{action}.path").exists() for action in ACTIONS)


class BitcoindUnit:
    def __init__(
        self,
        requests: Path,
        rpc: BitcoindRpc,
        watcher: ChainWatcher,
        installed: bool,
        audit: Callable[..., None],
        settle_seconds: float = SETTLE_SECONDS,
        pause: float = 1.0,
    ) -> None:
        self.requests = requests  # the engine's runtime directory
        self.rpc = rpc
        self.watcher = watcher
        self.installed = installed
        self.audit = audit  # the outcome's record (the request's is the control socket's)
        self.settle_seconds = settle_seconds
        self.pause = pause
        self._busy = asyncio.Lock()

    def request_file(self, action: str) -> Path:
        return self.requests / f"bitcoind-{action}"

    async def request(self, action: str, reason: str, actor: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise CommandError("bad-request", f"action must be one of {', '.join(ACTIONS)}")
        if not self.installed:
            raise CommandError(
                "not-appliance",
                "this node's bitcoind is not run by the appliance's systemd "
                f"(no wire-bitcoind-{action}.path): stop or start it where it runs",
            )
        if self._busy.locked():
            raise CommandError("busy", "a bitcoind request is under way on this node")
        async with self._busy:
            asked = time.time()
            self.request_file(action).write_text(f"{asked}\n")  # its path unit sees it
            done = await self._settle(action, asked)
            state = await self.watcher.sync_once()
        waited = round(time.time() - asked, 1)
        self.audit(
            f"bitcoind.{action}", "success" if done else "incomplete",
            f"bitcoind {action} asked by {actor} ({reason}): {'done' if done else 'not done'} "
            f"after {waited} s, bitcoind is {state.name}",
            actor=actor, action=action,
        )  # fmt: skip
        return {
            "action": action,
            "completed": done,
            "waited_seconds": waited,
            "bitcoind": {"state": state.name, "reason": state.reason},
        }

    async def _settle(self, action: str, asked: float) -> bool:
        """Whether bitcoind did `action` within `settle_seconds`."""
        deadline = time.monotonic() + self.settle_seconds
        down = False  # seen not answering since the request
        while time.monotonic() < deadline:
            try:
                uptime = await self.rpc.call("uptime")
            except RpcUnavailable:
                if action == "stop":
                    return True
                down = True
            except (BitcoindError, RpcProtocolError):  # starting ("loading block index")
                down = True
            else:
                if action == "start":  # started now, or already (systemd did nothing)
                    return True
                # Whole seconds: uptime + 1 within the time since the request means this
                # bitcoind started after it.
                if action == "restart" and (down or uptime + 1 <= time.time() - asked):
                    return True
            await asyncio.sleep(self.pause)
        return False
