"""The bytes a node holds on each peer's behalf: envelopes kept for ceremonies not yet
consented to and for running ones, counted per peer against one budget.

A holder is a ceremony id; its bytes are given back when the ceremony ends or its held
envelopes are dropped, so one peer's flood can only ever fill its own budget.
"""

from __future__ import annotations

from appliance.mesh.envelope import Envelope

__all__ = ["PeerBudget", "held_size"]

ENVELOPE_OBJECTS = 512
"""Bytes of the Python objects around a held envelope's raw bytes and payload copy."""


def held_size(envelope: Envelope) -> int:
    """What keeping `envelope` costs: its bytes, its payload (a copy) and the objects."""
    return len(envelope.raw) + len(envelope.payload) + ENVELOPE_OBJECTS


class PeerBudget:
    """At most `limit` bytes held for any one peer, over all holders."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_holder: dict[str, dict[int, int]] = {}
        self._by_peer: dict[int, int] = {}

    def held(self, peer: int) -> int:
        return self._by_peer.get(peer, 0)

    def take(self, holder: str, peer: int, size: int) -> bool:
        """Count `size` more bytes for `peer` under `holder`; False (nothing counted) if
        that would take the peer over its budget."""
        if self.held(peer) + size > self.limit:
            return False
        held = self._by_holder.setdefault(holder, {})
        held[peer] = held.get(peer, 0) + size
        self._by_peer[peer] = self.held(peer) + size
        return True

    def give_back(self, holder: str, peer: int, size: int) -> None:
        """Undo one `take` whose envelope was not kept after all."""
        held = self._by_holder.get(holder, {})
        left = held.get(peer, 0) - size
        if left > 0:
            held[peer] = left
        else:
            held.pop(peer, None)
        if not held:
            self._by_holder.pop(holder, None)
        self._free(peer, size)

    def release(self, holder: str) -> None:
        """Everything `holder` held is gone (its ceremony ended, its envelopes dropped)."""
        for peer, size in self._by_holder.pop(holder, {}).items():
            self._free(peer, size)

    def _free(self, peer: int, size: int) -> None:
        left = self.held(peer) - size
        if left > 0:
            self._by_peer[peer] = left
        else:
            self._by_peer.pop(peer, None)
