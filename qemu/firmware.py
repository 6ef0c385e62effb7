"""UEFI firmware for the VMs, as an operator sets up a server's: OVMF with Secure Boot
enforcing, and the certificate that signed the image's boot chain enrolled (as PK, KEK and
db), so the firmware starts nothing else.

The variable store is written by `virt-fw-vars`, run among the image's boot tools
(image/boot-tools: Debian 12 has no package of it). SMM and the secure pflash are what make
OVMF keep the variables from the guest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["OVMF_CODE", "boot_tools", "enrolled_variables"]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")  # blank: setup mode
OWNER = "9c2d7e2a-3c1b-4b57-8f0e-77a1d2c6e5b4"  # the owner GUID of the enrolled entries


def boot_tools() -> Path:
    """The boot tools' tree: `$WIRE_BOOT_TOOLS` (the Makefile sets it)."""
    where = os.environ.get("WIRE_BOOT_TOOLS")
    if not where or not (Path(where) / "stamp").exists():
        raise RuntimeError(
            "WIRE_BOOT_TOOLS must name image/boot-tools' tree (make image-test sets it)"
        )
    return Path(where).resolve()


def enrolled_variables(certificate: Path, destination: Path, tools: Path) -> Path:
    """OVMF's variable store with `certificate` enrolled and Secure Boot on, at
    `destination`."""
    for firmware in (OVMF_CODE, OVMF_VARS):
        if not firmware.exists():
            raise RuntimeError(f"{firmware} is missing: install Debian's ovmf package")
    work = destination.parent / "enrolment"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(OVMF_VARS, work / "blank.fd")
    shutil.copy(certificate, work / "db.crt")
    script = (
        'mount --bind "$1" "$2/mnt" && exec chroot "$2" virt-fw-vars --input /mnt/blank.fd '
        f"--output /mnt/enrolled.fd --set-pk {OWNER} /mnt/db.crt --add-kek {OWNER} "
        f"/mnt/db.crt --add-db {OWNER} /mnt/db.crt --secure-boot"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--fork", "sh", "-euc", script, "sh", str(work), str(tools)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"virt-fw-vars failed: {done.stderr.strip()[-2000:]}")
    shutil.move(work / "enrolled.fd", destination)
    shutil.rmtree(work)
    return destination
