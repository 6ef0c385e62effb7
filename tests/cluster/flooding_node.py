"""A wire-mpcd that takes part in every ceremony honestly and meanwhile floods node 1 with
validly signed envelopes, for the flood tests: it is the real daemon with its engine's
start extended by the flood.

From the start of its first ceremony, every FLOOD_PAUSE seconds until FLOOD_TOTAL bytes
are sent, to node 1:
- a round-1 envelope of a ceremony no one consented to (FLOOD_PAYLOAD bytes);
- into each ceremony this node runs: a round no ceremony runs, a round-1 envelope far
  larger than any round 1, and a conflicting copy of every round it has sent in it (node
  1 has the real one already: the first of a round counts, so the ceremony goes on).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from appliance import daemon
from appliance.engine import Engine

FLOOD_PAYLOAD = 1 << 20
FLOOD_TOTAL = 160 << 20
FLOOD_PAUSE = 0.05
TARGET = 1
FLOOD_DONE = "flood done:"  # in the node's log when the flood is sent

log = logging.getLogger(__name__)


class FloodingEngine(Engine):
    async def start(self) -> None:
        await super().start()
        task = asyncio.create_task(self._flood(), name="flood")
        self._tasks.add(task)

    def _flood_one(self, ceremony_id: str, round_name: str, payload: bytes) -> int:
        self.send(TARGET, self.envelope(ceremony_id, round_name, payload))
        return len(payload)

    async def _flood(self) -> None:
        sent, wave = 0, 0
        large = b"x" * FLOOD_PAYLOAD
        while not self.ceremonies:
            await asyncio.sleep(0.01)
        while sent < FLOOD_TOTAL:
            wave += 1
            sent += self._flood_one(f"flood-{wave}", "dkg.round1", large)
            for ceremony_id, ceremony in list(self.ceremonies.items()):
                sent += self._flood_one(ceremony_id, "dkg.junk", large)
                sent += self._flood_one(ceremony_id, f"{ceremony.kind}.round1", large)
                for row in self.store.transcript(ceremony_id):
                    if row.direction == "out" and TARGET in getattr(ceremony, "others", ()):
                        payload = f"conflict {wave}".encode()
                        sent += self._flood_one(ceremony_id, row.round, payload)
            await asyncio.sleep(FLOOD_PAUSE)
        log.warning("%s %d bytes", FLOOD_DONE, sent)


def main() -> int:
    daemon.Engine = FloodingEngine  # type: ignore[misc]
    return daemon.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
