"""Bitcoin Core's own bitcoind on regtest, for tests, the demo and benches.

The binary is the one `tools.bitcoin_core.bitcoin_core()` finds.

`Bitcoind` is one node process on a data directory of its own: RPC over its cookie, ZMQ
block and transaction notifications, P2P on loopback. `BitcoinNetwork` is what the bridge
runs against: one bitcoind per signing node, all peered over P2P with a miner whose wallet
funds deposits and which mines, so a block or transaction reaches each engine only the way
it would on the real network.

    with BitcoinNetwork(tmp_path, nodes=3) as network:
        network.miner.call("sendtoaddress", address, "1.0")
        network.mine(6)  # waits until every node has the blocks
        network.nodes[0].section()  # the `bitcoind` section of engine 1's configuration
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import signal
import subprocess
import threading
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tools.bitcoin_core import bitcoin_core
from tools.devcluster import free_ports, wait_until

__all__ = [
    "BitcoinNetwork",
    "Bitcoind",
    "RpcCallError",
]

WALLET = "miner"


class RpcCallError(Exception):
    """bitcoind's error reply to a call, with its code and message."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: RPC error {code}: {message}")
        self.code = code
        self.message = message


class _Started:
    """`with`: started on entry, stopped on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Bitcoind(_Started):
    """One `bitcoind -regtest` on `datadir`; amounts come back as Decimal.

    `wallet=True` gives it a wallet (named "miner") to fund and mine with; the signing
    nodes' own bitcoinds have none, as in production."""

    def __init__(
        self,
        datadir: Path,
        *,
        wallet: bool = False,
        extra_args: Iterable[str] = (),
        binary: Path | None = None,
    ) -> None:
        self.datadir = Path(datadir)
        self.binary = binary or bitcoin_core()
        self.wallet = wallet
        self.extra_args = list(extra_args)
        self.rpc_port, self.p2p_port, self.zmq_port = free_ports(3)
        self.rpc_url = f"http://127.0.0.1:{self.rpc_port}"
        self.zmq_endpoint = f"tcp://127.0.0.1:{self.zmq_port}"
        self.cookie_path = self.datadir / "regtest" / ".cookie"
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._ids = 0

    @property
    def p2p_address(self) -> str:
        return f"127.0.0.1:{self.p2p_port}"

    def arguments(self) -> list[str]:
        zmq = self.zmq_endpoint
        return [
            str(self.binary),
            "-regtest",
            f"-datadir={self.datadir}",
            "-server",
            "-printtoconsole=0",
            f"-port={self.p2p_port}",
            f"-bind=127.0.0.1:{self.p2p_port}",
            f"-rpcport={self.rpc_port}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            "-rpcthreads=8",
            f"-zmqpubhashblock={zmq}",
            f"-zmqpubrawblock={zmq}",
            f"-zmqpubrawtx={zmq}",
            "-listenonion=0",
            "-discover=0",
            "-dnsseed=0",
            "-fixedseeds=0",
            # Peers on loopback relay at once, not after the random delay of the real
            # network (which only slows the tests; the engine never relies on it).
            "-whitelist=noban,relay@127.0.0.1",
            "-fallbackfee=0.0002",
            *([] if self.wallet else ["-disablewallet"]),
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            raise RuntimeError(f"bitcoind on {self.datadir} is already running")
        self.datadir.mkdir(parents=True, exist_ok=True)
        with (self.datadir / "stderr.log").open("ab") as stderr:
            self.process = subprocess.Popen(
                self.arguments(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr,
            )  # fmt: skip
        wait_until(self._answers, timeout, f"bitcoind on {self.datadir} starting")
        if self.wallet:
            loaded = self.call("listwallets")
            if WALLET not in loaded:
                try:
                    self.call("loadwallet", WALLET)
                except RpcCallError:
                    self.call("createwallet", WALLET)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.datadir / "stderr.log").read_text(errors="replace")[-2000:]
            debug = self.datadir / "regtest" / "debug.log"
            tail = debug.read_text(errors="replace")[-2000:] if debug.exists() else ""
            raise RuntimeError(f"bitcoind exited with {self.process.returncode}:\n{log}{tail}")
        try:
            self.call("getblockchaininfo", timeout=5)
        except (OSError, RpcCallError, http.client.HTTPException):
            return False  # not listening yet, or warming up (code -28)
        return True

    def stop(self, timeout: float = 60.0) -> None:
        """Stops bitcoind cleanly (SIGTERM; SIGKILL after `timeout`)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.resume()
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freezes bitcoind (SIGSTOP): it holds its sockets open and answers nothing."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ---- JSON-RPC -------------------------------------------------------------------

    def call(self, method: str, *params: Any, timeout: float = 120.0) -> Any:
        """One JSON-RPC call (to the wallet's endpoint on a node with a wallet)."""
        with self._lock:
            self._ids += 1
            request_id = self._ids
        body = json.dumps(
            {"jsonrpc": "1.0", "id": request_id, "method": method, "params": list(params)},
            default=_json_default,
        )
        cookie = self.cookie_path.read_bytes().strip()
        headers = {
            "Authorization": "Basic " + base64.b64encode(cookie).decode(),
            "Content-Type": "application/json",
        }
        path = f"/wallet/{WALLET}" if self.wallet else "/"
        connection = http.client.HTTPConnection("127.0.0.1", self.rpc_port, timeout=timeout)
        try:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        try:
            answer = json.loads(payload, parse_float=Decimal)
        except ValueError:
            raise RpcCallError(method, response.status, payload[:200].decode("latin-1")) from None
        if answer.get("error"):
            error = answer["error"]
            raise RpcCallError(method, int(error.get("code", 0)), str(error.get("message")))
        return answer["result"]

    def section(self, **overrides: Any) -> dict[str, Any]:
        """The `bitcoind` section of an engine's configuration that follows this node."""
        return {
            "network": "regtest",
            "rpc_url": self.rpc_url,
            "cookie_file": str(self.cookie_path),
            "zmq_block": self.zmq_endpoint,
            "poll_seconds": 0.5,
            **overrides,
        }

    # ---- peers ----------------------------------------------------------------------

    def connect(self, other: Bitcoind) -> None:
        """Opens a P2P connection to `other` and waits until its handshake is done."""
        self.call("addnode", other.p2p_address, "onetry")
        wait_until(lambda: self._peers_with(other), 30, f"P2P to {other.datadir.name}")

    def disconnect(self, other: Bitcoind) -> None:
        """Closes every connection between the two (each is outbound on one side)."""
        for side, far in ((self, other), (other, self)):
            for peer in side.call("getpeerinfo"):
                if peer["addr"] == far.p2p_address:
                    with contextlib.suppress(RpcCallError):  # gone meanwhile
                        side.call("disconnectnode", "", peer["id"])

        def apart() -> bool:
            return not self._peers_with(other) and not other._peers_with(self)

        wait_until(apart, 30, f"P2P to {other.datadir.name} closed")

    def _linked_with(self, other: Bitcoind) -> bool:
        """Whether a connection between the two exists, opened by either."""
        return self._peers_with(other) or other._peers_with(self)

    def _peers_with(self, other: Bitcoind) -> bool:
        """Whether this node has a connection to `other` it opened (handshake done)."""
        return any(
            peer["addr"] == other.p2p_address and peer.get("version", 0) > 0
            for peer in self.call("getpeerinfo")
        )

    def best(self) -> str:
        return str(self.call("getbestblockhash"))


class BitcoinNetwork(_Started):
    """A miner with a wallet and one bitcoind per signing node, each node peered with the
    miner and with every other node on loopback, as in production.

    Calls go to the miner (its wallet funds deposits; `-txindex` lets it look up any
    transaction). A mining call first hands the miner every transaction the nodes hold, and
    returns once every node still peered with it has the new blocks."""

    MINING = frozenset({"generatetoaddress", "generateblock", "generatetodescriptor"})

    def __init__(self, root: Path, nodes: int, *, mature: bool = True) -> None:
        self.root = Path(root)
        self.binary = bitcoin_core()
        self.miner = Bitcoind(
            self.root / "miner", wallet=True, binary=self.binary, extra_args=["-txindex"]
        )
        self.nodes: list[Bitcoind] = []
        self.size = nodes
        self.mature = mature
        self._mining_address: str | None = None

    def start(self) -> None:
        try:
            self.miner.start()
            self.grow(self.size)
            if self.mature:  # coinbase outputs the miner can spend
                self.mine(101)
        except BaseException:
            self.stop()
            raise

    def grow(self, count: int) -> None:
        """Starts node bitcoinds until there are `count`, each peered with the miner and
        the nodes before it."""
        while len(self.nodes) < count:
            node = Bitcoind(self.root / f"node-{len(self.nodes) + 1}", binary=self.binary)
            earlier = list(self.nodes)
            self.nodes.append(node)
            node.start()
            for peer in [self.miner, *earlier]:
                node.connect(peer)
        self.sync_blocks()

    def isolate(self, node: Bitcoind) -> None:
        """Cuts every P2P connection of `node` (it hears of nothing until it rejoins)."""
        for peer in [self.miner, *self.nodes]:
            if peer is not node and peer.running:
                node.disconnect(peer)

    def rejoin(self, node: Bitcoind) -> None:
        for peer in [self.miner, *self.nodes]:
            if peer is not node and peer.running:
                node.connect(peer)

    def sections(self, count: int, **overrides: Any) -> list[dict[str, Any]]:
        """The `bitcoind` sections of `count` engines, each following a bitcoind of its own."""
        self.grow(count)
        return [node.section(**overrides) for node in self.nodes[:count]]

    def stop(self) -> None:
        for node in [*self.nodes, self.miner]:
            node.stop()

    def call(self, method: str, *params: Any) -> Any:
        """A call to the miner; see the class's documentation for mining calls."""
        if method not in self.MINING:
            return self.miner.call(method, *params)
        self.sync_mempools()
        result = self.miner.call(method, *params)
        self.sync_blocks()
        return result

    def mining_address(self) -> str:
        if self._mining_address is None:
            self._mining_address = str(self.miner.call("getnewaddress"))
        return self._mining_address

    def mine(self, blocks: int = 1, *, empty: bool = False) -> list[str]:
        """Mines `blocks` blocks (with the mempool's transactions unless `empty`)."""
        if empty:
            return [
                self.call("generateblock", self.mining_address(), [])["hash"] for _ in range(blocks)
            ]
        return list(self.call("generatetoaddress", blocks, self.mining_address()))

    def sync_blocks(self, within: float = 60.0) -> None:
        """Waits until every running node still peered with the miner has its tip, or (the
        miner building a branch shorter than the chain it left) as much work as it."""
        info = self.miner.call("getblockchaininfo")
        tip, work = info["bestblockhash"], int(info["chainwork"], 16)

        def caught_up(node: Bitcoind) -> bool:
            mine = node.call("getblockchaininfo")
            if mine["bestblockhash"] == tip:
                return True
            return int(mine["chainwork"], 16) >= work and _knows(node, tip)

        for node in self.following():
            wait_until(lambda n=node: caught_up(n), within, f"{node.datadir.name} at {tip}")

    def sync_mempools(self) -> None:
        """Hands the miner each transaction a node holds that it lacks, as relay would
        have; one the miner refuses (a conflict, say) stays out, as on the real network."""
        held = set(self.miner.call("getrawmempool"))
        for node in self.following():
            for txid in node.call("getrawmempool"):
                if txid not in held:
                    with contextlib.suppress(RpcCallError):
                        raw = node.call("getrawtransaction", txid)
                        self.miner.call("sendrawtransaction", raw)
                        held.add(txid)

    def following(self) -> list[Bitcoind]:
        """The node bitcoinds running and peered with the miner (not isolated)."""
        return [n for n in self.nodes if n.running and n._linked_with(self.miner)]


def _knows(node: Bitcoind, block_hash: str) -> bool:
    try:
        node.call("getblockheader", block_hash)
    except RpcCallError:
        return False
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} to bitcoind")
