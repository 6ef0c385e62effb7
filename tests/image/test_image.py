"""The appliance image (`make image-test`): built by image/build, checked here as operators
will meet it.

- the artifacts, their size, and the dm-verity root hash on the kernel command line;
- reproducibility: a second build of the same commit gives the same disk, byte for byte,
  and if not, the test names the partition and the files that differ;
- the units' `systemd-analyze security` exposure (target: at most 2.0);
- one VM boots it under QEMU as a server would, through UEFI with Secure Boot enforcing
  (OVMF, the image's certificate enrolled): the signed systemd-boot and UKI; it provisions
  itself from its SMBIOS credentials, and its API answers `status` over the virtio-serial
  port, driven with `mpc_operator` as an operator would;
- the firmware refuses a boot chain that is not the one signed: the UKI with one byte
  changed, unsigned, or with another command line under another key;
- dm-verity stops a boot from a root with one byte changed.

The image under test is `$WIRE_IMAGE` (the Makefile builds it); these tests run as root.
Times and sizes are printed (run with -s) and written to `$WIRE_IMAGE/report.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from qemu.firmware import boot_tools, enrolled_variables
from qemu.site import NodeSite, credentials, local_bitcoind, node_config
from qemu.vm import READY_LINE, VM, Image, accelerator
from tools.devcluster import wait_until

REPO = Path(__file__).resolve().parents[2]
EXPOSURE_TARGET = 2.0
SIZE_TARGET_MB = 400


@pytest.fixture(scope="module")
def image() -> Image:
    try:
        return Image.under_test()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def report(image: Image) -> Any:
    path = image.directory / "report.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    yield data
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def firmware(image: Image) -> Path:
    """OVMF's variables with the image's Secure Boot certificate enrolled."""
    try:
        tools = boot_tools()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    return enrolled_variables(
        image.directory / "secure-boot.crt", image.directory / "efivars-enrolled.fd", tools
    )


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_artifacts_and_size(image: Image, report: dict[str, Any]) -> None:
    cmdline = image.cmdline()
    roothash = re.search(r"\broothash=([0-9a-f]{64})\b", cmdline)
    assert roothash, cmdline
    assert "systemd.verity_root_options=panic-on-corruption" in cmdline
    verified = subprocess.run(
        ["veritysetup", "verify", str(image.directory / "root.squashfs"),
         str(image.directory / "root.verity"), roothash.group(1)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    disk_mb = image.disk.stat().st_size / 1e6
    report["disk_mb"] = round(disk_mb, 1)
    report["root_squashfs_mb"] = round((image.directory / "root.squashfs").stat().st_size / 1e6, 1)
    print(f"\nimage: disk {disk_mb:.0f} MB (target <= {SIZE_TARGET_MB} MB), "
          f"kernel {image.kernel.stat().st_size / 1e6:.0f} MB, "
          f"initrd {image.initrd.stat().st_size / 1e6:.0f} MB")  # fmt: skip
    assert disk_mb <= SIZE_TARGET_MB
    manifest = json.loads((image.directory / "manifest.json").read_text())
    assert manifest["profile"] in ("production", "test")
    # The boot chain: the certificate the manifest names is the one beside the disk, and
    # the disk's ESP comes first.
    der = subprocess.run(["openssl", "x509", "-in", str(image.certificate), "-outform", "DER"],
                         capture_output=True, check=True).stdout  # fmt: skip
    boot = manifest["boot"]
    assert boot["secure_boot_certificate_sha256"] == hashlib.sha256(der).hexdigest()
    assert "systemd-ukify" in boot["tools"]
    assert partition_offset(image.disk, "wire-esp") == 1 << 20
    assert any(w["file"].startswith("wire_mpc-") for w in manifest["wheels"])
    if manifest["profile"] == "production":  # where its bitcoind came from, and its hash
        source = manifest["bitcoind"]
        if "bitcoind_sha256" in source:  # given binaries: the hash of the one carried
            carried = sha256(image.directory / "tree" / "usr" / "bin" / "bitcoind")
            assert source["bitcoind_sha256"] == carried
        else:  # the official release: the pinned tarball's hash
            pin = (REPO / "image" / "bitcoind.pin").read_text()
            assert f"sha256={source['tarball_sha256']}" in pin
        print(f"image: bitcoind {source['version']} from {source['source']}")


def first_differences(left: Path, right: Path, limit: int = 20) -> list[str]:
    done = subprocess.run(["diff", "-rq", "--no-dereference", str(left), str(right)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if "special file" not in line][:limit]  # /dev nodes


@pytest.mark.timeout(1800)
def test_reproducible(image: Image, report: dict[str, Any]) -> None:
    again = image.directory.parent / (image.directory.name + "-again")
    started = time.monotonic()
    built = subprocess.run(
        [str(REPO / "image" / "build"), "--profile",
         json.loads((image.directory / "manifest.json").read_text())["profile"],
         "--no-xz", "--out", str(again)],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    report["second_build_seconds"] = round(time.monotonic() - started)
    first, second = sha256(image.disk), sha256(again / "disk.raw")
    print(f"\nreproducible: disk.raw {first} / {second} (second build "
          f"{report['second_build_seconds']} s)")  # fmt: skip
    if first == second:
        return
    parts = [name for name in ("root.squashfs", "root.verity", "vmlinuz", "initrd.img",
                               "cmdline", "manifest.json")
             if sha256(image.directory / name) != sha256(again / name)]  # fmt: skip
    files = first_differences(image.directory / "tree", again / "tree")
    pytest.fail(f"two builds of one commit differ: disk.raw; parts that differ: {parts}; "
                f"files that differ in the root tree:\n" + "\n".join(files))  # fmt: skip


def exposure(tree: Path, unit: str) -> float:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={tree}", "--no-pager", unit],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def test_units_are_sandboxed(image: Image, report: dict[str, Any]) -> None:
    tree = image.directory / "tree"
    # Every service of ours (a template's under an instance name), bitcoind if present.
    system = tree / "usr" / "lib" / "systemd" / "system"
    units = sorted(p.name.replace("@.service", "@x.service") for p in system.glob("wire-*.service"))
    units += [p.name for p in system.glob("bitcoind.service")]  # the production profile's
    scores = {u.removesuffix(".service"): exposure(tree, u) for u in units}
    report["systemd_analyze_security"] = scores
    print(f"\nsystemd-analyze security: {scores}")
    # What faces operators and peers, and bitcoind; the others run once at boot, as root.
    for unit in ("wire-mpcd", "wire-api", "wire-api-serial", "wire-api-line"):
        assert scores[unit] <= EXPOSURE_TARGET, unit
    assert scores.get("bitcoind", 0.0) <= EXPOSURE_TARGET


class Operator:
    """`mpc_operator` on the host, talking to the VM's API through its virtio-serial socket."""

    def __init__(self, vm: VM, home: Path) -> None:
        self.vm = vm
        self.home = home
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.secret = ""

    def run(self, *args: str) -> Any:
        command = [sys.executable, "-m", "api.mpc_operator", "--json",
                   "--socket", str(self.vm.api_socket),
                   "--session-file", str(self.home / "session.json"), *args]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              check=False, cwd=REPO)  # fmt: skip
        assert done.returncode == 0, f"mpc_operator {' '.join(args)}: {done.stderr.strip()}"
        return json.loads(done.stdout)

    def enrol_admin(self) -> None:
        password = self.home / "password"
        password.write_text("an admin of this appliance, for the test\n")
        password.chmod(0o600)
        answer = self.run("user", "create", "--username", "admin", "--role", "admin",
                          "--password-file", str(password))  # fmt: skip
        self.secret = parse_qs(urlsplit(answer["otpauth_uri"]).query)["secret"][0]
        self.run("login", "--username", "admin", "--password-file", str(password),
                 "--code", pyotp.TOTP(self.secret).now())  # fmt: skip


