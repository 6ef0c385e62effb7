"""A sealed journal to test against: a private systemd-journald with Forward Secure Sealing,
in a mount namespace of its own (tmpfs journal directories, its own journald.conf), driven
as the appliance drives its journal. Run by tests/test_journal_sealing.py as

    unshare --mount --propagation private python -m tests.journal_lab STATE_DIR

which prints one JSON object: what each step saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from systemd import journal

from appliance import sealing
from appliance.boot import seal_journal
from appliance.errors import CommandError

CONF = "[Journal]\nStorage=persistent\nSeal=yes\nSyncIntervalSec=1s\n"


class Journald:
    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, flush: bool = True) -> None:
        """With flush=False journald starts as at boot: it writes to /run until asked to
        copy that into the persistent journal (systemd-journal-flush.service)."""
        if not flush:
            Path("/run/systemd/journal/flushed").unlink(missing_ok=True)
        socket = Path("/run/systemd/journal/socket")
        socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(["/lib/systemd/systemd-journald"])
        deadline = time.monotonic() + 10
        while not socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("systemd-journald did not start")
            time.sleep(0.02)
        if flush:
            subprocess.run(["journalctl", "--flush"], check=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(10)

    def restart_and_rotate(self) -> None:
        """What wire-journal-rotate.service does: a restart closes the files with a final
        seal, the rotation archives them."""
        self.stop()
        self.start()
        subprocess.run(["journalctl", "--rotate"], check=True)


class RotationUnit:
    """What wire-journal-rotate.path and its service do: when the engine writes the trigger
    file, restart journald and rotate. It counts the restarts; `hold()` makes it wait before
    the next one until `release()`, to catch a verification in the middle."""

    def __init__(self, journald: Journald, trigger: Path) -> None:
        self.journald = journald
        self.trigger = trigger
        self.restarts = 0
        self._free = threading.Event()
        self._free.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> RotationUnit:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._free.set()
        self._thread.join(30)

    def hold(self) -> None:
        self._free.clear()

    def release(self) -> None:
        self._free.set()

    def _watch(self) -> None:
        seen = self._written()
        while not self._stop.is_set():
            written = self._written()
            if written and written != seen:  # empty: caught between truncating and writing
                seen = written
                self._free.wait()
                if not self._stop.is_set():
                    self.journald.restart_and_rotate()
                    self.restarts += 1
            time.sleep(0.02)  # systemd watches with inotify; polling stands in for it here

    def _written(self) -> str | None:
        """What the trigger says: each request writes its own time. (The test moves the
        file's time to stand for time passing, which is no request.)"""
        try:
            return self.trigger.read_text()
        except FileNotFoundError:
            return None


def log(*lines: str) -> None:
    for line in lines:
        journal.send(line, SYSLOG_IDENTIFIER="journal-lab")
    subprocess.run(["journalctl", "--sync"], check=True)


def private_journal() -> Path:
    for directory in ("/run/systemd/journal", "/var/log/journal", "/run/log/journal"):
        Path(directory).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", directory], check=True)
    conf = Path("/run/log/journal/lab-journald.conf")
    conf.write_text(CONF)
    subprocess.run(["mount", "--bind", str(conf), "/etc/systemd/journald.conf"], check=True)
    machine_id = Path("/etc/machine-id").read_text().strip()
    return Path("/var/log/journal", machine_id)


def flip(path: Path, marker: bytes) -> bool:
    """Changes one byte of a record, as an intruder editing a sealed file would."""
    data = bytearray(path.read_bytes())
    at = data.find(marker)
    if at < 0:
        return False
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    return True


def set_online(path: Path) -> None:
    """Marks the active file as a power loss leaves it: still being written."""
    with path.open("r+b") as f:
        f.seek(16)  # the header's state byte: 0 offline, 1 online, 2 archived
        f.write(b"\x01")


def main(state_dir: Path) -> dict[str, Any]:
    journald = Journald()
    try:
        seen = scenario(state_dir, journald)
        seen["boot_after_boundary"] = boot_after_boundary(journald, evolve=False)
        seen["boot_after_boundary_evolved"] = boot_after_boundary(journald, evolve=True)
        seen["power_loss_then_boot_across_boundary"] = boot_after_boundary(
            journald, evolve=True, power_loss=True
        )
        return seen
    finally:
        if journald.process is not None and journald.process.poll() is None:
            journald.process.kill()


def scenario(state_dir: Path, journald: Journald) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    directory = private_journal()
    journald.start()
    log("before sealing")

    # A first boot cut short: keys made, their verification key never kept.
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["journalctl", "--setup-keys", "--interval=15min"], check=True,
                   capture_output=True)  # fmt: skip
    seen["interrupted_complete"] = sealing.sealing_complete(state_dir)
    owner = os.getuid()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True)
    seen["seal_exit"] = seal_journal(state_dir, user.stdout.strip())
    seen["sealed_complete"] = sealing.sealing_complete(state_dir)
    seen["key_mode"] = oct((state_dir / sealing.VERIFICATION_KEY).stat().st_mode & 0o777)
    seen["key_owner_is_given_user"] = (state_dir / sealing.VERIFICATION_KEY).stat().st_uid == owner
    fss = next(directory.glob("fss")).read_bytes()

    log("mint attested tamper-target-1", "withdrawal confirmed")
    journald.restart_and_rotate()
    key = sealing.take_verification_key(state_dir)
    seen["second_seal_exit"] = seal_journal(state_dir, user.stdout.strip())
    seen["keys_kept_after_taking"] = next(directory.glob("fss")).read_bytes()[:64] == fss[:64]
    seen["clean"] = sealing.verify_journal(key)
    seen["wrong_key"] = sealing.verify_journal("0" * 24 + "/" + key.split("/")[1])
    seen["repeated_verification"] = repeated_verification(state_dir, journald, key)

    # A power loss: the active file is left online; journald sets it aside on restart.
    log("burn accepted before the power loss")
    journald.stop(signal.SIGKILL)
    set_online(directory / "system.journal")
    journald.start()
    log("after the power loss")
    journald.restart_and_rotate()
    seen["after_power_loss"] = sealing.verify_journal(key)

    # An intruder edits a sealed record.
    target = next(f for f in sealing.sealed_files() if b"tamper-target-1" in f.read_bytes())
    seen["tampered_file"] = target.name
    seen["flipped"] = flip(target, b"tamper-target-1")
    seen["tampered"] = sealing.verify_journal(key)
    return seen


