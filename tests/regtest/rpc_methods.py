"""The RPC methods: bitcoind's names, parameters, result fields and error codes over the node's
operations, plus the test controls bitcoind does not have (RpcMethods is the dispatcher)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from . import rpc_errors as codes
from .blocks import COIN, difficulty
from .chain import BlockRecord
from .encoding import DecodeError, ParsedTx, decode_hex, parse_transaction
from .jsonrpc import Amount, json_type_name
from .mempool import MIN_RELAY_FEERATE, MempoolEntry
from .node import RegtestNode
from .rpc_errors import RpcError
from .scripts import (
    address_to_script,
    descriptor,
    is_unspendable,
    script_address,
    script_asm,
    script_type,
)
from .validation import MAX_MONEY, TxRejected, signed32
from .validation import Coin as UtxoCoin

__all__ = ["CUSTOM_METHODS", "RpcMethods"]

DEFAULT_MAX_FEERATE = 10_000_000  # sat/kvB: bitcoind's 0.10 BTC/kvB
CUSTOM_METHODS = ("setzmqpublishing", "setfeeestimate", "setinitialblockdownload", "setheaders")
_GENESIS_COINBASE_MESSAGE = (
    "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved"
)
_NO_SUCH_TX = (
    "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
)


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "string", "number", "bool", "array", "object", "amount" or "any"
    required: bool = False
    default: Any = None
    alias: str | None = None  # the older name bitcoind still accepts as a named parameter


@dataclass(frozen=True)
class _Method:
    params: tuple[Param, ...]
    handler: Callable[..., Any]


_METHODS: dict[str, _Method] = {}


def rpc(name: str, *params: Param) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        _METHODS[name] = _Method(params, handler)
        return handler

    return register


def _usage(name: str) -> str:
    method = _METHODS[name]
    names = " ".join(p.name if p.required else f"( {p.name} )" for p in method.params)
    note = "  (test control, not in bitcoind)" if name in CUSTOM_METHODS else ""
    return f"{name} {names}".rstrip() + note


class RpcMethods:
    """Looks a method up, checks and converts its parameters, and runs it under the node's
    lock. `request_stop` is called (after the reply) when `stop` is asked for."""

    def __init__(self, node: RegtestNode, request_stop: Callable[[], None]) -> None:
        self.node = node
        self.request_stop = request_stop

    def __call__(self, name: str, params: list[Any] | dict[str, Any]) -> Any:
        method = _METHODS.get(name)
        if method is None:
            raise RpcError(codes.METHOD_NOT_FOUND, "Method not found")
        args = self._arguments(name, method, params)
        with self.node.lock:
            try:
                return method.handler(self, *args)
            except RpcError:
                raise
            except TxRejected as rejected:
                raise RpcError(codes.VERIFY_REJECTED, rejected.message) from None

    @staticmethod
    def _arguments(name: str, method: _Method, params: list[Any] | dict[str, Any]) -> list[Any]:
        if isinstance(params, dict):
            known = {p.name for p in method.params} | {p.alias for p in method.params}
            for key in params:
                if key not in known:
                    raise RpcError(codes.INVALID_PARAMETER, f"Unknown named parameter {key}")
            given = [
                params.get(p.name, params.get(p.alias) if p.alias else None) for p in method.params
            ]
        else:
            if len(params) > len(method.params):
                raise RpcError(codes.MISC_ERROR, _usage(name))
            given = list(params) + [None] * (len(method.params) - len(params))
        args = []
        for param, value in zip(method.params, given, strict=True):
            if value is None:
                if param.required:
                    raise RpcError(codes.MISC_ERROR, _usage(name))
                args.append(param.default)
                continue
            args.append(_convert(param, value))
        return args


def _type_error(value: Any, expected: str) -> RpcError:
    return RpcError(
        codes.TYPE_ERROR,
        f"JSON value of type {json_type_name(value)} is not of expected type {expected}",
    )


def _convert(param: Param, value: Any) -> Any:
    kind = param.kind
    if kind == "any":
        return value
    if kind == "amount":
        return amount_from_value(value)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise _type_error(value, "number")
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise RpcError(codes.TYPE_ERROR, f"JSON integer out of range: {value}")
            value = int(value)
        if not -(1 << 63) <= value < 1 << 63:
            raise RpcError(codes.TYPE_ERROR, "JSON integer out of range")
        return value
    expected_type: type[Any] = {
        "string": str,
        "bool": bool,
        "array": list,
        "object": dict,
    }[kind]
    if not isinstance(value, expected_type):
        raise _type_error(value, kind)
    return value


def amount_from_value(value: Any) -> int:
    """bitcoind's AmountFromValue: a number or numeric string of BTC, at most 8 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise RpcError(codes.TYPE_ERROR, "Amount is not a number or string")
    try:
        btc = Decimal(value)
    except InvalidOperation:
        raise RpcError(codes.TYPE_ERROR, "Invalid amount") from None
    if not btc.is_finite():
        raise RpcError(codes.TYPE_ERROR, "Invalid amount")
    sats = btc * COIN
    if sats != sats.to_integral_value():
        raise RpcError(codes.TYPE_ERROR, "Invalid amount")
    if not 0 <= sats <= MAX_MONEY:
        raise RpcError(codes.TYPE_ERROR, "Amount out of range")
    return int(sats)


