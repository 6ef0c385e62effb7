"""Secret scalars that refuse to be printed, pickled or copied, and can be wiped.

Python cannot promise that no copy of a secret survives (integers are immutable and the
interpreter copies freely); this keeps the long-lived copy in one mutable buffer that is
zeroed on `wipe()`, and makes accidental serialisation an error instead of a leak.
"""

from __future__ import annotations

from typing import NoReturn

__all__ = ["HoldsSecrets", "SecretScalar"]


class HoldsSecrets:
    """Base of every object holding secret material: not picklable, not copyable."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds secrets and cannot be serialised")

    def __copy__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds secrets and cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds secrets and cannot be copied")


class SecretScalar(HoldsSecrets):
    """A scalar modulo a group order, held in a wipeable buffer."""

    __slots__ = ("_buffer",)

    def __init__(self, value: int, size: int = 32) -> None:
        self._buffer: bytearray | None = bytearray(value.to_bytes(size, "big"))

    def reveal(self) -> int:
        """Return the value. The caller must not keep the integer longer than needed."""
        if self._buffer is None:
            raise ValueError("secret scalar was wiped")
        return int.from_bytes(self._buffer, "big")

    @property
    def wiped(self) -> bool:
        return self._buffer is None

    def wipe(self) -> None:
        """Zero the buffer and forget it; later `reveal()` calls fail."""
        if self._buffer is not None:
            for i in range(len(self._buffer)):
                self._buffer[i] = 0
            self._buffer = None

    def __repr__(self) -> str:
        return "SecretScalar(<wiped>)" if self._buffer is None else "SecretScalar(<secret>)"

    def __eq__(self, other: object) -> bool:
        # Comparing secrets is a test-only need; refuse it so code cannot branch on them.
        raise TypeError("secret scalars cannot be compared")

    __hash__ = None  # type: ignore[assignment]
