"""The engine's control socket at its edge, on a real wire-mpcd: strict JSON request lines
(no NaN or Infinity, bounded nesting), parameters that are missing or wrong named as the
caller's mistake, and any other failure (a bug) answered with a stable code and an incident
id while its text goes to the engine's log only."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.control import EngineError
from tools.devcluster import DevCluster, DevNode, wait_until

from .conftest import Journal


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, journal: Journal) -> Iterator[DevNode]:
    cluster = DevCluster(tmp_path_factory.mktemp("control"), parties=2, threshold=2)
    cluster.create()
    cluster.start([1])
    try:
        yield cluster[1]
    finally:
        cluster.close()


def send_line(socket_path: Path, line: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(socket_path))
        sock.sendall(line + b"\n")
        answer = sock.makefile("rb").readline()
    assert answer, "the engine closed the connection without answering"
    return dict(json.loads(answer))


def test_a_missing_param_is_named(node: DevNode) -> None:
    with pytest.raises(EngineError) as refused:
        node.call("dkg")
    assert (refused.value.code, str(refused.value)) == (
        "bad-request",
        "params.ceremony_id is required",
    )


def test_a_wrong_param_is_named(node: DevNode) -> None:
    with pytest.raises(EngineError) as refused:
        node.call("set-service", enabled="yes")
    assert (refused.value.code, str(refused.value)) == (
        "bad-request",
        "enabled must be true or false",
    )


def test_a_request_line_with_nan_or_deep_nesting_is_refused(node: DevNode) -> None:
    for params, why in (
        (b'{"timeout": NaN}', "NaN is not a JSON number"),
        (b'{"timeout": 1e400}', "beyond the range"),
        (b'{"timeout": 1, "timeout": 2}', "repeated"),
        (b'{"timeout": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than"),
    ):
        line = b'{"id": 7, "method": "test-communication", "params": ' + params + b"}"
        error = send_line(node.socket, line)["error"]
        assert error["code"] == "bad-request", error
        assert error["message"].startswith("malformed request: "), error
        assert why in error["message"], error


def test_a_failure_is_told_as_an_incident(node: DevNode) -> None:
    """A failure that is no refusal (here a timeout the engine cannot read as a number,
    failing as a bug would) is answered with a stable code and an incident id; its text is
    logged under that id."""
    with pytest.raises(EngineError) as failed:
        node.call("test-communication", timeout="soon")
    assert failed.value.code == "internal-error"
    message = str(failed.value)
    assert "could not convert" not in message
    assert "soon" not in message
    incident = message.rsplit("incident ", 1)[1].rstrip(")")
    wait_until(lambda: incident in node.log_path.read_text(), within=10, what="the incident")
    logged = node.log_path.read_text()
    assert "could not convert string to float" in logged[logged.index(incident) :]