def _feerate(value: Any) -> int:
    """A BTC/kvB parameter in sat/kvB (bitcoind's ParseFeeRate)."""
    rate = amount_from_value(value)
    if rate >= COIN:
        raise RpcError(
            codes.INVALID_PARAMETER, "Fee rates larger than or equal to 1BTC/kvB are not accepted"
        )
    return rate


def _hash(value: Any, name: str) -> bytes:
    """bitcoind's ParseHashV; returns internal byte order."""
    if not isinstance(value, str):
        raise _type_error(value, "string")
    if len(value) != 64:
        raise RpcError(
            codes.INVALID_PARAMETER,
            f"{name} must be of length 64 (not {len(value)}, for '{value}')",
        )
    try:
        return decode_hex(value)[::-1]
    except DecodeError:
        raise RpcError(
            codes.INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')"
        ) from None


def _decode_tx(text: str, message: str) -> ParsedTx:
    try:
        return parse_transaction(decode_hex(text))
    except DecodeError:
        raise RpcError(codes.DESERIALIZATION_ERROR, message) from None


def _payout_script(address: str, message: str) -> bytes:
    try:
        return address_to_script(address)
    except ValueError:
        raise RpcError(codes.INVALID_ADDRESS_OR_KEY, message) from None


def _verbosity(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | Decimal) and value == int(value):
        return int(value)
    raise _type_error(value, "number")


# ---- JSON shapes ------------------------------------------------------------------------


def script_pubkey_json(spk: bytes) -> dict[str, Any]:
    result: dict[str, Any] = {
        "asm": script_asm(spk),
        "desc": descriptor(spk),
        "hex": spk.hex(),
    }
    address = script_address(spk)
    if address is not None:
        result["address"] = address
    result["type"] = script_type(spk)
    return result


def _prevout_json(coin: UtxoCoin) -> dict[str, Any]:
    return {
        "generated": coin.is_coinbase,
        "height": coin.height,
        "value": Amount(coin.value),
        "scriptPubKey": script_pubkey_json(coin.script_pubkey),
    }


def transaction_json(
    ptx: ParsedTx,
    *,
    include_hex: bool,
    coins: list[UtxoCoin] | None = None,
    fee: int | None = None,
    with_prevouts: bool = False,
) -> dict[str, Any]:
    """bitcoind's TxToUniv."""
    tx = ptx.tx
    vin = []
    for index, inp in enumerate(tx.vin):
        item: dict[str, Any]
        if ptx.is_coinbase:
            item = {"coinbase": inp.script_sig.data.hex()}
        else:
            item = {
                "txid": inp.txid.hex(),
                "vout": inp.vout,
                "scriptSig": {
                    "asm": script_asm(inp.script_sig.data, decode_sighash=True),
                    "hex": inp.script_sig.data.hex(),
                },
            }
        if inp.witness.items:
            item["txinwitness"] = [w.hex() for w in inp.witness.items]
        if with_prevouts and coins is not None and not ptx.is_coinbase:
            item["prevout"] = _prevout_json(coins[index])
        item["sequence"] = inp.sequence
        vin.append(item)
    vout = [
        {
            "value": Amount(out.value),
            "n": n,
            "scriptPubKey": script_pubkey_json(out.script_pubkey.data),
        }
        for n, out in enumerate(tx.vout)
    ]
    result: dict[str, Any] = {
        "txid": ptx.txid_hex,
        "hash": ptx.wtxid_hex,
        "version": signed32(tx.version),
        "size": ptx.size,
        "vsize": ptx.vsize,
        "weight": ptx.weight,
        "locktime": tx.locktime,
        "vin": vin,
        "vout": vout,
    }
    if fee is not None:
        result["fee"] = Amount(fee)
    if include_hex:
        result["hex"] = ptx.raw.hex()
    return result


