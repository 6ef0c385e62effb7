"""`make demo` runs and every signature it prints verifies independently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from coincurve import PublicKeyXOnly
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .conftest import REPO


def test_demo_prints_verifiable_signatures() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    summary = json.loads(run.stdout.split("Summary (JSON):", 1)[1])
    assert [(r["threshold"], r["parties"]) for r in summary["runs"]] == [(2, 3), (3, 5)]
    for r in summary["runs"]:
        a, c = r["attestation"], r["custody"]
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(a["group_key"])).verify(
            bytes.fromhex(a["signature"]), bytes.fromhex(a["message"])
        )
        key = PublicKeyXOnly(bytes.fromhex(c["output_key_xonly"]))
        assert key.verify(bytes.fromhex(c["signature"]), bytes.fromhex(c["message"]))
        assert r["fewer_than_threshold_refused"]
