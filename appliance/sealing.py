"""The journal's Forward Secure Sealing on the appliance, as the engine serves it: the
verification key leaves the node once (`audit-key`), and the archived journal files' seals
are checked with the key an admin holds (`audit-verify`). The keys are made on first boot by
`appliance.boot seal-journal`."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from appliance.errors import CommandError
from hsm.vault import write_private_file

__all__ = [
    "ROTATE_REQUEST",
    "ROTATION_SPACING",
    "SEALING_INTERVAL",
    "VERIFICATION_KEY",
    "evolve_sealing_key",
    "keep_verification_key",
    "sealing_complete",
    "take_verification_key",
    "unsealed_after_sealing",
    "verify_journal",
]

VERIFICATION_KEY = "journal-verification-key"
JOURNAL_DIR = Path("/var/log/journal")
KEY_TAKEN = "journal-verification-key.taken"
SEALING_INTERVAL = 15 * 60  # seconds: journald seals and evolves its key this often
ROTATE_REQUEST = "rotate-journal"  # in the engine's runtime directory: see verify_journal
# A rotation restarts journald: at most one per ROTATION_SPACING, far below systemd's start
# limit (5 in 10 s), which would leave the node without journald and so refusing every
# state change; and one archived file per rotation, not one per call.
ROTATION_SPACING = 5 * 60  # seconds
_verifying = threading.Lock()  # one verification at a time: each runs journalctl on every file


def take_verification_key(state_dir: Path) -> str:
    """The journal's sealing verification key, once: the file is overwritten and removed
    as it is read (it lets its holder verify the journal, and must not stay on the node).
    A marker says it was taken, so a later boot does not make new keys in its place."""
    path = state_dir / VERIFICATION_KEY
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise CommandError("already-taken", "the journal's verification key is not on this "
                           "node: an admin took it already, or the journal is not sealed "
                           "(wire-journal-seal.service)") from None  # fmt: skip
    write_private_file(state_dir / KEY_TAKEN, f"{time.time():.0f}\n".encode())
    with path.open("r+b") as f:
        f.write(b"\0" * len(key))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
    return key


def sealing_complete(state_dir: Path) -> bool:
    """The sealing keys exist and their verification key was kept (it waits for an admin or
    an admin took it). Keys without a kept verification key are a first boot cut short
    between `journalctl --setup-keys` and keeping the key: they must be made again."""
    if not any(JOURNAL_DIR.glob("*/fss")):
        return False
    return (state_dir / VERIFICATION_KEY).exists() or (state_dir / KEY_TAKEN).exists()


def keep_verification_key(state_dir: Path, key: str, owner_uid: int, owner_gid: int) -> None:
    """Keeps the key for an admin: written whole or not at all (a power loss leaves either
    no file or the whole key), readable by the engine's user only."""
    write_private_file(state_dir / VERIFICATION_KEY, (key + "\n").encode(), (owner_uid, owner_gid))


def evolve_sealing_key(fss: Path, now_usec: int) -> tuple[int, int]:
    """Brings journald's sealing key (the `fss` file) forward to the sealing interval of
    `now_usec`, as journald itself does when it seals; the epochs before and after.

    At boot journald copies the records of early boot into the persistent journal without
    evolving the key first, and seals them afterwards under the epoch the key was left at.
    When the node was off across an interval boundary, that seal is older than the records
    it follows, and `journalctl --verify` fails the file ("tag/entry realtime timestamp out
    of synchronization"). Evolving the key before that copy (wire-journal-evolve.service)
    keeps the seals in order. Evolving is one squaring modulo n per interval (FSPRG); the
    older state is overwritten, as forward security asks.

    The file: an 88-byte header (header_size at offset 48, start_usec 56, interval_usec 64,
    all little-endian), then the state: secpar/16 - 1 (2 bytes, big-endian), n and x
    (secpar/8 bytes each, big-endian) and the epoch (8 bytes, big-endian)."""
    data = bytearray(fss.read_bytes())
    if data[:8] != b"KSHHRHLP" or len(data) < 88:
        raise ValueError(f"{fss}: not a journal sealing key file")
    header_size, start, interval = (int.from_bytes(data[o : o + 8], "little") for o in (48, 56, 64))
    state = header_size
    width = (int.from_bytes(data[state : state + 2], "big") + 1) * 2  # secpar / 8, in bytes
    n_at, x_at, epoch_at = state + 2, state + 2 + width, state + 2 + 2 * width
    if len(data) < epoch_at + 8 or interval == 0:
        raise ValueError(f"{fss}: truncated or without an interval")
    epoch = int.from_bytes(data[epoch_at : epoch_at + 8], "big")
    goal = (now_usec - start) // interval if now_usec > start else 0
    if goal <= epoch:
        return epoch, epoch
    n = int.from_bytes(data[n_at:x_at], "big")
    x = int.from_bytes(data[x_at:epoch_at], "big")
    for _ in range(goal - epoch):
        x = x * x % n
    data[x_at:epoch_at] = x.to_bytes(width, "big")
    data[epoch_at : epoch_at + 8] = goal.to_bytes(8, "big")
    write_private_file(fss, bytes(data))
    return epoch, goal


VERDICT = re.compile(r"(?P<verdict>PASS|FAIL): (?P<path>\S+)( \((?P<reason>.*)\))?$")
KEY_FORM = re.compile(r"[0-9a-f]{6,64}(-[0-9a-f]{6,64})*/[0-9a-f]+-[0-9a-f]+")