@pytest.mark.timeout(1200)
def test_boots_and_answers_status(
    image: Image, firmware: Path, report: dict[str, Any], tmp_path: Path
) -> None:
    me = NodeSite("node-1", 1, "10.0.2.15")
    other = NodeSite("node-2", 2, "10.0.2.16")
    production = json.loads((image.directory / "manifest.json").read_text())["profile"]
    sections = {"bitcoind": local_bitcoind()} if production == "production" else {}
    config = node_config("image-test", 2, me, [me, other], **sections)
    accel = accelerator(image.kernel)
    workdir = image.directory / "vms"
    # A server with one disk: the data partition goes into the boot disk's free space.
    vm = VM(image, workdir, "node-1", credentials(me, config), cpus=2, accel=accel,
            firmware=firmware, data_disk=False)  # fmt: skip
    vm.remove()
    vm.start()
    try:
        ready = vm.wait_for_api(within=900)
        report["boot_to_api_ready_seconds"] = round(ready)
        report["accelerator"] = accel
        print(f"\nboot: power-on to API ready over virtio-serial in {ready:.0f} s ({accel}, "
              "UEFI with Secure Boot enforcing)")  # fmt: skip
        console = vm.console_log.read_text(errors="replace")
        assert "secureboot: Secure boot enabled" in console
        assert "Kernel is locked down from EFI Secure Boot" in console
        operator = Operator(vm, tmp_path / "operator")
        operator.enrol_admin()
        status = operator.run("status")
        assert status["node_id"] == "node-1"
        if sections:  # the VM's own bitcoind answers: a new chain, in initial block download

            def in_initial_block_download() -> bool:
                return bool(operator.run("status")["bitcoin"]["sync"] == "initial-block-download")

            wait_until(in_initial_block_download, 300, "the VM's bitcoind answering", pause=3)
        key = operator.run("key-info")["identity_public_key"]
        console = vm.console_log.read_text(errors="replace")
        assert f"wire-mpc node node-1: identity public key {key}" in console
        checks = {c["check"]: c for c in operator.run("security-check")["items"]}
        assert checks["journal sealing"]["passed"], checks["journal sealing"]
        assert checks["hsm"]["passed"], checks["hsm"]
        assert checks["root read-only"]["passed"], checks["root read-only"]
        assert not checks["journal verification key"]["passed"]  # until an admin takes it
    finally:
        vm.stop()
        print(f"console log: {vm.console_log}")


