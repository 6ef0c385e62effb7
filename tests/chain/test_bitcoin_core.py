"""Finding Bitcoin Core (`tools.bitcoind.bitcoin_core`): `$WIRE_MPC_BITCOIND`, then the build
beside the repository checked against its SHA256SUMS, then the pinned official release;
without any, an error that names the three ways (never a skipped test)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tools import bitcoind
from tools.bitcoind import BitcoindNotFound, bitcoin_core


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No shared build, and a pinned release that cannot be fetched."""
    monkeypatch.setattr(bitcoind, "SHARED", tmp_path / "shared")
    pin = tmp_path / "bitcoind.pin"
    pin.write_text(
        "version=0.0\ntarball=bitcoin-0.0.tar.gz\nurl=https://127.0.0.1:9/bitcoin-0.0.tar.gz\n"
        "sha256=" + "00" * 32 + "\n"
    )
    monkeypatch.setattr(bitcoind, "PIN", pin)
    monkeypatch.setattr(bitcoind, "CACHE", tmp_path / "cache")
    monkeypatch.delenv("WIRE_MPC_BITCOIND", raising=False)
    return tmp_path


def test_without_bitcoind_the_error_names_the_three_ways(nowhere: Path) -> None:
    with pytest.raises(BitcoindNotFound) as missing:
        bitcoin_core()
    message = str(missing.value)
    assert "$WIRE_MPC_BITCOIND: not set" in message
    assert f"{nowhere / 'shared' / 'bitcoind'}: absent" in message
    assert "cannot fetch https://127.0.0.1:9/bitcoin-0.0.tar.gz" in message


def test_the_given_binary_comes_first(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bitcoind.REPOSITORY.parent / "shared" / "bitcoin-core" / "bitcoind"
    monkeypatch.setenv("WIRE_MPC_BITCOIND", str(real.parent))
    assert bitcoin_core() == real
    monkeypatch.setenv("WIRE_MPC_BITCOIND", str(nowhere / "no-such-bitcoind"))
    with pytest.raises(BitcoindNotFound, match="no runnable bitcoind there"):
        bitcoin_core()


def test_a_shared_build_that_differs_from_its_sums_is_not_run(nowhere: Path) -> None:
    real = bitcoind.REPOSITORY.parent / "shared" / "bitcoin-core" / "bitcoind"
    shared = nowhere / "shared"
    shared.mkdir()
    shutil.copy(real, shared / "bitcoind")
    digest = hashlib.sha256((shared / "bitcoind").read_bytes()).hexdigest()
    (shared / "SHA256SUMS").write_text(f"{digest}  bitcoind\n")
    assert bitcoin_core() == shared / "bitcoind"
    (shared / "SHA256SUMS").write_text(f"{'11' * 32}  bitcoind\n")
    with pytest.raises(BitcoindNotFound, match="its SHA256 differs"):
        bitcoin_core()
