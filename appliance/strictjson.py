"""Reading JSON strictly: text that only JSON's grammar allows (`loads`), then objects field by
field, every field typed, unknown fields refused, errors naming the field. Used for the
configuration file, every mesh payload, the engine's control socket and the API's bodies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "MAX_DEPTH",
    "NotJson",
    "StrictObject",
    "as_bool",
    "as_hex",
    "as_integer",
    "as_list",
    "as_string",
    "hex_of",
    "loads",
]

T = TypeVar("T")
Reader = Callable[[Any, str], T]

MAX_DEPTH = 32  # levels of arrays and objects: the deepest request of the bridge has 4
_SURROGATE = re.compile("[\ud800-\udfff]")


class NotJson(ValueError):
    """Text refused by `loads`; the message says what is wrong and where, for the sender."""


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """The value of JSON text received from outside, refusing what Python's `json` lets
    through but JSON does not mean: NaN and Infinity (also as numbers too large for a float),
    repeated keys (a reader that keeps the first would see another request), unpaired
    surrogates (no UTF-8 can carry them on), and nesting deeper than `max_depth`. Bytes must
    be UTF-8."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise NotJson(f"not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique
        )
    except NotJson:
        raise
    except json.JSONDecodeError as exc:
        raise NotJson(f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:  # int() of more digits than Python converts
        raise NotJson("not JSON this node reads: a number with too many digits") from None
    except RecursionError:
        raise NotJson(f"nested deeper than {max_depth} levels") from None
    _check_strings_and_depth(value, max_depth)
    return value


def _no_constant(name: str) -> Any:
    raise NotJson(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise NotJson(f"{text[:32]} is beyond the range of numbers this node reads")
    return number


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise NotJson(f"key {key[:64]!r} is repeated in an object")
        value[key] = item
    return value


def _check_strings_and_depth(value: Any, max_depth: int) -> None:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise NotJson("a string holds an unpaired surrogate (\\ud800 to \\udfff)")
        elif isinstance(item, list | dict):
            if depth > max_depth:
                raise NotJson(f"nested deeper than {max_depth} levels")
            children = [*item, *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


class StrictObject:
    """A JSON object read field by field; `done()` refuses the fields nobody asked for.

    `error` is the exception type raised, with a message that starts with the field's path.
    """

    _MISSING: Any = object()

    def __init__(self, data: Any, where: str, error: type[Exception]) -> None:
        if not isinstance(data, dict):
            raise error(f"{where or 'document'}: must be an object")
        self.data = data
        self.where = where
        self.error = error
        self.seen: set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def take(self, name: str, read: Reader[T], default: Any = _MISSING) -> T:
        self.seen.add(name)
        if name not in self.data:
            if default is StrictObject._MISSING:
                raise self.error(f"{self.path(name)}: missing")
            return default  # type: ignore[no-any-return]
        try:
            return read(self.data[name], self.path(name))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, self.error):
                raise
            raise self.error(f"{self.path(name)}: {exc}") from exc

    def section(self, name: str, default: Any = _MISSING) -> StrictObject:
        return StrictObject(self.take(name, lambda v, p: v, default), self.path(name), self.error)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(f"{', '.join(self.path(u) for u in unknown)}: unknown field")


def as_string(value: Any, path: str, max_length: int = 1024) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ValueError(f"must be a non-empty string of at most {max_length} characters")
    return value


def as_integer(value: Any, path: str, low: int = 0, high: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be an integer between {low} and {high}")
    return value


def as_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def as_hex(value: Any, path: str, size: int | None = None, max_size: int = 1 << 20) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * max_size:
        raise ValueError("must be a hex string")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ValueError("must be a hex string") from None
    if size is not None and len(data) != size:
        raise ValueError(f"must be {size} bytes, got {len(data)}")
    return data


def hex_of(size: int | None = None, max_size: int = 1 << 20) -> Reader[bytes]:
    """A reader of hex strings of exactly `size` bytes (or at most `max_size`)."""

    def reader(value: Any, path: str) -> bytes:
        return as_hex(value, path, size, max_size)

    return reader


def as_list(read: Reader[T], max_items: int = 10_000) -> Reader[list[T]]:
    def reader(value: Any, path: str) -> list[T]:
        if not isinstance(value, list) or len(value) > max_items:
            raise ValueError(f"must be a list of at most {max_items} items")
        return [read(item, f"{path}[{i}]") for i, item in enumerate(value)]

    return reader
