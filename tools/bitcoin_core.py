"""Finding Bitcoin Core's bitcoind for the tests, the demo and the benches, in this order:
`$WIRE_MPC_BITCOIND` (a bitcoind binary or the directory holding one);
`../shared/bitcoin-core/` beside the repository (checked against its SHA256SUMS); the
official release tarball pinned in `image/bitcoind.pin`, fetched once into
`build/bitcoin-core/` and checked against the pinned hash. Failing all three,
`BitcoindNotFound` names them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

__all__ = ["BitcoindNotFound", "bitcoin_core"]

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED = REPOSITORY.parent / "shared" / "bitcoin-core"
PIN = REPOSITORY / "image" / "bitcoind.pin"
CACHE = REPOSITORY / "build" / "bitcoin-core"


class BitcoindNotFound(RuntimeError):
    """No bitcoind could be found or fetched; the message names the ways tried."""


def bitcoin_core(shared_dir: Path = SHARED, pin: Path = PIN, cache: Path = CACHE) -> Path:
    """The bitcoind binary to run: see the module's documentation for the order (the
    places are arguments for the tests of this order)."""
    tried = []
    given = os.environ.get("WIRE_MPC_BITCOIND")
    if given:
        path = Path(given)
        binary = path / "bitcoind" if path.is_dir() else path
        if _runnable(binary):
            return binary
        tried.append(f"$WIRE_MPC_BITCOIND={given}: no runnable bitcoind there")
    else:
        tried.append("$WIRE_MPC_BITCOIND: not set")
    shared = shared_dir / "bitcoind"
    if shared.exists():
        problem = _checksum_problem(shared, shared_dir / "SHA256SUMS")
        if problem is None and _runnable(shared):
            return shared
        tried.append(f"{shared}: {problem or 'does not run here (missing libraries?)'}")
    else:
        tried.append(f"{shared}: absent")
    try:
        return _pinned_release(pin, cache)
    except (OSError, ValueError) as exc:
        tried.append(f"pinned release ({pin.name}): {exc}")
    raise BitcoindNotFound("no bitcoind: " + "; ".join(tried))


def _runnable(binary: Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        run = subprocess.run([binary, "-version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0 and b"Bitcoin Core" in run.stdout


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _checksum_problem(binary: Path, sums: Path) -> str | None:
    try:
        lines = sums.read_text().splitlines()
    except OSError as exc:
        return f"cannot read {sums}: {exc}"
    wanted = {name: digest for digest, _, name in (line.partition("  ") for line in lines)}
    if binary.name not in wanted:
        return f"{sums} has no line for {binary.name}"
    if _sha256(binary) != wanted[binary.name]:
        return f"its SHA256 differs from {sums}"
    return None


def _read_pin(path: Path) -> dict[str, str]:
    pin = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pin[key.strip()] = value.strip()
    return pin


def _pinned_release(pin_file: Path, cache: Path) -> Path:
    pin = _read_pin(pin_file)
    binary = cache / pin["version"] / "bin" / "bitcoind"
    if _runnable(binary):
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        tarball = Path(scratch) / pin["tarball"]
        if not pin["url"].startswith("https://"):
            raise ValueError(f"{pin_file}: the url must be https://")
        try:
            with (
                urllib.request.urlopen(pin["url"], timeout=30) as answer,  # noqa: S310 (https)
                tarball.open("wb") as out,
            ):
                shutil.copyfileobj(answer, out)
        except OSError as exc:
            raise OSError(f"cannot fetch {pin['url']}: {exc}") from exc
        if _sha256(tarball) != pin["sha256"]:
            raise ValueError(f"{pin['url']} does not have the pinned SHA256 {pin['sha256']}")
        with tarfile.open(tarball) as archive:
            archive.extractall(scratch, filter="data")
        unpacked = Path(scratch) / f"bitcoin-{pin['version']}"
        shutil.rmtree(cache / pin["version"], ignore_errors=True)
        unpacked.rename(cache / pin["version"])
    if not _runnable(binary):
        raise ValueError(f"{binary} from the pinned release does not run here")
    return binary


# ---- one node -------------------------------------------------------------------------