def sealed_files() -> list[Path]:
    """The journal files that are no longer written: archived ones (`name@….journal`) and
    those journald set aside after an unclean stop, such as a power loss (`….journal~`)."""
    return sorted([*JOURNAL_DIR.glob("*/*@*.journal"), *JOURNAL_DIR.glob("*/*@*.journal~")])


def verify_journal(key: str, rotate: Path | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """`journalctl --verify` of the sealed journal files with the sealing verification key
    an admin holds: every seal must check (a file changed after sealing fails). The active
    files are still being written; with `rotate` (the image's wire-journal-rotate.path)
    they are sealed and archived first, so the files checked run up to this request, unless
    a rotation was asked less than ROTATION_SPACING ago: then the files checked run up to
    that one, and the answer's `rotation` says so. One verification runs at a time; another
    asked meanwhile is refused (`rate-limited`)."""
    if not KEY_FORM.fullmatch(key):
        raise CommandError("bad-key", "not a journal verification key (as journalctl "
                           "--setup-keys prints it: hex-hex/hex-hex)")  # fmt: skip
    if not _verifying.acquire(blocking=False):
        raise CommandError(
            "rate-limited",
            "a journal verification is running on this node already: ask again when it answered",
        )
    try:
        rotation = request_rotation(rotate, time.time()) if rotate is not None else None
        return {**_verify_sealed_files(key, timeout), "rotation": rotation}
    finally:
        _verifying.release()


def request_rotation(trigger: Path, now: float) -> dict[str, Any]:
    """Asks wire-journal-rotate for a rotation by writing `trigger`, and waits for the files
    it archives; or, when the trigger was written less than ROTATION_SPACING before `now`,
    asks nothing. The trigger's time is the last request's, so the spacing holds across
    restarts of the engine; a time in the future (a clock set back) does not hold it up."""
    try:
        last = trigger.stat().st_mtime
    except FileNotFoundError:
        last = None
    if last is not None and 0 <= now - last < ROTATION_SPACING:
        return {"rotated": False, "at": last, "next_after": last + ROTATION_SPACING}
    before = len(sealed_files())
    trigger.write_text(f"{now}\n")  # wire-journal-rotate.path sees it; so would a touch
    asked = trigger.stat().st_mtime  # what a later request compares with
    deadline = time.monotonic() + 60
    while len(sealed_files()) <= before:
        if time.monotonic() > deadline:
            raise CommandError(
                "no-rotation", "the journal was not rotated within 60 s (wire-journal-rotate.path)"
            )
        time.sleep(0.5)
    return {"rotated": True, "at": asked, "next_after": asked + ROTATION_SPACING}


def _verify_sealed_files(key: str, timeout: float) -> dict[str, Any]:
    files = sealed_files()
    if not files:
        return {"passed": False, "files": [], "problem": "no archived journal file yet"}
    done = subprocess.run(
        ["journalctl", "--verify", f"--verify-key={key}", *(f"--file={f}" for f in files)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    results = parse_verify_output(done.stdout + done.stderr)
    by_name = {f.name: f for f in files}
    for result in results:
        path = by_name.get(result["file"])
        if path is not None and unsealed_after_sealing(path, key):
            # journalctl passes a file without seals; after the first sealing interval every
            # file journald opens is sealed, so this one was written without the key.
            result["passed"] = False
            result["findings"].append("not sealed, though it begins after sealing started")
    missing = [name for name in by_name if name not in {r["file"] for r in results}]
    passed = done.returncode == 0 and not missing and all(r["passed"] for r in results)
    return {"passed": passed, "files": results,
            **({"problem": f"journalctl did not report on {', '.join(missing)}"}
               if missing else {})}  # fmt: skip


def unsealed_after_sealing(path: Path, key: str) -> bool:
    """A journal file without seals whose first record is later than the first sealing
    interval of `key` (its "/start-interval" part, hex, counts intervals). The header gives
    the compatible flags (offset 8, bit 0: sealed) and head_entry_realtime (offset 184).
    A file whose records are all backdated is not caught here."""
    with path.open("rb") as f:
        head = f.read(192)
    if len(head) < 192 or int.from_bytes(head[8:12], "little") & 1:
        return False
    start, interval = (int(part, 16) for part in key.split("/")[1].split("-"))
    return int.from_bytes(head[184:192], "little") >= (start + 1) * interval


def parse_verify_output(text: str) -> list[dict[str, Any]]:
    """Per file, from `journalctl --verify`: passed or not, what it found wrong (the lines
    before its FAIL), and how far the seals reach (`coverage`: the "=>" line after its
    PASS, such as "final 20ms entries not sealed")."""
    results: list[dict[str, Any]] = []
    findings: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):
        verdict = VERDICT.match(line)
        if verdict:
            path = Path(verdict["path"])
            results.append({
                "file": path.name,
                "passed": verdict["verdict"] == "PASS",
                "set_aside": path.name.endswith("~"),
                "findings": [*findings[-5:], *filter(None, [verdict["reason"]])],
            })  # fmt: skip
            findings = []
        elif line.startswith("=>") and results:
            results[-1]["coverage"] = line.removeprefix("=>").strip()
        elif line:
            findings.append(line)
    return results
