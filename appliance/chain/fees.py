"""The fee rate of the custody key's transactions: bitcoind's estimate, clamped to the
configured floor and ceiling, and the next rate when a stuck transaction is replaced.

Relay fees are bitcoind's own (`getnetworkinfo`), never assumed: they differ between
releases (1 sat/vB up to Bitcoin Core 28, 0.1 sat/vB from 29) and operators may set them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from appliance.config import BitcoinConfig

from .rpc import BitcoindRpc, RpcProtocolError

__all__ = ["RelayFees", "bumped_fee_rate", "estimate_fee_rate", "is_stuck", "relay_fees"]

BUMP_FACTOR = 1.25


@dataclass(frozen=True)
class RelayFees:
    """sat/vB: the least a transaction pays to be relayed, and the least a replacement
    pays per vbyte on top of what it replaces (BIP125 rule 4)."""

    minimum: float
    incremental: float


async def relay_fees(rpc: BitcoindRpc) -> RelayFees:
    answer = await rpc.call("getnetworkinfo")
    if not isinstance(answer, dict):
        raise RpcProtocolError("getnetworkinfo did not return an object")
    rates = []
    for name in ("relayfee", "incrementalfee"):
        value = answer.get(name)
        if isinstance(value, bool) or not isinstance(value, Decimal | int) or value < 0:
            raise RpcProtocolError(f"getnetworkinfo has {name} {value!r}, not a fee rate")
        rates.append(float(Decimal(value) * 100_000))  # BTC/kvB -> sat/vB
    return RelayFees(*rates)


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


def bumped_fee_rate(
    previous: float, estimate: float, config: BitcoinConfig, incremental: float
) -> float | None:
    """The rate of a replacement: the estimate, at least a quarter more than before and
    bitcoind's relay increment (sat/vB) above it; None if that would pass the ceiling."""
    wanted = max(estimate, previous * BUMP_FACTOR, previous + incremental)
    if previous >= config.fee_ceiling_sat_vb:
        return None
    return min(wanted, config.fee_ceiling_sat_vb)


def is_stuck(broadcast_height: int, tip_height: int, config: BitcoinConfig) -> bool:
    """Whether a transaction broadcast at `broadcast_height` and still unconfirmed at
    `tip_height` has waited the configured number of blocks and should be replaced."""
    return tip_height - broadcast_height >= config.bump_after_blocks
