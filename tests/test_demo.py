"""`make demo` runs a local cluster end to end, and every signature it prints verifies
independently."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pbk
from coincurve import PublicKeyXOnly
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pbk.script import PrecomputedTransactionData
from pbk.script import ScriptVerificationFlags as Flags

from appliance.wire.burns import BurnRecord

from .conftest import REPO


def tagged(tag: str, data: bytes) -> bytes:
    prefix = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(prefix + prefix + data).digest()


def test_demo_prints_verifiable_signatures() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.split("Summary (JSON):", 1)[1])
    assert summary["same_keys_on_every_node"]
    assert summary["signers"] == [1, 2]
    message = summary["test_message"].encode()
    attestation = bytes.fromhex(summary["group_keys"]["attestation"])
    Ed25519PublicKey.from_public_bytes(attestation).verify(
        bytes.fromhex(summary["signatures"]["attestation"]), b"wire-mpc test-signing v1\0" + message
    )
    internal = bytes.fromhex(summary["group_keys"]["custody"])[1:]
    output = PublicKeyXOnly(internal)
    output.tweak_add(tagged("TapTweak", internal))
    digest = tagged("wire-mpc/test-signing", message)
    assert output.verify(bytes.fromhex(summary["signatures"]["custody"]), digest)
    assert summary["deposit"]["seen_by_every_node"]
    assert summary["deposit"]["address"].startswith("bcrt1p")
    # The mint attestation: plain Ed25519 under the attestation group key, naming the deposit.
    message = bytes.fromhex(summary["attestation"]["message"])
    Ed25519PublicKey.from_public_bytes(attestation).verify(
        bytes.fromhex(summary["attestation"]["signature"]), message
    )
    assert bytes.fromhex(summary["deposit"]["txid"]) in message  # txid as displayed
    # The burn was the authority's; the withdrawal and the consolidation are valid by Bitcoin
    # Core's consensus rules (libbitcoinkernel, every input) and pay where they should.
    burn = summary["withdrawal"]["burn"]
    Ed25519PublicKey.from_public_bytes(
        bytes.fromhex(summary["withdrawal"]["burn_authority_key"])
    ).verify(bytes.fromhex(burn["signature"]), BurnRecord.from_json(burn["record"]).canonical())
    for name in ("withdrawal", "consolidation"):
        spent = summary[name]["spent"]
        assert consensus_valid(bytes.fromhex(summary[name]["transaction"]), spent), name
    assert summary["withdrawal"]["confirmations"] >= 6
    assert summary["withdrawal"]["paid_report"]["txid"] == summary["withdrawal"]["txid"]
    # The demo leaves nothing running: no process of its cluster is alive.
    assert not [p for p in Path("/proc").glob("[0-9]*") if b"wire-demo-" in _cmdline(p)]


def consensus_valid(raw: bytes, spent: list[dict]) -> bool:
    """Every input of `raw` verifies under all consensus flags (libbitcoinkernel)."""
    tx = pbk.Transaction(raw)
    outputs = [pbk.TransactionOutput(pbk.ScriptPubkey(bytes.fromhex(s["script"])),
                                     s["amount_sats"]) for s in spent]  # fmt: skip
    precomputed = PrecomputedTransactionData(tx, outputs)
    return all(
        pbk.ScriptPubkey(bytes.fromhex(s["script"])).verify(
            s["amount_sats"], tx, precomputed, index, Flags.ALL
        )
        for index, s in enumerate(spent)
    )


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:  # the process ended while we looked
        return b""
