"""Putting a signed transaction on the network through this node's bitcoind: checked with
`testmempoolaccept` first, then `sendrawtransaction`; a refusal is reported with
bitcoind's own reason and audited, and nothing is retried blindly."""

from __future__ import annotations

from collections.abc import Callable

from .rpc import BitcoindError, BitcoindRpc, RpcProtocolError
from .transaction import Transaction

__all__ = ["BroadcastRefused", "broadcast"]

# bitcoind's answers for a transaction it holds already (in its mempool, possibly with another
# witness, or confirmed): putting it on the network again is done, not refused.
ALREADY_KNOWN = frozenset(
    (
        "txn-already-in-mempool",
        "txn-same-nonwitness-data-in-mempool",
        "txn-already-known",
        "Transaction already in block chain",
        "Transaction outputs already in utxo set",
    )
)


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
    if reason in ALREADY_KNOWN:
        audit("chain.broadcast", "success", f"transaction {txid} was known to bitcoind already",
              txid=txid, reason=reason)  # fmt: skip
        return txid
    if reason is not None:
        audit(
            "chain.broadcast-refused", "refused", f"bitcoind refused transaction {txid}: {reason}",
            txid=txid, reason=reason,
        )  # fmt: skip
        raise BroadcastRefused(txid, reason)
    audit("chain.broadcast", "success", f"transaction {txid} broadcast", txid=txid)
    return txid
