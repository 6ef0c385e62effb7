"""Garbage from bitcoind's RPC or ZMQ is refused, counted and audited, never believed, and
never crashes the watcher. The RPC side is a hostile stand-in HTTP server (bitcoind cannot
be made to lie); the ZMQ side is a publisher of our own next to Bitcoin Core's bitcoind."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from appliance.chain.rpc import BitcoindError, BitcoindRpc, RpcProtocolError
from appliance.chain.service import ChainService
from appliance.store import Store
from tests.chain.helpers import CONFIG, Audit
from tools.bitcoind import Bitcoind

Answer = Callable[[str, list[object]], bytes]


def http(body: bytes, status: str = "200 OK", length: str | None = None) -> bytes:
    size = str(len(body)) if length is None else length
    return f"HTTP/1.1 {status}\r\nContent-Length: {size}\r\n\r\n".encode() + body


def result(value: object) -> bytes:
    return http(json.dumps({"result": value, "error": None, "id": 1}).encode())


class Hostile:
    """An HTTP server that answers each JSON-RPC method as the test says."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Hostile:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if not length:
                    return
                request = json.loads(await reader.readexactly(length))
                answer = self.answers[request["method"]](request["method"], request["params"])
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@pytest.fixture(scope="module")
def real_block(tmp_path_factory) -> tuple[str, str, dict]:
    """A real block from bitcoind: hash, raw hex and chain info pointing at it."""
    with Bitcoind(tmp_path_factory.mktemp("bitcoind"), wallet=True) as node:
        node.call("generatetoaddress", 1, node.call("getnewaddress"))
        best = node.call("getbestblockhash")
        info = node.call("getblockchaininfo")
        info = {k: info[k] for k in ("bestblockhash", "blocks", "headers", "time")}
        info["initialblockdownload"] = False
        return best, node.call("getblock", best, 0), info


def chain_answers(real_block, **overrides: Answer) -> dict[str, Answer]:
    best, raw, info = real_block
    answers: dict[str, Answer] = {
        "getblockchaininfo": lambda m, p: result(info),
        "getblockhash": lambda m, p: result(best if p[0] == 1 else "00" * 32),
        "getblock": lambda m, p: result(raw),
        "getchaintips": lambda m, p: result([]),
    }
    answers.update(overrides)
    return answers


GARBAGE: dict[str, dict[str, Answer]] = {
    "chain info is not an object": {"getblockchaininfo": lambda m, p: result([1, 2])},
    "chain info of wrong types": {
        "getblockchaininfo": lambda m, p: result(
            {"bestblockhash": 7, "blocks": "1", "headers": 1, "initialblockdownload": 0, "time": 1}
        )
    },
    "not JSON": {"getblockchaininfo": lambda m, p: http(b"<html>not json</html>")},
    "not JSON-RPC": {"getblockchaininfo": lambda m, p: http(b'{"jsonrpc": "2.0"}')},
    "not HTTP": {"getblockchaininfo": lambda m, p: b"SSH-2.0-OpenSSH\r\n\r\n"},
    "bad length": {"getblockchaininfo": lambda m, p: http(b"{}", length="lots")},
    "error without code": {
        "getblockchaininfo": lambda m, p: http(b'{"result": null, "error": {"code": "x"}}')
    },
    "truncated block": {"getblock": lambda m, p: result("00" * 100)},
    "block not hex": {"getblock": lambda m, p: result("zz" * 100)},
    "block of wrong type": {"getblock": lambda m, p: result({"hex": "00"})},
    "another block": {"getblockhash": lambda m, p: result("11" * 32)},
    "block hash not a string": {"getblockhash": lambda m, p: result(5)},
    "chain tips malformed": {"getchaintips": lambda m, p: result([{"hash": "ab"}])},
}


