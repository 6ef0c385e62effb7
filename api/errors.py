"""The API's refusals: an HTTP status, a stable code a client can act on, and a title written
for the person reading it (never an exception's own text)."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    def __init__(self, status: int, code: str, title: str) -> None:
        super().__init__(title)
        self.status = status
        self.code = code
        self.title = title
