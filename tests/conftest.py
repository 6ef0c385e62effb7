"""Shared test fixtures: where the public test vectors live.

The vectors stay outside the repository (`$WIRE_MPC_VECTORS`, default `../shared/vectors`).
Under CI their absence fails the run; elsewhere the tests that need them are skipped with
the path they looked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


class Vectors:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, relative: str) -> Path:
        path = self.root / relative
        if not path.is_file():
            pytest.fail(f"test vector file {path} is missing")
        return path

    def json(self, relative: str) -> Any:
        return json.loads(self.path(relative).read_text())


@pytest.fixture(scope="session")
def vectors() -> Vectors:
    root = Path(os.environ.get("WIRE_MPC_VECTORS", REPO.parent / "shared" / "vectors"))
    if not root.is_dir():
        message = f"public test vectors not found at {root} (set WIRE_MPC_VECTORS)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Vectors(root)
