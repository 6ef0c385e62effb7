"""One appliance VM under QEMU, booted the way an operator's server boots the image.

- UEFI boot under Secure Boot, as a server boots: OVMF with the image's certificate
  enrolled (`firmware`, from `qemu.firmware`), which starts the signed systemd-boot and UKI
  from the disk's ESP; nothing is handed in but the SMBIOS credentials.
- The image's disk, read-only (VMs share it), and the VM's own data disk (a sparse file,
  named by the `wire.data-disk` credential; the first boot partitions and formats it). Or,
  as a server with one disk (`data_disk=False`), the image under a copy-on-write overlay of
  its own, grown, whose free space the first boot gives to the data partition.
- Per-site configuration as SMBIOS type 11 credentials (`io.systemd.credential.binary:`).
- The control API on the virtio-serial port `wire.api`: a Unix socket on the host. The port
  is one byte stream, so one client at a time (see `api.serial_bridge`).
- The same API on a second UART, ttyS1 (named by the `wire.api-line` credential), as on a
  server's serial port: a pseudo-terminal on the host (`line()`), as a laptop's USB serial
  adapter would be (see `api.line`).
- The serial console (ttyS0) in `console.log` and a QMP socket, kept per VM.

KVM guests hang on these machines, so `accelerator()` probes KVM with a short boot and
falls back to TCG.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.mpc_operator import UnixConnection
from qemu.firmware import OVMF_CODE

READY_LINE = "bridging /dev/virtio-ports/wire.api"


@dataclass(frozen=True)
class Image:
    """The artifacts of `image/build`."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def certificate(self) -> Path:
        """The certificate its boot chain is signed with, to enrol in the firmware."""
        return self.directory / "secure-boot.crt"

    def cmdline(self) -> str:
        return (self.directory / "cmdline").read_text().strip()

    def missing(self) -> list[str]:
        paths = (self.disk, self.kernel, self.certificate, self.directory / "cmdline")
        return [str(p) for p in paths if not p.exists()]

    @classmethod
    def under_test(cls) -> Image:
        """The image the tests boot: `$WIRE_IMAGE`, complete (the Makefile builds it)."""
        where = os.environ.get("WIRE_IMAGE")
        if not where:
            raise RuntimeError("WIRE_IMAGE is not set: run these tests through the Makefile")
        image = cls(Path(where).resolve())
        if image.missing():
            raise RuntimeError(f"the image is incomplete, missing: {', '.join(image.missing())}")
        return image


def accelerator(kernel: Path | None = None) -> str:
    """`kvm` if a KVM guest of `kernel` prints its first kernel line on the serial port
    within 20 s, else `tcg` (on these machines KVM guests fail or hang). WIRE_QEMU_ACCEL
    overrides the probe."""
    if os.environ.get("WIRE_QEMU_ACCEL"):
        return os.environ["WIRE_QEMU_ACCEL"]
    if kernel is None or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        probe = subprocess.run(
            ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
             "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
             "-append", "console=ttyS0 panic=-1"],
            capture_output=True, timeout=20, check=False,
        )  # fmt: skip
        output = probe.stdout
    except subprocess.TimeoutExpired as hung:
        output = hung.stdout or b""
    return "kvm" if b"Linux version" in output else "tcg"


