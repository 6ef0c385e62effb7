"""bitcoind's JSON-RPC error codes, and the exception that carries one (code and message) from
wherever it is raised to the client's error reply."""

from __future__ import annotations

__all__ = ["RpcError"]

MISC_ERROR = -1
TYPE_ERROR = -3
WALLET_ERROR = -4
INVALID_ADDRESS_OR_KEY = -5
WALLET_INSUFFICIENT_FUNDS = -6
INVALID_PARAMETER = -8
DESERIALIZATION_ERROR = -22
VERIFY_ERROR = -25
VERIFY_REJECTED = -26
VERIFY_ALREADY_IN_CHAIN = -27
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
PARSE_ERROR = -32700
METHOD_DEPRECATED = -32


class RpcError(Exception):
    """An error reply: bitcoind's code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
