"""The journal's Forward Secure Sealing on the appliance, as the engine serves it: the
verification key leaves the node once (`audit-key`), and the archived journal files' seals
are checked with the key an admin holds (`audit-verify`). The keys are made on first boot by
`appliance.boot seal-journal`."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

__all__ = ["ROTATE_REQUEST", "VERIFICATION_KEY", "take_verification_key", "verify_journal"]

VERIFICATION_KEY = "journal-verification-key"
JOURNAL_DIR = Path("/var/log/journal")
ROTATE_REQUEST = "rotate-journal"  # in the engine's runtime directory: see verify_journal


def take_verification_key(state_dir: Path) -> str:
    """The journal's sealing verification key, once: the file is overwritten and removed
    as it is read (it lets its holder verify the journal, and must not stay on the node)."""
    path = state_dir / VERIFICATION_KEY
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise CommandError("already-taken", "the journal's verification key is not on this "
                           "node: an admin took it already, or the journal is not sealed "
                           "(wire-journal-seal.service)") from None  # fmt: skip
    with path.open("r+b") as f:
        f.write(b"\0" * len(key))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
    return key


KEY_FORM = re.compile(r"[0-9a-f]{6,64}(-[0-9a-f]{6,64})*/[0-9a-f]+-[0-9a-f]+")


def verify_journal(key: str, rotate: Path | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """`journalctl --verify` of the archived journal files with the sealing verification key
    an admin holds: every seal must check (a file changed after sealing fails). The active
    files are still being written and sealed; with `rotate` (the image's
    wire-journal-rotate.path) the journal is rotated first, so the files checked run up to
    this request."""
    if not KEY_FORM.fullmatch(key):
        raise CommandError("bad-key", "not a journal verification key (as journalctl "
                           "--setup-keys prints it: hex-hex/hex-hex)")  # fmt: skip
    archived = sorted(JOURNAL_DIR.glob("*/*@*.journal"))
    if rotate is not None:
        rotate.write_text(f"{time.time()}\n")
        deadline = time.monotonic() + 30
        while len(sorted(JOURNAL_DIR.glob("*/*@*.journal"))) <= len(archived):
            if time.monotonic() > deadline:
                raise CommandError("no-rotation", "the journal was not rotated within 30 s "
                                   "(wire-journal-rotate.path)")  # fmt: skip
            time.sleep(0.5)
        archived = sorted(JOURNAL_DIR.glob("*/*@*.journal"))
    if not archived:
        return {"passed": False, "files": ["no archived journal file yet"]}
    done = subprocess.run(
        ["journalctl", "--verify", f"--verify-key={key}", *(f"--file={f}" for f in archived)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return {"passed": done.returncode == 0 and any(line.startswith("PASS") for line in lines),
            "files": lines[-200:]}  # fmt: skip
