"""The regtest node speaks bitcoind's RPC and ZMQ and lets libbitcoinkernel judge every
block and script: exercised over its real sockets, as a separate process."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import zmq
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from tests.regtest.encoding import to_parsed
from tests.regtest.harness import RegtestProcess, RpcCallError, block_on
from tests.regtest.validation import Coin
from tests.regtest.wallet import TaprootKey, sign_key_path

FINAL = 0xFFFFFFFE  # does not signal BIP125
SIGNALS_RBF = 0xFFFFFFFD
SATS = Decimal(100_000_000)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegtestProcess]:
    with RegtestProcess(tmp_path_factory.mktemp("regtest")) as process:
        process.call("generatetoaddress", 101, process.call("getnewaddress"))
        yield process


# ---- helpers -------------------------------------------------------------------------------------


def mine(node: RegtestProcess, blocks: int = 1) -> list[str]:
    hashes: list[str] = node.call("generatetoaddress", blocks, node.call("getnewaddress"))
    return hashes


def fund(node: RegtestProcess, keys: list[TaprootKey], btc: str) -> dict[bytes, tuple[str, int]]:
    """Pays `btc` to each key in one transaction, confirms it; returns key → outpoint."""
    txid = node.call("sendmany", "", {key.address: btc for key in keys})
    mine(node)
    decoded = node.call("getrawtransaction", txid, True)
    by_script = {bytes.fromhex(o["scriptPubKey"]["hex"]): o["n"] for o in decoded["vout"]}
    return {key.script_pubkey: (txid, by_script[key.script_pubkey]) for key in keys}


def spend(
    key: TaprootKey,
    outpoint: tuple[str, int],
    value: int,
    pay: int,
    *,
    sequence: int = SIGNALS_RBF,
    to: bytes | None = None,
) -> Transaction:
    """A key-path spend of one output worth `value` sats, paying `pay` sats onwards."""
    tx = Transaction(
        vin=[TransactionInput(bytes.fromhex(outpoint[0]), outpoint[1], sequence=sequence)],
        vout=[TransactionOutput(pay, Script(to or key.script_pubkey))],
    )
    sign_key_path(tx, [Coin(value, key.script_pubkey, 0, False)], [key])
    return tx


def rpc_error(node: RegtestProcess, method: str, *params: object) -> RpcCallError:
    with pytest.raises(RpcCallError) as caught:
        node.call(method, *params)
    return caught.value


# ---- chain and funding ---------------------------------------------------------------------------


def test_funds_a_taproot_address_and_reports_the_chain_like_bitcoind(node: RegtestProcess) -> None:
    key = TaprootKey.generate()
    txid = node.call("sendtoaddress", key.address, Decimal("1.25"))
    assert txid in node.call("getrawmempool")
    entry = node.call("getmempoolentry", txid)
    assert entry["bip125-replaceable"] is True
    assert entry["fees"]["base"] == Decimal(2 * entry["vsize"]) / SATS  # the wallet's 2 sat/vB

    [block_hash] = mine(node)
    block = node.call("getblock", block_hash, 2)
    [funding] = [tx for tx in block["tx"] if tx["txid"] == txid]
    [output] = [o for o in funding["vout"] if o["scriptPubKey"].get("address") == key.address]
    assert output["value"] == Decimal("1.25")
    assert output["scriptPubKey"]["type"] == "witness_v1_taproot"
    assert output["scriptPubKey"]["hex"] == key.script_pubkey.hex()
    assert funding["fee"] == entry["fees"]["base"]
    assert txid not in node.call("getrawmempool")

    raw = node.call("getrawtransaction", txid, True)
    assert (raw["blockhash"], raw["confirmations"]) == (block_hash, 1)
    assert raw["time"] == raw["blocktime"] == block["time"]
    assert node.call("getrawtransaction", txid) == raw["hex"]
    unspent = node.call("gettxout", txid, output["n"])
    assert (unspent["value"], unspent["confirmations"]) == (Decimal("1.25"), 1)

    info = node.call("getblockchaininfo")
    height = node.call("getblockcount")
    assert info["chain"] == "regtest"
    assert info["blocks"] == info["headers"] == height == block["height"]
    assert info["bestblockhash"] == block_hash == node.call("getblockhash", height)
    assert info["chainwork"] == f"{2 * (height + 1):064x}"  # regtest work is 2 per block
    assert info["difficulty"] == Decimal("4.656542373906925E-10")
    assert (info["initialblockdownload"], info["pruned"], info["warnings"]) == (False, False, "")
    assert info["verificationprogress"] == 1
    assert info["time"] == block["time"]
    assert info["mediantime"] == block["mediantime"]

    node.call("setinitialblockdownload", True)
    node.call("setheaders", height + 10)
    pretending = node.call("getblockchaininfo")
    assert pretending["initialblockdownload"] is True
    assert pretending["headers"] == height + 10
    assert pretending["blocks"] == height
    node.call("setinitialblockdownload", False)
    node.call("setheaders", None)
    assert node.call("getblockchaininfo")["headers"] == height

    assert node.call("estimatesmartfee", 6) == {
        "errors": ["Insufficient data or no feerate found"],
        "blocks": 0,
    }
    node.call("setfeeestimate", Decimal("0.00012"))
    assert node.call("estimatesmartfee", 6) == {"feerate": Decimal("0.00012000"), "blocks": 6}
    node.call("setfeeestimate", None)


# ---- mempool policy and consensus ----------------------------------------------------------------


def test_refuses_what_bitcoind_refuses_and_replaces_by_fee(node: RegtestProcess) -> None:
    keys = [TaprootKey.generate() for _ in range(5)]
    outpoints = fund(node, keys, "0.1")
    value = 10_000_000
    bad_sig, overspend, cheap, first_seen, replaceable = keys
    before = sorted(node.call("getrawmempool"))

    # A signature libbitcoinkernel refuses: one bit flipped.
    tx = spend(bad_sig, outpoints[bad_sig.script_pubkey], value, value - 1000)
    signature = tx.vin[0].witness.items[0]
    tx.vin[0].witness = Witness([signature[:-1] + bytes([signature[-1] ^ 1])])
    [verdict] = node.call("testmempoolaccept", [tx.serialize().hex()])
    assert verdict["allowed"] is False
    assert (
        verdict["reject-reason"]
        == "mandatory-script-verify-flag-failed (Invalid Schnorr signature)"
    )
    error = rpc_error(node, "sendrawtransaction", tx.serialize().hex())
    assert error.code == -26
    assert error.message == "mandatory-script-verify-flag-failed (Invalid Schnorr signature)"
    honest = spend(bad_sig, outpoints[bad_sig.script_pubkey], value, value - 1000)
    [verdict] = node.call("testmempoolaccept", [honest.serialize().hex()])
    assert verdict["allowed"] is True
    assert verdict["fees"]["base"] == Decimal("0.00001")
    assert sorted(node.call("getrawmempool")) == before  # testmempoolaccept changes nothing

    error = rpc_error(
        node,
        "sendrawtransaction",
        spend(overspend, outpoints[overspend.script_pubkey], value, value + 1).serialize().hex(),
    )
    assert error.code == -26
    assert error.message.startswith("bad-txns-in-belowout")

    below_relay = spend(cheap, outpoints[cheap.script_pubkey], value, value - 1)
    vsize = to_parsed(below_relay).vsize
    below_relay = spend(cheap, outpoints[cheap.script_pubkey], value, value - (vsize - 1))
    error = rpc_error(node, "sendrawtransaction", below_relay.serialize().hex())
    assert (error.code, error.message) == (-26, f"min relay fee not met, {vsize - 1} < {vsize}")

    dust = spend(cheap, outpoints[cheap.script_pubkey], value, 329)
    assert rpc_error(node, "sendrawtransaction", dust.serialize().hex()).message == "dust"
    greedy = spend(cheap, outpoints[cheap.script_pubkey], value, 1000)
    error = rpc_error(node, "sendrawtransaction", greedy.serialize().hex())
    assert (error.code, error.message) == (
        -25,
        "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
    )
    missing = spend(cheap, ("11" * 32, 0), value, value - 1000)
    error = rpc_error(node, "sendrawtransaction", missing.serialize().hex())
    assert (error.code, error.message) == (-25, "bad-txns-inputs-missingorspent")

    # First seen wins against a double spend when the original does not signal BIP125.
    original = spend(
        first_seen, outpoints[first_seen.script_pubkey], value, value - 1000, sequence=FINAL
    )
    original_txid = node.call("sendrawtransaction", original.serialize().hex())
    assert node.call("sendrawtransaction", original.serialize().hex()) == original_txid
    double = spend(
        first_seen,
        outpoints[first_seen.script_pubkey],
        value,
        value - 50_000,
        to=keys[0].script_pubkey,
    )
    error = rpc_error(node, "sendrawtransaction", double.serialize().hex())
    assert (error.code, error.message) == (-26, "txn-mempool-conflict")
    assert node.call("getmempoolentry", original_txid)["bip125-replaceable"] is False

    # A signalling original is replaced by a higher fee, and not by a too small increase.
    point = outpoints[replaceable.script_pubkey]
    first = node.call(
        "sendrawtransaction", spend(replaceable, point, value, value - 500).serialize().hex()
    )
    second = node.call(
        "sendrawtransaction",
        spend(replaceable, point, value, value - 2000, to=keys[0].script_pubkey).serialize().hex(),
    )
    assert second in node.call("getrawmempool")
    assert first not in node.call("getrawmempool")
    assert rpc_error(node, "getmempoolentry", first).code == -5
    too_little = spend(replaceable, point, value, value - 2050, to=keys[1].script_pubkey)
    error = rpc_error(node, "sendrawtransaction", too_little.serialize().hex())
    assert error.code == -26
    assert error.message.startswith("insufficient fee, rejecting replacement")
    assert second in node.call("getrawmempool")

    [confirmed] = mine(node)
    assert {original_txid, second} <= set(node.call("getblock", confirmed)["tx"])
    error = rpc_error(node, "sendrawtransaction", original.serialize().hex())
    assert (error.code, error.message) == (-27, "Transaction already in block chain")


# ---- ZMQ -----------------------------------------------------------------------------------------


class Subscriber:
    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        for topic in (b"hashblock", b"rawblock", b"rawtx"):
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)
        self.last: dict[bytes, int] = {}

    def receive(self, timeout: float) -> tuple[bytes, bytes, int] | None:
        if not self.socket.poll(int(timeout * 1000)):
            return None
        topic, body, sequence = self.socket.recv_multipart()
        number = int.from_bytes(sequence, "little")
        self.last[topic] = number
        return topic, body, number

    def expect(self, topic: bytes, timeout: float = 10.0) -> tuple[bytes, int]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(remaining)
            if message is not None and message[0] == topic:
                return message[1], message[2]
            if message is not None:
                raise AssertionError(f"expected {topic!r}, got {message[0]!r}")
        raise AssertionError(f"no {topic!r} within {timeout} s")

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def test_zmq_publishes_blocks_and_transactions_in_sequence(node: RegtestProcess) -> None:
    subscriber = Subscriber(node.zmq_endpoint)
    try:
        # A subscription takes effect some time after connecting: mine until one arrives.
        deadline = time.monotonic() + 10
        synced = None
        while synced is None and time.monotonic() < deadline:
            [candidate] = mine(node)
            while (message := subscriber.receive(0.2)) is not None:
                if message[0] == b"hashblock" and message[1].hex() == candidate:
                    synced = candidate
                    break
        assert synced is not None, "no hashblock within 10 s"
        subscriber.expect(b"rawblock")
        # From here on nothing is missed: a whole block, in bitcoind's order.
        [warm] = mine(node)
        for _ in node.call("getblock", warm)["tx"]:
            _, rawtx = subscriber.expect(b"rawtx")
        body, hashblock = subscriber.expect(b"hashblock")
        assert body.hex() == warm
        _, rawblock = subscriber.expect(b"rawblock")

        txid = node.call("sendtoaddress", TaprootKey.generate().address, Decimal("0.5"))
        body, sequence = subscriber.expect(b"rawtx")
        assert (body.hex(), sequence) == (node.call("getrawtransaction", txid), rawtx + 1)

        [block_hash] = mine(node)
        block = node.call("getblock", block_hash, 2)
        for offset, tx in enumerate(block["tx"], start=2):  # the block's transactions first
            body, sequence = subscriber.expect(b"rawtx")
            assert (body.hex(), sequence) == (tx["hex"], rawtx + offset)
        body, sequence = subscriber.expect(b"hashblock")
        assert (body.hex(), sequence) == (block_hash, hashblock + 1)
        body, sequence = subscriber.expect(b"rawblock")
        assert (body.hex(), sequence) == (node.call("getblock", block_hash, 0), rawblock + 1)

        # Silenced: RPC still answers and mines, nothing arrives.
        node.call("setzmqpublishing", False)
        [silent] = mine(node)
        assert node.call("getbestblockhash") == silent
        assert subscriber.receive(0.5) is None
        node.call("setzmqpublishing", True)
        [loud] = mine(node)
        body, _ = subscriber.expect(b"rawtx")
        body, sequence = subscriber.expect(b"hashblock")
        # Sequence numbers kept counting while silent: the gap shows what was missed.
        assert (body.hex(), sequence) == (loud, hashblock + 3)
    finally:
        subscriber.close()


# ---- reorganisations -----------------------------------------------------------------------------


def test_invalidate_reconsider_and_competing_branches(node: RegtestProcess) -> None:
    txid = node.call("sendtoaddress", TaprootKey.generate().address, Decimal("0.3"))
    [original] = mine(node)
    height = node.call("getblockcount")
    parent = node.call("getblockheader", original)["previousblockhash"]

    node.call("invalidateblock", original)
    assert node.call("getbestblockhash") == parent
    assert txid in node.call("getrawmempool")  # back from the disconnected block
    assert node.call("getblock", original)["confirmations"] == -1

    competing = mine(node, 2)
    assert node.call("getbestblockhash") == competing[-1]
    assert node.call("getblockcount") == height + 1
    assert node.call("getrawtransaction", txid, True)["blockhash"] == competing[0]

    node.call("reconsiderblock", original)
    assert node.call("getbestblockhash") == competing[-1]  # still the longer branch
    tips = {tip["hash"]: tip for tip in node.call("getchaintips")}
    assert tips[original]["status"] == "valid-fork"
    assert tips[original]["branchlen"] == 1
    assert tips[competing[-1]]["status"] == "active"

    # The original branch grows past the competing one: the node switches back.
    payout = TaprootKey.generate().script_pubkey
    first = block_on(node, original, payout)
    assert node.call("submitblock", first.raw.hex()) == "inconclusive"  # equal work: first seen
    assert node.call("getbestblockhash") == competing[-1]
    second = block_on(node, first.hash_hex, payout)
    assert node.call("submitblock", second.raw.hex()) is None
    assert node.call("getbestblockhash") == second.hash_hex
    assert node.call("getblockcount") == height + 2
    assert node.call("getblock", competing[0])["confirmations"] == -1
    assert node.call("getrawtransaction", txid, True)["blockhash"] == original
    assert txid not in node.call("getrawmempool")
    assert node.call("getblockhash", height) == original

    # Invalidated again, the competing branch is the best left; reconsidered, the heavier
    # original branch wins again.
    node.call("invalidateblock", original)
    assert node.call("getbestblockhash") == competing[-1]
    node.call("reconsiderblock", original)
    assert node.call("getbestblockhash") == second.hash_hex


# ---- blocks the kernel refuses -------------------------------------------------------------------


def test_blocks_libbitcoinkernel_refuses_are_not_connected(node: RegtestProcess) -> None:
    tip = node.call("getbestblockhash")
    payout = TaprootKey.generate().script_pubkey

    greedy = block_on(node, tip, payout, extra_sats=1)
    assert node.call("submitblock", greedy.raw.hex()) == "bad-cb-amount"
    assert node.call("getbestblockhash") == tip
    assert node.call("getblockheader", greedy.hash_hex)["confirmations"] == -1
    tips = {t["hash"]: t["status"] for t in node.call("getchaintips")}
    assert tips[greedy.hash_hex] == "invalid"
    assert node.call("submitblock", greedy.raw.hex()) == "duplicate-invalid"

    # A block spending with a forged signature: the kernel checks scripts in blocks too.
    key = TaprootKey.generate()
    outpoint = fund(node, [key], "0.01")[key.script_pubkey]
    tip = node.call("getbestblockhash")
    forged = spend(key, outpoint, 1_000_000, 990_000)
    signature = forged.vin[0].witness.items[0]
    forged.vin[0].witness = Witness([bytes([signature[0] ^ 1]) + signature[1:]])
    result = node.call("submitblock", block_on(node, tip, payout, txs=[forged]).raw.hex())
    assert "script-verify-flag-failed (Invalid Schnorr signature)" in result
    assert node.call("getbestblockhash") == tip
    error = rpc_error(node, "generateblock", key.address, [forged.serialize().hex()])
    assert error.code == -25
    assert error.message.startswith("TestBlockValidity failed")
    assert node.call("getbestblockhash") == tip

    # The same helpers with an honest coinbase make a block the kernel connects.
    honest = block_on(node, tip, payout)
    assert node.call("submitblock", honest.raw.hex()) is None
    assert node.call("getbestblockhash") == honest.hash_hex
    spent = spend(key, outpoint, 1_000_000, 990_000)
    mined = node.call("generateblock", key.address, [spent.serialize().hex()])
    assert node.call("getbestblockhash") == mined["hash"]
    assert node.call("getblock", mined["hash"])["tx"][1] == to_parsed(spent).txid_hex


# ---- malformed input -----------------------------------------------------------------------------


def test_garbage_gets_bitcoinds_errors_and_the_node_keeps_answering(node: RegtestProcess) -> None:
    status, body = node.post(b"{not json")
    assert status == 500
    assert json.loads(body)["error"]["code"] == -32700
    status, body = node.post(b"[" * 100_000)
    assert status == 500
    assert json.loads(body)["error"]["code"] == -32700
    status, body = node.post(b'"just a string"')
    assert status == 500
    assert json.loads(body)["error"]["code"] == -32700

    status, body = node.post(b'{"jsonrpc": "1.0", "id": 7, "method": "nosuchmethod", "params": []}')
    assert status == 404
    assert json.loads(body) == {
        "result": None,
        "error": {"code": -32601, "message": "Method not found"},
        "id": 7,
    }
    status, body = node.post(b'{"id": 1, "method": "getblockcount", "params": "x"}')
    assert status == 400
    assert json.loads(body)["error"]["code"] == -32600

    batch = [{"id": 1, "method": "getblockcount"}, {"id": 2, "method": "nosuch"}, 5]
    status, body = node.post(json.dumps(batch).encode())
    replies = json.loads(body)
    assert status == 200
    assert replies[0]["result"] == node.call("getblockcount")
    assert replies[1]["error"]["code"] == -32601
    assert replies[2]["error"]["code"] == -32600

    request = b'{"id": 1, "method": "getblockcount", "params": []}'
    assert node.post(request, authorization="Basic " + base64.b64encode(b"x:y").decode()) == (
        401,
        b"",
    )
    assert node.post(request, authorization="") == (401, b"")
    cookie = Path(node.cookie_path).read_text()
    assert cookie.startswith("__cookie__:")
    status, body = node.post(
        request, authorization="Basic " + base64.b64encode(cookie.encode()).decode()
    )
    assert status == 200
    assert json.loads(body)["result"] == node.call("getblockcount")

    assert rpc_error(node, "getblockhash", "ten").code == -3
    assert rpc_error(node, "getblockhash", 10**9).code == -8
    assert rpc_error(node, "getblock", 12).code == -3
    assert rpc_error(node, "getblock", "00" * 32).code == -5
    assert rpc_error(node, "getblock", "xyz").code == -8
    assert rpc_error(node, "getblockhash").code == -1
    assert rpc_error(node, "getblockcount", 1).code == -1
    assert rpc_error(node, "sendtoaddress", "not-an-address", 1).code == -5
    assert rpc_error(node, "sendtoaddress", TaprootKey.generate().address, "lots").code == -3
    assert rpc_error(node, "getrawtransaction", "ab" * 32).code == -5

    txid = node.call("sendtoaddress", TaprootKey.generate().address, Decimal("0.1"))
    raw = node.call("getrawtransaction", txid)
    for broken in (raw[:-2], raw + "00", "zz", raw[:40]):
        assert rpc_error(node, "sendrawtransaction", broken).code == -22
        assert rpc_error(node, "decoderawtransaction", broken).code == -22
        assert rpc_error(node, "testmempoolaccept", [broken]).code == -22
    assert node.call("decoderawtransaction", raw)["txid"] == txid

    host, port = node.rpc_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw_socket:
        raw_socket.sendall(b"\x00\xffGARBAGE\r\n\r\n")
        assert raw_socket.recv(100).startswith(b"HTTP/1.1 400")
    assert node.call("getblockcount") >= 101


# ---- restart -------------------------------------------------------------------------------------


def test_a_restarted_node_keeps_its_chain_and_mempool(tmp_path: Path) -> None:
    with RegtestProcess(tmp_path) as first:
        first.call("generatetoaddress", 101, first.call("getnewaddress"))
        txid = first.call("sendtoaddress", TaprootKey.generate().address, 1)
        tip = first.call("getbestblockhash")
    assert not first.cookie_path.exists()  # removed at a clean stop, like bitcoind's
    with RegtestProcess(tmp_path) as second:
        assert second.call("getbestblockhash") == tip
        assert second.call("getrawmempool") == [txid]
        assert second.call("getbalance") > 0
        [block_hash] = second.call("generatetoaddress", 1, second.call("getnewaddress"))
        assert txid in second.call("getblock", block_hash)["tx"]
