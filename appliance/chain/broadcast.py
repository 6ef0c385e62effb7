"""Putting a signed transaction on the network through this node's bitcoind: checked with
`testmempoolaccept` first, then `sendrawtransaction`; a refusal is reported with
bitcoind's own reason and audited, and nothing is retried blindly."""

from __future__ import annotations

from collections.abc import Callable

from .rpc import BitcoindError, BitcoindRpc, RpcProtocolError
from .transaction import Transaction

__all__ = ["BroadcastRefused", "broadcast"]


class BroadcastRefused(Exception):
    def __init__(self, txid: str, reason: str) -> None:
        super().__init__(f"bitcoind refused {txid}: {reason}")
        self.txid = txid
        self.reason = reason


async def broadcast(rpc: BitcoindRpc, tx: Transaction, audit: Callable[..., None]) -> str:
    raw = tx.serialize().hex()
    txid = tx.txid_hex
    verdicts = await rpc.call("testmempoolaccept", [raw])
    if not isinstance(verdicts, list) or len(verdicts) != 1 or not isinstance(verdicts[0], dict):
        raise RpcProtocolError("testmempoolaccept did not return one verdict")
    verdict = verdicts[0]
    reason = None
    if verdict.get("allowed") is not True:
        reason = str(verdict.get("reject-reason") or "refused without a reason")
    else:
        try:
            sent = await rpc.call("sendrawtransaction", raw)
            if sent != txid:
                raise RpcProtocolError(f"sendrawtransaction answered {sent!r} for {txid}")
        except BitcoindError as exc:
            reason = exc.message
    if reason is not None:
        audit(
            "chain.broadcast-refused", "refused", f"bitcoind refused transaction {txid}: {reason}",
            txid=txid, reason=reason,
        )  # fmt: skip
        raise BroadcastRefused(txid, reason)
    audit("chain.broadcast", "success", f"transaction {txid} broadcast", txid=txid)
    return txid