def _confirmations(node: RegtestNode, record: BlockRecord) -> int:
    if not node.chain.contains(record):
        return -1
    return node.chain.height - record.height + 1


def header_json(node: RegtestNode, record: BlockRecord) -> dict[str, Any]:
    header = record.block.header
    result: dict[str, Any] = {
        "hash": record.hash_hex,
        "confirmations": _confirmations(node, record),
        "height": record.height,
        "version": header.version,
        "versionHex": f"{header.version & 0xFFFFFFFF:08x}",
        "merkleroot": header.merkle_root[::-1].hex(),
        "time": header.time,
        "mediantime": record.median_time_past,
        "nonce": header.nonce,
        "bits": f"{header.bits:08x}",
        "difficulty": difficulty(header.bits),
        "chainwork": f"{record.chainwork:064x}",
        "nTx": len(record.block.txs),
    }
    if record.parent is not None:
        result["previousblockhash"] = record.parent.hash_hex
    if node.chain.contains(record) and record.height < node.chain.height:
        result["nextblockhash"] = node.chain.active[record.height + 1].hash_hex
    return result


def mempool_entry_json(node: RegtestNode, entry: MempoolEntry) -> dict[str, Any]:
    pool = node.mempool
    ancestors = [pool.entries[t] for t in pool.ancestors(entry.txid)]
    descendants = [pool.entries[t] for t in pool.descendants(entry.txid)]
    return {
        "vsize": entry.vsize,
        "weight": entry.ptx.weight,
        "time": entry.time,
        "height": entry.height,
        "descendantcount": len(descendants) + 1,
        "descendantsize": entry.vsize + sum(e.vsize for e in descendants),
        "ancestorcount": len(ancestors) + 1,
        "ancestorsize": entry.vsize + sum(e.vsize for e in ancestors),
        "wtxid": entry.ptx.wtxid_hex,
        "fees": {
            "base": Amount(entry.fee),
            "modified": Amount(entry.fee),
            "ancestor": Amount(entry.fee + sum(e.fee for e in ancestors)),
            "descendant": Amount(entry.fee + sum(e.fee for e in descendants)),
        },
        "depends": sorted(t[::-1].hex() for t in entry.parents),
        "spentby": sorted(t[::-1].hex() for t in entry.children),
        "bip125-replaceable": pool.replaceable(entry.txid),
        "unbroadcast": False,
    }


# ---- blockchain -------------------------------------------------------------------------


@rpc("getblockchaininfo")
def getblockchaininfo(rpc: RpcMethods) -> dict[str, Any]:
    node = rpc.node
    tip = node.chain.tip
    blocks = node.chain.height
    headers = node.headers_override
    if headers is None:
        headers = max(blocks, node.tree.best().height)
    progress: float = 1.0
    if node.initial_block_download:
        progress = min(blocks / headers, 0.999999) if headers else 0.0
    return {
        "chain": "regtest",
        "blocks": blocks,
        "headers": headers,
        "bestblockhash": tip.hash_hex,
        "difficulty": difficulty(tip.block.header.bits),
        "time": tip.block.header.time,
        "mediantime": tip.median_time_past,
        "verificationprogress": progress,
        "initialblockdownload": node.initial_block_download,
        "chainwork": f"{tip.chainwork:064x}",
        "size_on_disk": node.size_on_disk,
        "pruned": False,
        "warnings": "",
    }


@rpc("getblockcount")
def getblockcount(rpc: RpcMethods) -> int:
    return rpc.node.chain.height


@rpc("getbestblockhash")
def getbestblockhash(rpc: RpcMethods) -> str:
    return rpc.node.chain.tip.hash_hex


@rpc("getblockhash", Param("height", "number", required=True))
def getblockhash(rpc: RpcMethods, height: int) -> str:
    if not 0 <= height <= rpc.node.chain.height:
        raise RpcError(codes.INVALID_PARAMETER, "Block height out of range")
    return rpc.node.chain.active[height].hash_hex


@rpc(
    "getblockheader",
    Param("blockhash", "any", required=True),
    Param("verbose", "bool", default=True),
)
def getblockheader(rpc: RpcMethods, blockhash: Any, verbose: bool) -> Any:
    record = rpc.node.block(_hash(blockhash, "hash"))
    if not verbose:
        return record.block.header.serialize().hex()
    return header_json(rpc.node, record)


