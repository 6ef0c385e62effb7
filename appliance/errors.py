"""The error every control command raises when it cannot be carried out."""

from __future__ import annotations

__all__ = ["CommandError"]


class CommandError(Exception):
    """A control command cannot be carried out; `code` is stable, the message readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
