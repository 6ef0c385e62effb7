"""Named points in the flows where the engine can be made to die as a crash would.

The exactly-once tests start a node with `WIRE_MPC_CRASH_AT=<point>`; when the flow reaches
that point the process exits at once, without cleanup, as after a power cut. On the appliance
the engine's environment is fixed by its unit, so no operator can arm one.
"""

from __future__ import annotations

import logging
import os

__all__ = ["CRASH_EXIT", "POINTS", "crash_point"]

log = logging.getLogger(__name__)

CRASH_EXIT = 70
POINTS = frozenset(
    {
        "mint.proposed",  # attestations bound on the coordinator, ceremony not yet run
        "mint.signed",  # signatures aggregated, not yet recorded
        "withdrawal.proposed",  # burns and inputs bound, ceremony not yet run
        "withdrawal.signed",  # signatures aggregated, the signed transaction not recorded
        "withdrawal.broadcast",  # bitcoind has the transaction, the broadcast not recorded
        "withdrawal.confirmed",  # confirmation recorded, the Wire system not yet told
    }
)


def crash_point(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get("WIRE_MPC_CRASH_AT") == name:
        log.critical("crash point %s reached: exiting as a crash would", name)
        logging.shutdown()
        os._exit(CRASH_EXIT)
