"""`strictjson.loads`, the reader of JSON from outside the engine (the API's bodies, the
engine's socket): what Python's `json` accepts but JSON does not mean is refused, with a
message that says what."""

from __future__ import annotations

import pytest

from appliance.strictjson import MAX_DEPTH, NotJson, loads


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b'{"fee": NaN}', "NaN is not a JSON number"),
        (b"[Infinity]", "Infinity is not a JSON number"),
        (b"-Infinity", "-Infinity is not a JSON number"),
        (b"1e400", "beyond the range"),
        (b'{"a": [-2.5e999]}', "beyond the range"),
        (b"9" * 5000, "too many digits"),
        (b'{"coordinate": false, "coordinate": true}', "'coordinate' is repeated"),
        (b'["\\ud800"]', "unpaired surrogate"),
        (b'{"\\udc00": 1}', "unpaired surrogate"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
        (b"[" * 200_000, f"deeper than {MAX_DEPTH}"),
        (b"\xff{}", "not UTF-8 (byte 0)"),
        (b'{"a" 1}', "not JSON: Expecting ':' delimiter (line 1, column 6)"),
    ],
)
def test_what_json_does_not_mean_is_refused(text: bytes, says: str) -> None:
    with pytest.raises(NotJson) as refused:
        loads(text)
    assert says in str(refused.value)


def test_json_itself_is_read() -> None:
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert loads(deepest) is not None
    assert loads('{"emoji": "\\ud83d\\ude00", "n": -1.5e3, "big": 12345678901234567890}') == {
        "emoji": "\U0001f600",
        "n": -1500.0,
        "big": 12345678901234567890,
    }
