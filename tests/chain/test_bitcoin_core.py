"""Finding Bitcoin Core (`tools.bitcoin_core`): `$WIRE_MPC_BITCOIND`, then the build
beside the repository checked against its SHA256SUMS, then the pinned official release;
without any, an error that names the three ways (never a skipped test)."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools import bitcoin_core as finding
from tools.bitcoin_core import BitcoindNotFound, bitcoin_core


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Places:
    """No shared build, and a pinned release that cannot be fetched."""
    pin = tmp_path / "bitcoind.pin"
    pin.write_text(
        "version=0.0\ntarball=bitcoin-0.0.tar.gz\nurl=https://127.0.0.1:9/bitcoin-0.0.tar.gz\n"
        "sha256=" + "00" * 32 + "\n"
    )
    monkeypatch.delenv("WIRE_MPC_BITCOIND", raising=False)
    return Places(tmp_path / "shared", pin, tmp_path / "cache")


@dataclass(frozen=True)
class Places:
    """Where `bitcoin_core` looks, for one test."""

    shared: Path
    pin: Path
    cache: Path

    def find(self) -> Path:
        return bitcoin_core(self.shared, self.pin, self.cache)


REAL = finding.REPOSITORY.parent / "shared" / "bitcoin-core" / "bitcoind"


def test_without_bitcoind_the_error_names_the_three_ways(nowhere: Places) -> None:
    with pytest.raises(BitcoindNotFound) as missing:
        nowhere.find()
    message = str(missing.value)
    assert "$WIRE_MPC_BITCOIND: not set" in message
    assert f"{nowhere.shared / 'bitcoind'}: absent" in message
    assert "cannot fetch https://127.0.0.1:9/bitcoin-0.0.tar.gz" in message


def test_the_given_binary_comes_first(nowhere: Places, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIRE_MPC_BITCOIND", str(REAL.parent))
    assert nowhere.find() == REAL
    monkeypatch.setenv("WIRE_MPC_BITCOIND", str(nowhere.cache / "no-such-bitcoind"))
    with pytest.raises(BitcoindNotFound, match="no runnable bitcoind there"):
        nowhere.find()


def test_a_shared_build_that_differs_from_its_sums_is_not_run(nowhere: Places) -> None:
    shared = nowhere.shared
    shared.mkdir()
    shutil.copy(REAL, shared / "bitcoind")
    digest = hashlib.sha256((shared / "bitcoind").read_bytes()).hexdigest()
    (shared / "SHA256SUMS").write_text(f"{digest}  bitcoind\n")
    assert nowhere.find() == shared / "bitcoind"
    (shared / "SHA256SUMS").write_text(f"{'11' * 32}  bitcoind\n")
    with pytest.raises(BitcoindNotFound, match="its SHA256 differs"):
        nowhere.find()
