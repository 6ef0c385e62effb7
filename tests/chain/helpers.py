"""What the chain tests share: a regtest configuration and an audit recorder."""

from __future__ import annotations

from typing import Any

from appliance.config import BitcoinConfig

CONFIG = BitcoinConfig(
    network="regtest",
    rpc_url="http://127.0.0.1:18443",
    rpc_user="wire",
    cookie_file=None,
    zmq_block="tcp://127.0.0.1:28332",
    scan_from_height=0,
    normal_confirmations=6,
    fork_confirmations=12,
    fork_window_blocks=144,
    poll_seconds=5,
    max_tip_age_seconds=7200,
    fee_target_blocks=6,
    fee_floor_sat_vb=1,
    fee_ceiling_sat_vb=500,
    bump_after_blocks=3,
)


class Audit(list[tuple[str, str, str]]):
    def __call__(self, event: str, outcome: str, message: str, **fields: Any) -> None:
        self.append((event, outcome, message))

    def events(self) -> list[str]:
        return [event for event, _, _ in self]
