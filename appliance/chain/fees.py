"""The fee rate of the custody key's transactions: bitcoind's estimate, clamped to the
configured floor and ceiling, and the next rate when a stuck transaction is replaced."""

from __future__ import annotations

from decimal import Decimal

from appliance.config import BitcoinConfig

from .rpc import BitcoindRpc, RpcProtocolError

__all__ = ["INCREMENTAL_RELAY_SAT_VB", "bumped_fee_rate", "estimate_fee_rate", "is_stuck"]

INCREMENTAL_RELAY_SAT_VB = 1.0  # Bitcoin Core's default -incrementalrelayfee
BUMP_FACTOR = 1.25


def _clamp(rate: float, config: BitcoinConfig) -> float:
    return min(max(rate, config.fee_floor_sat_vb), config.fee_ceiling_sat_vb)


async def estimate_fee_rate(rpc: BitcoindRpc, config: BitcoinConfig) -> float:
    """sat/vB from `estimatesmartfee`; the floor when bitcoind has no estimate."""
    answer = await rpc.call("estimatesmartfee", config.fee_target_blocks, "conservative")
    if not isinstance(answer, dict):
        raise RpcProtocolError("estimatesmartfee did not return an object")
    rate = answer.get("feerate")
    if rate is None:
        return config.fee_floor_sat_vb
    if not isinstance(rate, Decimal | int) or rate <= 0:
        raise RpcProtocolError(f"estimatesmartfee returned fee rate {rate!r}")
    return _clamp(float(Decimal(rate) * 100_000), config)  # BTC/kvB -> sat/vB


def bumped_fee_rate(previous: float, estimate: float, config: BitcoinConfig) -> float | None:
    """The rate of a replacement: the estimate, at least a quarter more than before and the
    relay increment above it; None if that would pass the ceiling."""
    wanted = max(estimate, previous * BUMP_FACTOR, previous + INCREMENTAL_RELAY_SAT_VB)
    if previous >= config.fee_ceiling_sat_vb:
        return None
    return min(wanted, config.fee_ceiling_sat_vb)


def is_stuck(broadcast_height: int, tip_height: int, config: BitcoinConfig) -> bool:
    """Whether a transaction broadcast at `broadcast_height` and still unconfirmed at
    `tip_height` has waited the configured number of blocks and should be replaced."""
    return tip_height - broadcast_height >= config.bump_after_blocks