@rpc(
    "getblock",
    Param("blockhash", "any", required=True),
    Param("verbosity", "any", default=1, alias="verbose"),
)
def getblock(rpc: RpcMethods, blockhash: Any, verbosity: Any) -> Any:
    level = _verbosity(verbosity, 1)
    record = rpc.node.block(_hash(blockhash, "blockhash"))
    if level <= 0:
        return record.raw.hex()
    result = header_json(rpc.node, record)
    next_hash = result.pop("nextblockhash", None)
    block = record.block
    result["strippedsize"] = block.stripped_size
    result["size"] = block.size
    result["weight"] = block.weight
    if level == 1:
        result["tx"] = [ptx.txid_hex for ptx in block.txs]
    else:
        result["tx"] = [
            transaction_json(
                ptx,
                include_hex=True,
                coins=rpc.node.spent_coins(ptx, record) if level >= 3 else None,
                fee=record.fees[position] if record.fees is not None else None,
                with_prevouts=level >= 3,
            )
            for position, ptx in enumerate(block.txs)
        ]
    if next_hash is not None:
        result["nextblockhash"] = next_hash
    return result


@rpc("getchaintips")
def getchaintips(rpc: RpcMethods) -> list[dict[str, Any]]:
    node = rpc.node
    tips = set(node.tree.tips()) | {node.chain.tip}
    result = []
    for tip in sorted(tips, key=lambda r: (-r.height, r.sequence)):
        fork = tip
        while not node.chain.contains(fork) and fork.parent is not None:
            fork = fork.parent
        branch = [r for r in [tip, *tip.ancestors()] if r.height > fork.height]
        if tip is node.chain.tip:
            status = "active"
        elif tip.invalid:
            status = "invalid"
        elif all(r.undo is not None for r in branch):
            status = "valid-fork"
        else:
            status = "valid-headers"
        result.append(
            {
                "height": tip.height,
                "hash": tip.hash_hex,
                "branchlen": tip.height - fork.height,
                "status": status,
            }
        )
    return result


@rpc("invalidateblock", Param("blockhash", "any", required=True))
def invalidateblock(rpc: RpcMethods, blockhash: Any) -> None:
    rpc.node.invalidate(rpc.node.block(_hash(blockhash, "blockhash")))


@rpc("reconsiderblock", Param("blockhash", "any", required=True))
def reconsiderblock(rpc: RpcMethods, blockhash: Any) -> None:
    rpc.node.reconsider(rpc.node.block(_hash(blockhash, "blockhash")))


@rpc("getindexinfo", Param("index_name", "string"))
def getindexinfo(rpc: RpcMethods, index_name: str | None) -> dict[str, Any]:
    info = {"txindex": {"synced": True, "best_block_height": rpc.node.chain.height}}
    if index_name is not None:
        return {k: v for k, v in info.items() if k == index_name}
    return info


# ---- transactions -----------------------------------------------------------------------


@rpc(
    "getrawtransaction",
    Param("txid", "any", required=True),
    Param("verbosity", "any", default=0, alias="verbose"),
    Param("blockhash", "any"),
)
def getrawtransaction(rpc: RpcMethods, txid: Any, verbosity: Any, blockhash: Any) -> Any:
    node = rpc.node
    wanted = _hash(txid, "parameter 1")
    level = _verbosity(verbosity, 0)
    record: BlockRecord | None
    in_active_chain: bool | None = None
    if blockhash is not None:
        block_record = node.tree.get(_hash(blockhash, "parameter 3"))
        if block_record is None:
            raise RpcError(codes.INVALID_ADDRESS_OR_KEY, "Block hash not found")
        matches = [p for p in block_record.block.txs if p.txid == wanted]
        if not matches:
            raise RpcError(
                codes.INVALID_ADDRESS_OR_KEY,
                "No such transaction found in the provided block. "
                "Use gettransaction for wallet transactions.",
            )
        ptx, record = matches[0], block_record
        in_active_chain = node.chain.contains(block_record)
    else:
        if wanted == node.tree.genesis.block.txs[0].txid:
            raise RpcError(codes.INVALID_ADDRESS_OR_KEY, _GENESIS_COINBASE_MESSAGE)
        found = node.find_transaction(wanted)
        if found is None:
            raise RpcError(codes.INVALID_ADDRESS_OR_KEY, _NO_SUCH_TX)
        ptx, record = found
    if level <= 0:
        return ptx.raw.hex()
    coins = node.spent_coins(ptx, record) if level >= 2 else None
    fee = None
    if level >= 2 and coins is not None and not ptx.is_coinbase:
        fee = sum(c.value for c in coins) - sum(o.value for o in ptx.tx.vout)
    body = transaction_json(
        ptx, include_hex=True, coins=coins, fee=fee, with_prevouts=coins is not None
    )
    result: dict[str, Any] = {}
    if in_active_chain is not None:
        result["in_active_chain"] = in_active_chain
    result.update(body)
    if record is not None:
        result["blockhash"] = record.hash_hex
        active = node.chain.contains(record)
        result["confirmations"] = node.chain.height - record.height + 1 if active else 0
        if active:
            result["time"] = record.block.header.time
            result["blocktime"] = record.block.header.time
    return result