REFUSED = "Error loading \\EFI\\Linux\\wire-mpc.efi: Access denied"


def in_boot_tools(work: Path, *command: str) -> None:
    """`command` among the boot tools (image/boot-tools), with `work` at /mnt."""
    done = subprocess.run(
        ["unshare", "--mount", "--fork", "sh", "-euc",
         'mount --bind "$0" "$1/mnt"; tools=$1; shift; exec chroot "$tools" "$@"',
         str(work), str(boot_tools()), *command],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def partition_offset(disk: Path, label: str) -> int:
    """Where the partition of GPT label `label` starts on `disk`, in bytes."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]  # fmt: skip
    (partition,) = [p for p in table["partitions"] if p.get("name") == label]
    return int(partition["start"]) * int(table.get("sectorsize", 512))


def with_uki(image: Image, uki: Path, where: Path) -> Image:
    """A copy of the image whose ESP carries `uki` in place of the signed one."""
    where.mkdir(parents=True, exist_ok=True)
    disk = where / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(image.disk), str(disk)], check=True)
    esp = partition_offset(disk, "wire-esp")
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{esp}", str(uki), "::/EFI/Linux/wire-mpc.efi"],
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=True)  # fmt: skip
    return Image(where)


def boot_chains_not_ours(image: Image, work: Path) -> dict[str, Path]:
    """The UKI with one byte of its command line changed; without its signature; and with
    another command line (a shell for init), signed by a key the firmware does not know."""
    work.mkdir(parents=True, exist_ok=True)
    signed = (image.directory / "wire-mpc.efi").read_bytes()
    at = signed.index(b"console=ttyS0")
    flipped = bytearray(signed)
    flipped[at + 12] ^= 0x01  # ttyS0 -> ttyS1
    (work / "flipped.efi").write_bytes(bytes(flipped))
    (work / "unsigned.efi").write_bytes(signed)
    in_boot_tools(work, "sbattach", "--remove", "/mnt/unsigned.efi")
    for name in ("vmlinuz", "initrd.img"):
        subprocess.run(["cp", str(image.directory / name), str(work / name)], check=True)
    (work / "cmdline").write_text(image.cmdline() + " init=/bin/sh\n")
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=not the operators' key/", "-keyout", str(work / "other.key"),
         "-out", str(work / "other.crt")],
        capture_output=True, check=True,
    )  # fmt: skip
    in_boot_tools(work, "ukify", "build", "--linux", "/mnt/vmlinuz", "--initrd",
                  "/mnt/initrd.img", "--cmdline", "@/mnt/cmdline",
                  "--secureboot-private-key", "/mnt/other.key",
                  "--secureboot-certificate", "/mnt/other.crt", "--signtool", "sbsign",
                  "--output", "/mnt/other-cmdline.efi")  # fmt: skip
    return {name: work / f"{name}.efi" for name in ("flipped", "unsigned", "other-cmdline")}


@pytest.mark.timeout(1200)
def test_the_firmware_refuses_a_boot_chain_not_ours(
    image: Image, firmware: Path, report: dict[str, Any]
) -> None:
    """Secure Boot enforcing with only the operators' certificate enrolled: systemd-boot
    (signed) starts, and the firmware refuses to load any UKI but the one signed."""
    work = image.directory / "not-ours"
    me = NodeSite("node-1", 1, "10.0.2.15")
    config = node_config("image-test", 2, me, [me, NodeSite("node-2", 2, "10.0.2.16")])
    refused: dict[str, int] = {}
    for name, uki in boot_chains_not_ours(image, work / "ukis").items():
        variant = with_uki(image, uki, work / name)
        vm = VM(variant, work / name / "vms", "node-1", credentials(me, config),
                accel=accelerator(image.kernel), firmware=firmware)  # fmt: skip
        vm.remove()
        vm.start()
        try:
            seen = vm.wait_for_console(REFUSED, within=300)
            assert seen is not None, f"{name}: not refused; console:\n{vm.console()}"
            refused[name] = round(seen)
            assert "Linux version" not in vm.console_log.read_text(errors="replace"), name
        finally:
            vm.stop()
    report["secure_boot_refusal_seconds"] = refused
    print(f"\nSecure Boot: refused {sorted(refused)} (seconds after power-on: {refused})")


@pytest.mark.timeout(900)
def test_a_flipped_byte_in_the_root_stops_the_boot(
    image: Image, firmware: Path, report: dict[str, Any]
) -> None:
    """dm-verity: one changed byte of the root partition, and the kernel that the signed UKI
    starts panics when it reads that block (the superblock's, at mount), before anything of
    the root runs."""
    tampered = image.directory / "tampered"
    tampered.mkdir(exist_ok=True)
    disk = tampered / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(image.disk), str(disk)], check=True)
    offset = partition_offset(disk, "wire-root") + 100
    with disk.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    me = NodeSite("node-1", 1, "10.0.2.15")
    config = node_config("image-test", 2, me, [me, NodeSite("node-2", 2, "10.0.2.16")])
    vm = VM(Image(tampered), tampered / "vms", "node-1", credentials(me, config),
            accel=accelerator(image.kernel), firmware=firmware)  # fmt: skip
    vm.remove()
    vm.start()
    try:
        seen = vm.wait_for_console("dm-verity device corrupted", within=600)
        assert seen is not None, f"no verity panic; console:\n{vm.console()}"
        report["tampered_root_panic_seconds"] = round(seen)
        print(f"\ntampered root: kernel panic (dm-verity) {seen:.0f} s after power-on")
        assert READY_LINE not in vm.console_log.read_text(errors="replace")
    finally:
        vm.stop()


def without_bitcoin(environment: Any) -> dict[str, str]:
    """The environment without the BITCOIN_* settings `make image-test` runs with."""
    return {k: v for k, v in environment.items() if not k.startswith("BITCOIN_")}


def test_given_bitcoin_binaries_need_the_hash_they_were_given_with(tmp_path: Path) -> None:
    given = tmp_path / "bin"
    given.mkdir()
    (given / "bitcoind").write_bytes(b"not the bitcoind the hash names")
    (given / "bitcoin-cli").write_bytes(b"")
    for env, complaint in (
        ({}, "needs BITCOIN_SHA256"),
        ({"BITCOIN_SHA256": "00" * 32}, "refused"),
    ):
        build = [str(REPO / "image" / "build"), "--profile", "production"]
        done = subprocess.run(
            [*build, "--out", str(tmp_path / "out")],
            env={**without_bitcoin(os.environ), "BITCOIN_BINARIES": str(given), **env},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 1
        assert complaint in done.stderr
        assert not (tmp_path / "out" / "disk.raw").exists()


def test_the_production_profile_refuses_any_but_the_pinned_bitcoin_core(tmp_path: Path) -> None:
    fake = tmp_path / "bitcoin-28.1-x86_64-linux-gnu.tar.gz"
    fake.write_bytes(b"not Bitcoin Core")
    done = subprocess.run(
        [str(REPO / "image" / "build"), "--profile", "production", "--out", str(tmp_path / "out")],
        env={**without_bitcoin(os.environ), "BITCOIN_TARBALL": str(fake)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not the pinned" in done.stderr
    assert "refused" in done.stderr
    assert not (tmp_path / "out" / "disk.raw").exists()
