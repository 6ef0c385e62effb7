"""Bitcoin Core's own bitcoind on regtest, for tests, the demo and benches.

`bitcoin_core()` finds the binary, in this order: `$WIRE_MPC_BITCOIND` (a bitcoind binary
or the directory holding one); `../shared/bitcoin-core/` beside the repository (checked
against its SHA256SUMS); the official release tarball pinned in `image/bitcoind.pin`,
fetched once into `build/bitcoin-core/` and checked against the pinned hash. Failing all
three it raises `BitcoindNotFound`, which names them.

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
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "BitcoinNetwork",
    "Bitcoind",
    "BitcoindNotFound",
    "RpcCallError",
    "bitcoin_core",
    "wait_until",
]

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED = REPOSITORY.parent / "shared" / "bitcoin-core"
PIN = REPOSITORY / "image" / "bitcoind.pin"
CACHE = REPOSITORY / "build" / "bitcoin-core"
WALLET = "miner"


class BitcoindNotFound(RuntimeError):
    """No bitcoind could be found or fetched; the message names the ways tried."""


class RpcCallError(Exception):
    """bitcoind's error reply to a call, with its code and message."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: RPC error {code}: {message}")
        self.code = code
        self.message = message


# ---- finding the binary ---------------------------------------------------------------


def bitcoin_core() -> Path:
    """The bitcoind binary to run: see the module's documentation for the order."""
    tried = []
    given = os.environ.get("WIRE_MPC_BITCOIND")
    if given:
        path = Path(given)
        binary = path / "bitcoind" if path.is_dir() else path
        if _runnable(binary):
            return binary
        tried.append(f"$WIRE_MPC_BITCOIND={given}: no runnable bitcoind there")
    else:
        tried.append("$WIRE_MPC_BITCOIND: not set")
    shared = SHARED / "bitcoind"
    if shared.exists():
        problem = _checksum_problem(shared, SHARED / "SHA256SUMS")
        if problem is None and _runnable(shared):
            return shared
        tried.append(f"{shared}: {problem or 'does not run here (missing libraries?)'}")
    else:
        tried.append(f"{shared}: absent")
    try:
        return _pinned_release()
    except (OSError, ValueError) as exc:
        tried.append(f"pinned release ({PIN.name}): {exc}")
    raise BitcoindNotFound("no bitcoind: " + "; ".join(tried))


def _runnable(binary: Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        run = subprocess.run([binary, "-version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0 and b"Bitcoin Core" in run.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_problem(binary: Path, sums: Path) -> str | None:
    try:
        lines = sums.read_text().splitlines()
    except OSError as exc:
        return f"cannot read {sums}: {exc}"
    wanted = {name: digest for digest, _, name in (line.partition("  ") for line in lines)}
    if binary.name not in wanted:
        return f"{sums} has no line for {binary.name}"
    if _sha256(binary) != wanted[binary.name]:
        return f"its SHA256 differs from {sums}"
    return None


def _pin() -> dict[str, str]:
    pin = {}
    for line in PIN.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pin[key.strip()] = value.strip()
    return pin


def _pinned_release() -> Path:
    pin = _pin()
    binary = CACHE / pin["version"] / "bin" / "bitcoind"
    if _runnable(binary):
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        tarball = Path(scratch) / pin["tarball"]
        if not pin["url"].startswith("https://"):
            raise ValueError(f"{PIN}: the url must be https://")
        try:
            with (
                urllib.request.urlopen(pin["url"], timeout=30) as answer,  # noqa: S310 (https)
                tarball.open("wb") as out,
            ):
                shutil.copyfileobj(answer, out)
        except OSError as exc:
            raise OSError(f"cannot fetch {pin['url']}: {exc}") from exc
        if _sha256(tarball) != pin["sha256"]:
            raise ValueError(f"{pin['url']} does not have the pinned SHA256 {pin['sha256']}")
        with tarfile.open(tarball) as archive:
            archive.extractall(scratch, filter="data")
        unpacked = Path(scratch) / f"bitcoin-{pin['version']}"
        shutil.rmtree(CACHE / pin["version"], ignore_errors=True)
        unpacked.rename(CACHE / pin["version"])
    if not _runnable(binary):
        raise ValueError(f"{binary} from the pinned release does not run here")
    return binary


# ---- one node -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Any, within: float, what: str, interval: float = 0.05) -> Any:
    """The first truthy value of `predicate()`; TimeoutError naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within} s")
        time.sleep(interval)


class Bitcoind:
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
        self.rpc_port = free_port()
        self.p2p_port = free_port()
        self.zmq_port = free_port()
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

    def __enter__(self) -> Bitcoind:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

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


class BitcoinNetwork:
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

    def __enter__(self) -> BitcoinNetwork:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

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