class Recorded(Audit):
    """An audit recorder a test can wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def __call__(self, event: str, outcome: str, message: str, **fields: object) -> None:
        super().__call__(event, outcome, message, **fields)
        self.written.set()

    async def until(self, event: str, count: int) -> None:
        while self.events().count(event) < count:
            self.written.clear()
            await self.written.wait()


def service_on(url: str, path: Path, **config: object) -> tuple[ChainService, Audit, Store]:
    store = Store(path / "node.db")
    audit = Audit()
    settings = dataclasses.replace(
        CONFIG, rpc_url=url, rpc_user=None, cookie_file=path / "cookie", **config
    )
    (path / "cookie").write_text("__cookie__:secret")
    return ChainService(settings, store, audit), audit, store


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_rpc_garbage_is_refused_without_harm(case, real_block, tmp_path) -> None:
    async def scenario() -> None:
        async with Hostile(chain_answers(real_block, **GARBAGE[case])) as hostile:
            service, audit, store = service_on(hostile.url, tmp_path, scan_from_height=1)
            state = await service.watcher.sync_once()
            assert state.name == "unreachable"
            assert "garbage" in state.reason
            assert service.watcher.garbage == 1
            assert ("chain.garbage", "refused") in [(e, o) for e, o, _ in audit]
            assert service.view.tip is None or service.view.tip[0] == real_block[0]
            await service.close()
            store.close()

    asyncio.run(scenario())


def test_the_same_stand_in_without_garbage_is_believed(real_block, tmp_path) -> None:
    """The control: the stand-in serving a real block is synced, so the cases above fail
    only for their garbage."""

    async def scenario() -> None:
        async with Hostile(chain_answers(real_block)) as hostile:
            service, _, store = service_on(hostile.url, tmp_path, scan_from_height=1)
            state = await service.watcher.sync_once()
            assert state.synced
            assert service.view.tip == (real_block[0], 1)
            await service.close()
            store.close()

    asyncio.run(scenario())


def test_bitcoind_errors_are_typed(real_block) -> None:
    async def scenario() -> None:
        answers = {
            "getblock": lambda m, p: http(
                b'{"result": null, "error": {"code": -5, "message": "Block not found"}, "id": 1}'
            )
        }
        async with Hostile(answers) as hostile:
            rpc = BitcoindRpc(hostile.url, "user", "password")
            with pytest.raises(BitcoindError) as caught:
                await rpc.call("getblock", "00" * 32, 0)
            assert (caught.value.code, caught.value.message) == (-5, "Block not found")
            await rpc.close()

    asyncio.run(scenario())


def test_an_oversized_answer_is_refused(real_block) -> None:
    async def scenario() -> None:
        answers = {"getblock": lambda m, p: http(b"{}", length=str(1 << 40))}
        async with Hostile(answers) as hostile:
            rpc = BitcoindRpc(hostile.url, "user", "password")
            with pytest.raises(RpcProtocolError, match="Content-Length"):
                await rpc.call("getblock", "00" * 32, 0)
            await rpc.close()

    asyncio.run(scenario())


@pytest.fixture
def node(tmp_path) -> Iterator[Bitcoind]:
    with Bitcoind(tmp_path / "bitcoind", wallet=True) as process:
        process.call("generatetoaddress", 101, process.call("getnewaddress"))
        yield process


def test_zmq_garbage_is_refused_and_the_listener_survives(node, tmp_path) -> None:
    async def scenario() -> None:
        context = zmq.asyncio.Context()
        publisher = context.socket(zmq.XPUB)
        port = publisher.bind_to_random_port("tcp://127.0.0.1")
        store = Store(tmp_path / "node.db")
        audit = Recorded()
        config = dataclasses.replace(
            CONFIG,
            rpc_url=node.rpc_url,
            rpc_user=None,
            cookie_file=node.cookie_path,
            zmq_block=f"tcp://127.0.0.1:{port}",
            poll_seconds=60,  # only a notification wakes the watcher
        )
        changed = asyncio.Event()
        service = ChainService(config, store, audit, on_change=lambda _: changed.set())
        await service.start()

        async def caught_up() -> None:
            best = node.call("getbestblockhash")
            async with asyncio.timeout(20):  # checked every 50 ms: bounded, never stuck on an event
                while service.view.tip is None or service.view.tip[0] != best:
                    await asyncio.sleep(0.05)

        try:
            await caught_up()
            async with asyncio.timeout(10):  # both subscriptions have arrived
                subscriptions = {await publisher.recv(), await publisher.recv()}
            assert subscriptions == {b"\x01hashblock", b"\x01rawblock"}
            raw = bytes.fromhex(node.call("getblock", node.call("getbestblockhash"), 0))
            bad_merkle = raw[:40] + bytes(32) + raw[72:]
            garbage = [
                [b"rawblock", raw[:50], (0).to_bytes(4, "little")],  # truncated
                [b"rawblock", bad_merkle, (1).to_bytes(4, "little")],  # lying header
                [b"hashblock", b"\x00" * 5, (0).to_bytes(4, "little")],  # short hash
                [b"hashblock", b"\x00" * 32],  # no sequence frame
                [b"rawblock", raw, b"\x00"],  # sequence of one byte
            ]
            for frames in garbage:
                await publisher.send_multipart(frames)
            async with asyncio.timeout(10):
                await audit.until("chain.garbage", len(garbage))
            assert service.watcher.garbage == len(garbage)
            # The listener still works: a real notification after the garbage wakes a
            # sync that brings in the blocks mined meanwhile.
            node.call("generatetoaddress", 2, node.call("getnewaddress"))
            best = bytes.fromhex(node.call("getbestblockhash"))  # bitcoind's display order
            await publisher.send_multipart([b"hashblock", best, (2).to_bytes(4, "little")])
            await caught_up()
        finally:
            await service.close()
            publisher.close(0)
            context.term()
            store.close()

    asyncio.run(scenario())