class VM:
    def __init__(
        self,
        image: Image,
        workdir: Path,
        name: str,
        credentials: dict[str, bytes],
        *,
        memory_mb: int = 1536,
        cpus: int = 1,
        netdevs: tuple[str, ...] = ("user,id=n0",),
        data_disk_gb: int = 4,
        accel: str = "tcg",
        index: int = 1,
        firmware: Path,
        data_disk: bool = True,
    ) -> None:
        self.image = image
        self.dir = workdir / name
        self.name = name
        self.credentials = credentials
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.netdevs = netdevs
        self.data_disk_gb = data_disk_gb
        self.accel = accel
        self.index = index  # distinct per VM of a cluster: it makes the MAC addresses
        self.firmware = firmware  # the UEFI variables a new VM starts from
        self.separate_data_disk = data_disk
        self.credentials = {**credentials, "wire.api-line": b"ttyS1"}
        if data_disk:
            self.credentials["wire.data-disk"] = b"/dev/vdb"
        self.uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"wire-mpc-vm:{workdir}:{name}"))
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def api_socket(self) -> Path:
        return self.dir / "api.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def data_disk(self) -> Path:
        return self.dir / "data.raw"

    @property
    def overlay(self) -> Path:
        """A one-disk VM's disk: the image under a copy-on-write overlay, grown."""
        return self.dir / "disk.qcow2"

    @property
    def variables(self) -> Path:
        return self.dir / "efivars.fd"

    def _disks(self) -> list[str]:
        if self.separate_data_disk:
            return ["-drive", f"file={self.image.disk},if=virtio,format=raw,readonly=on",
                    "-drive", f"file={self.data_disk},if=virtio,format=raw"]  # fmt: skip
        return ["-drive", f"file={self.overlay},if=virtio,format=qcow2"]

    def argv(self) -> list[str]:
        argv = [
            "qemu-system-x86_64", "-name", self.name, "-accel", self.accel,
            "-cpu", "max" if self.accel == "tcg" else "host",
            "-m", str(self.memory_mb), "-smp", str(self.cpus), "-uuid", self.uuid,
            "-nodefaults", "-nographic", "-no-reboot",
            "-serial", f"file:{self.console_log}",
            "-chardev", "pty,id=line", "-serial", "chardev:line",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.variables}",
            *self._disks(),
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=api,path={self.api_socket},server=on,wait=off",
            "-device", "virtserialport,chardev=api,name=wire.api",
            "-device", "virtio-rng-pci",
        ]  # fmt: skip
        for i, netdev in enumerate(self.netdevs):
            mac = f"52:54:00:00:{self.index:02x}:{i:02x}"
            argv += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=n{i},mac={mac}"]
        for name, value in sorted(self.credentials.items()):
            path = self.dir / f"credential-{name}"
            encoded = base64.b64encode(value).decode()
            path.write_text(f"io.systemd.credential.binary:{name}={encoded}")
            path.chmod(0o600)
            argv += ["-smbios", f"type=11,path={path}"]
        return argv

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.variables.exists():
            shutil.copy(self.firmware, self.variables)
        if self.separate_data_disk:
            if not self.data_disk.exists():
                with self.data_disk.open("wb") as disk:
                    disk.truncate(self.data_disk_gb << 30)
        elif not self.overlay.exists():
            size = self.image.disk.stat().st_size + (self.data_disk_gb << 30)
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image.disk),
                 "-F", "raw", str(self.overlay), str(size)],
                check=True, timeout=60,
            )  # fmt: skip
        for stale in (self.api_socket, self.qmp_socket):
            stale.unlink(missing_ok=True)
        log = (self.dir / "qemu.log").open("ab")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.argv(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def console(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_console(self, needle: str, within: float) -> float | None:
        """Seconds from power-on until the console shows `needle`, or None (bounded wait)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if needle in self.console_log.read_text(errors="replace"):
                    return time.monotonic() - self.started_at
            except OSError:
                pass
            if not self.running():
                return None
            time.sleep(1)
        return None

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                timeout: float = 120.0) -> tuple[int, Any]:  # fmt: skip
        """One HTTP request to the node's API through its virtio-serial port."""
        connection = UnixConnection(str(self.api_socket), timeout)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        payload = None if body is None else json.dumps(body).encode()
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def wait_for_api(self, within: float) -> float:
        """Seconds from power-on until `GET /v1/health` answers through the serial port that
        the API reaches the engine; raises with the console's tail if it does not within
        `within` seconds."""
        deadline = self.started_at + within
        if self.wait_for_console(READY_LINE, max(0.0, deadline - time.monotonic())) is None:
            raise RuntimeError(f"{self.name}: the API's serial bridge did not start within "
                               f"{within:.0f} s; console:\n{self.console()}")  # fmt: skip
        last: Any = None
        while time.monotonic() < deadline and self.running():
            try:
                status, last = self.request("GET", "/v1/health", timeout=30)
                if status == 200 and isinstance(last, dict) and last.get("engine"):
                    return time.monotonic() - self.started_at
            except OSError as exc:
                last = exc
            time.sleep(2)
        raise RuntimeError(f"{self.name}: API not ready within {within:.0f} s (last answer: "
                           f"{last!r}); console:\n{self.console()}")  # fmt: skip

    def qmp(self, command: str) -> Any:
        """One QMP command (e.g. `quit`: power off at once, no shutdown); its answer (None if
        the VM went before it answered)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_socket))
            reader = s.makefile("rb")
            reader.readline()  # greeting
            s.sendall(b'{"execute": "qmp_capabilities"}\n')
            reader.readline()
            s.sendall(json.dumps({"execute": command}).encode() + b"\n")
            with contextlib.suppress(OSError):
                while line := reader.readline():
                    message = json.loads(line)
                    if "error" in message:
                        raise RuntimeError(f"{self.name}: QMP {command}: {message['error']}")
                    if "return" in message:
                        return message["return"]
            return None

    def line(self) -> str:
        """The host's end of the VM's second UART (ttyS1; see `credentials`): a
        pseudo-terminal, as a laptop's USB serial adapter on a server's serial port."""
        for chardev in self.qmp("query-chardev"):
            if chardev["label"] == "line" and chardev["filename"].startswith("pty:"):
                return str(chardev["filename"].removeprefix("pty:"))
        raise RuntimeError(f"{self.name}: QEMU has no pseudo-terminal for the UART")

    def power_down(self, within: float = 120.0) -> None:
        """A clean shutdown (ACPI power button), or power off if it does not end in time."""
        if self.process is None or not self.running():
            return
        with contextlib.suppress(OSError):
            self.qmp("system_powerdown")
        try:
            self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.stop()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.running():
            try:
                self.qmp("quit")
            except OSError:
                self.process.kill()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