def repeated_verification(state_dir: Path, journald: Journald, key: str) -> dict[str, Any]:
    """`audit-verify` asked again and again, as the engine runs it with the image's rotation
    unit: journald restarted at most once per ROTATION_SPACING, one verification at a time."""
    seen: dict[str, Any] = {}
    trigger = state_dir / sealing.ROTATE_REQUEST
    with RotationUnit(journald, trigger) as unit:
        log("before the first audit-verify")
        seen["first"] = sealing.verify_journal(key, trigger)
        seen["second"] = sealing.verify_journal(key, trigger)
        seen["restarts_after_two_calls"] = unit.restarts

        # The spacing has passed (the trigger was written that long ago); the rotation unit
        # is slow, so a second verification arrives while the first one waits for it.
        back = time.time() - sealing.ROTATION_SPACING - 1
        os.utime(trigger, (back, back))
        unit.hold()
        answers: list[Any] = []
        first = threading.Thread(
            target=lambda: answers.append(sealing.verify_journal(key, trigger))
        )
        first.start()
        deadline = time.monotonic() + 30
        while trigger.stat().st_mtime <= back + 1:  # written: the first one is rotating
            if time.monotonic() > deadline:
                raise RuntimeError("the first verification did not ask for a rotation")
            time.sleep(0.02)
        try:
            sealing.verify_journal(key, trigger)
            seen["meanwhile"] = "answered"
        except CommandError as exc:
            seen["meanwhile"] = exc.code
        unit.release()
        first.join(120)
        seen["after_the_spacing"] = answers[0]
        seen["restarts_after_the_spacing"] = unit.restarts

        # A clock set back leaves the last request in the future: it holds nothing up.
        ahead = time.time() + 3600
        os.utime(trigger, (ahead, ahead))
        seen["clock_set_back"] = sealing.verify_journal(key, trigger)
        seen["restarts_in_all"] = unit.restarts
    return seen


def boot_after_boundary(
    journald: Journald, evolve: bool, power_loss: bool = False
) -> dict[str, Any]:
    """A node shut down cleanly and booted again after a sealing interval ended (10 s
    intervals here, 15 minutes on the appliance): early boot's records are copied into the
    persistent journal, with or without wire-journal-evolve's step before the copy.

    With `power_loss`, the node loses power instead and its boot begins before the boundary
    and copies after it: journald then starts a new file whose first seal is of the new
    interval, before records of the old one, and no order of seals can hold both (a limit
    of journald 252 that the appliance does not overcome)."""
    directory = Path("/var/log/journal", Path("/etc/machine-id").read_text().strip())
    journald.stop()
    for old in directory.iterdir():
        old.unlink()
    made = subprocess.run(["journalctl", "--setup-keys", "--force", "--interval=10s"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    key = made.stdout.strip()
    journald.start()
    log("sealed, before the shutdown")
    fss = directory / "fss"
    if power_loss:
        journald.stop(signal.SIGKILL)
        set_online(directory / "system.journal")
        time.sleep(max(0.0, 8.5 - time.time() % 10))  # boot 1.5 s before the boundary
    else:
        journald.stop()
    before_boot = fss.read_bytes()
    if power_loss:
        journald.start(flush=False)
        log("early boot, before the boundary")
    time.sleep(10.3 - time.time() % 10)  # into the next interval
    if not power_loss:
        journald.start(flush=False)
    log("early boot, not yet in the persistent journal")
    evolved = sealing.evolve_sealing_key(fss, time.time_ns() // 1000) if evolve else None
    subprocess.run(["journalctl", "--flush"], check=True)
    log("booted")
    journald.restart_and_rotate()
    seen: dict[str, Any] = {"verified": sealing.verify_journal(key), "evolved": evolved}
    if not evolve and not power_loss:
        # journald evolved the key itself after the copy: the same state as ours.
        copy = directory.parent / "fss-before-boot"
        copy.write_bytes(before_boot)
        epoch = int.from_bytes(fss.read_bytes()[-8:], "big")
        header = (
            int.from_bytes(before_boot[56:64], "little"),
            int.from_bytes(before_boot[64:72], "little"),
        )
        sealing.evolve_sealing_key(copy, header[0] + epoch * header[1])
        seen["same_state_as_journald"] = copy.read_bytes()[88:] == fss.read_bytes()[88:]
    return seen


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
