"""A scripted randomness source, so vector tests can replay the exact random draws."""

from __future__ import annotations

from collections.abc import Iterable


class ScriptedRandom:
    """Returns the given byte strings in order; fails loudly on any unexpected draw."""

    def __init__(self, draws: Iterable[bytes]) -> None:
        self._draws = list(draws)

    def __call__(self, size: int) -> bytes:
        if not self._draws:
            raise AssertionError(f"unexpected extra draw of {size} random bytes")
        draw = self._draws.pop(0)
        if len(draw) != size:
            raise AssertionError(f"scripted draw has {len(draw)} bytes, {size} were asked for")
        return draw

    def exhausted(self) -> bool:
        return not self._draws


def scalar_draw(value: int) -> bytes:
    """The 64-byte draw that `random_scalar` turns into `value` (value < order)."""
    return value.to_bytes(64, "big")