@rpc(
    "decoderawtransaction", Param("hexstring", "string", required=True), Param("iswitness", "bool")
)
def decoderawtransaction(rpc: RpcMethods, hexstring: str, iswitness: bool | None) -> Any:
    ptx = _decode_tx(hexstring, "TX decode failed")
    return transaction_json(ptx, include_hex=False)


@rpc("decodescript", Param("hexstring", "string", required=True))
def decodescript(rpc: RpcMethods, hexstring: str) -> Any:
    try:
        script = decode_hex(hexstring)
    except DecodeError:
        raise RpcError(codes.DESERIALIZATION_ERROR, "argument must be hexadecimal") from None
    result = script_pubkey_json(script)
    result.pop("hex")
    return result


@rpc(
    "sendrawtransaction",
    Param("hexstring", "string", required=True),
    Param("maxfeerate", "any"),
    Param("maxburnamount", "amount", default=0),
)
def sendrawtransaction(rpc: RpcMethods, hexstring: str, maxfeerate: Any, maxburnamount: int) -> str:
    node = rpc.node
    ptx = _decode_tx(hexstring, "TX decode failed. Make sure the tx has at least one input.")
    for out in ptx.tx.vout:
        if is_unspendable(out.script_pubkey.data) and out.value > maxburnamount:
            raise RpcError(
                codes.VERIFY_ERROR,
                "Unspendable output exceeds maximum configured by user (maxburnamount)",
            )
    max_feerate = DEFAULT_MAX_FEERATE if maxfeerate is None else _feerate(maxfeerate)
    if any((ptx.txid, n) in node.chain.utxos for n in range(len(ptx.tx.vout))):
        raise RpcError(codes.VERIFY_ALREADY_IN_CHAIN, "Transaction already in block chain")
    if ptx.txid in node.mempool:
        return ptx.txid_hex
    try:
        node.accept_transaction(ptx, max_feerate=max_feerate)
    except TxRejected as rejected:
        code = codes.VERIFY_ERROR if rejected.missing_inputs else codes.VERIFY_REJECTED
        raise RpcError(code, rejected.message) from None
    return ptx.txid_hex


@rpc(
    "testmempoolaccept",
    Param("rawtxs", "array", required=True),
    Param("maxfeerate", "any"),
)
def testmempoolaccept(rpc: RpcMethods, rawtxs: list[Any], maxfeerate: Any) -> list[Any]:
    max_feerate = DEFAULT_MAX_FEERATE if maxfeerate is None else _feerate(maxfeerate)
    if not 1 <= len(rawtxs) <= 25:
        raise RpcError(codes.INVALID_PARAMETER, "Array must contain between 1 and 25 transactions.")
    ptxs = []
    for raw in rawtxs:
        if not isinstance(raw, str):
            raise _type_error(raw, "string")
        message = f"TX decode failed: {raw} Make sure the tx has at least one input."
        ptxs.append(_decode_tx(raw, message))
    results = []
    for outcome in rpc.node.test_accept(ptxs, max_feerate=max_feerate):
        item: dict[str, Any] = {"txid": outcome.ptx.txid_hex, "wtxid": outcome.ptx.wtxid_hex}
        if outcome.rejection is not None:
            rejection = outcome.rejection
            reason = "missing-inputs" if rejection.missing_inputs else rejection.reason
            item.update({"allowed": False, "reject-reason": reason})
        elif outcome.max_fee_exceeded or outcome.entry is None:
            item.update({"allowed": False, "reject-reason": "max-fee-exceeded"})
        else:
            entry = outcome.entry
            item.update(
                {
                    "allowed": True,
                    "vsize": entry.vsize,
                    "fees": {
                        "base": Amount(entry.fee),
                        "effective-feerate": Amount(entry.fee * 1000 // entry.vsize),
                        "effective-includes": [entry.ptx.wtxid_hex],
                    },
                }
            )
        results.append(item)
    return results


@rpc("getmempoolentry", Param("txid", "any", required=True))
def getmempoolentry(rpc: RpcMethods, txid: Any) -> dict[str, Any]:
    entry = rpc.node.mempool.get(_hash(txid, "parameter 1"))
    if entry is None:
        raise RpcError(codes.INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
    return mempool_entry_json(rpc.node, entry)


@rpc(
    "getrawmempool",
    Param("verbose", "bool", default=False),
    Param("mempool_sequence", "bool", default=False),
)
def getrawmempool(rpc: RpcMethods, verbose: bool, mempool_sequence: bool) -> Any:
    entries = rpc.node.mempool.in_order()
    if verbose and mempool_sequence:
        raise RpcError(
            codes.INVALID_PARAMETER,
            "Verbose results cannot contain mempool sequence values.",
        )
    if verbose:
        return {e.ptx.txid_hex: mempool_entry_json(rpc.node, e) for e in entries}
    txids = [e.ptx.txid_hex for e in entries]
    if mempool_sequence:
        return {"txids": txids, "mempool_sequence": rpc.node.mempool.sequence}
    return txids


@rpc("getmempoolinfo")
def getmempoolinfo(rpc: RpcMethods) -> dict[str, Any]:
    entries = rpc.node.mempool.in_order()
    relay = Amount(MIN_RELAY_FEERATE)
    return {
        "loaded": True,
        "size": len(entries),
        "bytes": sum(e.vsize for e in entries),
        "usage": sum(len(e.ptx.raw) * 4 for e in entries),
        "total_fee": Amount(sum(e.fee for e in entries)),
        "maxmempool": 300_000_000,
        "mempoolminfee": relay,
        "minrelaytxfee": relay,
        "incrementalrelayfee": relay,
        "unbroadcastcount": 0,
        "fullrbf": rpc.node.full_rbf,
    }


@rpc(
    "gettxout",
    Param("txid", "any", required=True),
    Param("n", "number", required=True),
    Param("include_mempool", "bool", default=True),
)
def gettxout(rpc: RpcMethods, txid: Any, n: int, include_mempool: bool) -> Any:
    node = rpc.node
    outpoint = (_hash(txid, "txid"), n)
    tip = node.chain.tip
    coin: UtxoCoin | None = None
    confirmations = 0
    if include_mempool:
        if outpoint in node.mempool.spenders:
            return None
        coin = node.mempool.output_coin(outpoint, node.chain.height + 1)
    if coin is None:
        coin = node.chain.utxos.get(outpoint)
        if coin is None:
            return None
        confirmations = tip.height - coin.height + 1
    return {
        "bestblock": tip.hash_hex,
        "confirmations": confirmations,
        "value": Amount(coin.value),
        "scriptPubKey": script_pubkey_json(coin.script_pubkey),
        "coinbase": coin.is_coinbase,
    }


@rpc(
    "estimatesmartfee",
    Param("conf_target", "number", required=True),
    Param("estimate_mode", "string", default="conservative"),
)
def estimatesmartfee(rpc: RpcMethods, conf_target: int, estimate_mode: str) -> dict[str, Any]:
    if not 1 <= conf_target <= 1008:
        raise RpcError(codes.INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
    if estimate_mode.lower() not in ("unset", "economical", "conservative"):
        raise RpcError(
            codes.INVALID_PARAMETER,
            'Invalid estimate_mode parameter, must be one of: "unset", "economical", '
            '"conservative"',
        )
    if rpc.node.fee_estimate is None:
        return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
    # bitcoind never answers for a single block: the shortest target it estimates is 2.
    return {"feerate": Amount(rpc.node.fee_estimate), "blocks": max(conf_target, 2)}


# ---- mining -----------------------------------------------------------------------------


@rpc(
    "generatetoaddress",
    Param("nblocks", "number", required=True),
    Param("address", "string", required=True),
    Param("maxtries", "number", default=1_000_000),
)
def generatetoaddress(rpc: RpcMethods, nblocks: int, address: str, maxtries: int) -> list[str]:
    payout = _payout_script(address, "Error: Invalid address")
    return rpc.node.generate(max(nblocks, 0), payout)


@rpc(
    "generateblock",
    Param("output", "string", required=True),
    Param("transactions", "array", required=True),
    Param("submit", "bool", default=True),
)
def generateblock(
    rpc: RpcMethods, output: str, transactions: list[Any], submit: bool
) -> dict[str, Any]:
    payout = _payout_script(output, "Error: Invalid address or descriptor")
    for item in transactions:
        if not isinstance(item, str):
            raise _type_error(item, "string")
    block_hash, raw_hex = rpc.node.generate_block(payout, transactions, submit=submit)
    return {"hash": block_hash} if raw_hex is None else {"hash": block_hash, "hex": raw_hex}


@rpc("submitblock", Param("hexdata", "string", required=True), Param("dummy", "any"))
def submitblock(rpc: RpcMethods, hexdata: str, dummy: Any) -> str | None:
    try:
        raw = decode_hex(hexdata)
    except DecodeError:
        raise RpcError(codes.DESERIALIZATION_ERROR, "Block decode failed") from None
    return rpc.node.submit_block(raw)


# ---- wallet -----------------------------------------------------------------------------


@rpc("getnewaddress", Param("label", "string"), Param("address_type", "string"))
def getnewaddress(rpc: RpcMethods, label: str | None, address_type: str | None) -> str:
    if address_type not in (None, "bech32m"):
        if address_type in ("legacy", "p2sh-segwit", "bech32"):
            raise RpcError(
                codes.INVALID_ADDRESS_OR_KEY,
                f"This wallet has no available keys for address type {address_type}",
            )
        raise RpcError(codes.INVALID_ADDRESS_OR_KEY, f"Unknown address type '{address_type}'")
    return rpc.node.new_address()


@rpc("getrawchangeaddress", Param("address_type", "string"))
def getrawchangeaddress(rpc: RpcMethods, address_type: str | None) -> str:
    return getnewaddress(rpc, None, address_type)


def _sat_per_vbyte(fee_rate: Any) -> float:
    if fee_rate is None:
        return 2.0
    rate = amount_from_value(fee_rate)  # sat/vB given like an amount; scale back
    return rate / COIN


@rpc(
    "sendtoaddress",
    Param("address", "string", required=True),
    Param("amount", "amount", required=True),
    Param("comment", "string"),
    Param("comment_to", "string"),
    Param("subtractfeefromamount", "bool", default=False),
    Param("replaceable", "bool"),
    Param("conf_target", "number"),
    Param("estimate_mode", "string"),
    Param("avoid_reuse", "bool"),
    Param("fee_rate", "any"),
    Param("verbose", "bool", default=False),
)
def sendtoaddress(
    rpc: RpcMethods,
    address: str,
    amount: int,
    comment: str | None,
    comment_to: str | None,
    subtractfeefromamount: bool,
    replaceable: bool | None,
    conf_target: int | None,
    estimate_mode: str | None,
    avoid_reuse: bool | None,
    fee_rate: Any,
    verbose: bool,
) -> Any:
    spk = _payout_script(address, f"Invalid Bitcoin address: {address}")
    if amount <= 0:
        raise RpcError(codes.TYPE_ERROR, "Invalid amount for send")
    txid = rpc.node.send(
        [(spk, amount)],
        subtract_fee_from={0} if subtractfeefromamount else set(),
        sat_per_vbyte=_sat_per_vbyte(fee_rate),
        replaceable=replaceable is not False,
    )
    return {"txid": txid, "fee_reason": "Fallback fee"} if verbose else txid


@rpc(
    "sendmany",
    Param("dummy", "string", default=""),
    Param("amounts", "object", required=True),
    Param("minconf", "number"),
    Param("comment", "string"),
    Param("subtractfeefrom", "array", default=[]),
    Param("replaceable", "bool"),
    Param("conf_target", "number"),
    Param("estimate_mode", "string"),
    Param("fee_rate", "any"),
    Param("verbose", "bool", default=False),
)
def sendmany(
    rpc: RpcMethods,
    dummy: str,
    amounts: dict[str, Any],
    minconf: int | None,
    comment: str | None,
    subtractfeefrom: list[Any],
    replaceable: bool | None,
    conf_target: int | None,
    estimate_mode: str | None,
    fee_rate: Any,
    verbose: bool,
) -> Any:
    if dummy != "":
        raise RpcError(codes.INVALID_PARAMETER, 'Dummy value must be set to ""')
    payments = []
    subtract = set()
    for index, (address, value) in enumerate(amounts.items()):
        spk = _payout_script(address, f"Invalid Bitcoin address: {address}")
        amount = amount_from_value(value)
        if amount <= 0:
            raise RpcError(codes.TYPE_ERROR, "Invalid amount for send")
        payments.append((spk, amount))
        if address in subtractfeefrom:
            subtract.add(index)
    for address in subtractfeefrom:
        if address not in amounts:
            raise RpcError(
                codes.INVALID_PARAMETER,
                "Invalid parameter 'subtract fee from output', destination "
                f"{address} not found in tx outputs",
            )
    txid = rpc.node.send(
        payments,
        subtract_fee_from=subtract,
        sat_per_vbyte=_sat_per_vbyte(fee_rate),
        replaceable=replaceable is not False,
    )
    return {"txid": txid, "fee_reason": "Fallback fee"} if verbose else txid


@rpc(
    "getbalance",
    Param("dummy", "string"),
    Param("minconf", "number", default=0),
    Param("include_watchonly", "bool"),
    Param("avoid_reuse", "bool"),
)
def getbalance(
    rpc: RpcMethods,
    dummy: str | None,
    minconf: int,
    include_watchonly: bool | None,
    avoid_reuse: bool | None,
) -> Amount:
    if dummy not in (None, "*"):
        raise RpcError(
            codes.METHOD_DEPRECATED, 'dummy first argument must be excluded or set to "*".'
        )
    coins = rpc.node.wallet_coins()
    return Amount(sum(c.coin.value for c in coins if c.confirmed or minconf <= 0))


@rpc(
    "listunspent",
    Param("minconf", "number", default=1),
    Param("maxconf", "number", default=9_999_999),
    Param("addresses", "array", default=[]),
    Param("include_unsafe", "bool", default=True),
)
def listunspent(
    rpc: RpcMethods, minconf: int, maxconf: int, addresses: list[Any], include_unsafe: bool
) -> list[dict[str, Any]]:
    node = rpc.node
    result = []
    for wallet_coin in node.wallet_coins():
        coin = wallet_coin.coin
        confirmations = node.chain.height - coin.height + 1 if wallet_coin.confirmed else 0
        address = script_address(coin.script_pubkey)
        if not minconf <= confirmations <= maxconf or (addresses and address not in addresses):
            continue
        result.append(
            {
                "txid": wallet_coin.outpoint[0][::-1].hex(),
                "vout": wallet_coin.outpoint[1],
                "address": address,
                "label": "",
                "scriptPubKey": coin.script_pubkey.hex(),
                "amount": Amount(coin.value),
                "confirmations": confirmations,
                "spendable": True,
                "solvable": True,
                "desc": descriptor(coin.script_pubkey),
                "parent_descs": [],
                "safe": True,
            }
        )
    return result


# ---- node -------------------------------------------------------------------------------


@rpc("getnetworkinfo")
def getnetworkinfo(rpc: RpcMethods) -> dict[str, Any]:
    relay = Amount(MIN_RELAY_FEERATE)
    return {
        "version": 270000,
        "subversion": "/Satoshi:27.0.0/",
        "protocolversion": 70016,
        "localservices": "0000000000000c09",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
        "localrelay": True,
        "timeoffset": 0,
        "networkactive": True,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        "networks": [],
        "relayfee": relay,
        "incrementalfee": relay,
        "localaddresses": [],
        "warnings": "",
    }


@rpc("getzmqnotifications")
def getzmqnotifications(rpc: RpcMethods) -> list[dict[str, Any]]:
    publisher = rpc.node.publisher
    return [
        {"type": f"pub{topic}", "address": publisher.endpoint, "hwm": publisher.high_water_mark}
        for topic in ("hashblock", "rawblock", "rawtx")
    ]


@rpc("uptime")
def uptime(rpc: RpcMethods) -> int:
    return int(time.time() - rpc.node.started)


@rpc("echo", *(Param(f"arg{i}", "any") for i in range(10)))
def echo(rpc: RpcMethods, *args: Any) -> list[Any]:
    values = list(args)
    while values and values[-1] is None:
        values.pop()
    return values


@rpc("help", Param("command", "string"))
def help_(rpc: RpcMethods, command: str | None) -> str:
    if command is not None:
        if command not in _METHODS:
            return f"help: unknown command: {command}"
        return _usage(command)
    return "\n".join(_usage(name) for name in sorted(_METHODS))


@rpc("stop")
def stop(rpc: RpcMethods) -> str:
    rpc.request_stop()
    return "Bitcoin Core stopping"


# ---- test controls (not in bitcoind) ------------------------------------------------------


@rpc("setzmqpublishing", Param("enabled", "bool", required=True))
def setzmqpublishing(rpc: RpcMethods, enabled: bool) -> None:
    rpc.node.publisher.enabled = enabled


@rpc("setfeeestimate", Param("feerate", "any"))
def setfeeestimate(rpc: RpcMethods, feerate: Any) -> None:
    rpc.node.fee_estimate = None if feerate is None else _feerate(feerate)


@rpc("setinitialblockdownload", Param("active", "bool", required=True))
def setinitialblockdownload(rpc: RpcMethods, active: bool) -> None:
    rpc.node.initial_block_download = active


@rpc("setheaders", Param("count", "number"))
def setheaders(rpc: RpcMethods, count: int | None) -> None:
    if count is not None and count < 0:
        raise RpcError(codes.INVALID_PARAMETER, "header count cannot be negative")
    rpc.node.headers_override = count
