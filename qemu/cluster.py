"""Three appliance VMs of one image, run as three operator organisations run them: for the
QEMU cluster tests and for trying the appliance by hand (`make cluster-up`).

Everything lives in a private network namespace whose loopback carries multicast (`qemu/netns`
sets it up and runs the caller in it), so nothing touches the host's network:

- the VMs' own network is one QEMU multicast socket there (10.0.0.0/24; each node's static
  address on eth0 comes from `network.static` of its configuration), the mesh runs on it,
  and each node's firewall admits the mesh port from the other nodes' addresses only;
- each VM's second NIC is QEMU user-mode networking, through which the VM reaches the
  namespace's loopback as 10.0.2.2: the miner (a bitcoind with a wallet, which funds and
  mines) and the simulated Wire system listen there, on loopback only. Each VM runs its own
  bitcoind (the production image's), which keeps a P2P connection to the miner; its engine
  talks to that bitcoind alone, over the VM's loopback.

Each VM boots as a server does: UEFI with Secure Boot enforcing and only the image's
certificate enrolled (`qemu.firmware`), the signed UKI from the image's ESP.

Bringing a cluster up is the runbook's preparation phase: every node boots once with a
configuration in which no identity key is known yet, its HSM makes its identity key and its
console shows it; the harness collects the three keys, writes the final configuration of
every node and boots them again. The data disks keep what the first boot made.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.firmware import boot_tools, enrolled_variables
from qemu.site import NodeSite, credentials, local_bitcoind, node_config
from qemu.vm import VM, Image

GATEWAY = "10.0.2.2"  # the namespace's loopback, as a VM's user-mode NIC sees it
MULTICAST = "230.0.0.1"
IDENTITY_LINE = re.compile(r"wire-mpc node (\S+): identity public key ([0-9a-f]{64})")


def reachable(url: str) -> str:
    """A loopback URL of the host side, as a VM reaches it."""
    return url.replace("127.0.0.1", GATEWAY)


@dataclass
class Cluster:
    image: Image
    workdir: Path
    miner: str  # the miner's P2P address on the namespace's loopback (host:port)
    wire: dict[str, Any] = field(default_factory=dict)
    parties: int = 3
    threshold: int = 2
    accel: str = "tcg"
    cluster_id: str = "wire-qemu"
    mcast_port: int = 23456
    nodes: list[NodeSite] = field(default_factory=list)
    vms: dict[str, VM] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [NodeSite(f"node-{i}", i, f"10.0.0.{10 + i}")
                          for i in range(1, self.parties + 1)]  # fmt: skip

    def config(self, node: NodeSite) -> dict[str, Any]:
        chain = local_bitcoind(peers=[reachable(self.miner)])
        wire = {key: reachable(value) if isinstance(value, str) else value
                for key, value in self.wire.items()}  # fmt: skip
        # eth0 (the multicast socket) is static; eth1 (user-mode) asks QEMU's DHCP.
        network = {"static": [{"interface": "eth0", "address": f"{node.address}/24"}]}
        return node_config(self.cluster_id, self.threshold, node, self.nodes,
                           bitcoind=chain, wire=wire, network=network,
                           ceremony={"round_timeout_seconds": 120})  # fmt: skip

    def vm(self, node: NodeSite) -> VM:
        netdevs = (f"socket,id=n0,mcast={MULTICAST}:{self.mcast_port},localaddr=127.0.0.1",
                   "user,id=n1")  # fmt: skip
        return VM(
            self.image, self.workdir, node.node_id, credentials(node, self.config(node)),
            netdevs=netdevs, index=node.identifier, accel=self.accel, firmware=self.firmware,
        )  # fmt: skip

    @property
    def firmware(self) -> Path:
        """The UEFI variables every VM starts from: the image's certificate enrolled."""
        return self.workdir / "efivars-enrolled.fd"

    # -- life ----------------------------------------------------------------------------
    def up(self, within: float = 1200.0) -> None:
        """Preparation (first boot: identity keys), then every node up with its final
        configuration and its API answering; raises with the console of a node that did not
        come up."""
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        enrolled_variables(self.image.certificate, self.firmware, boot_tools())
        self.first_boot(within)
        self.timings["first_boot_s"] = round(time.monotonic() - started)
        mark = time.monotonic()
        self.start()
        for vm in self.vms.values():
            vm.wait_for_api(within)
        self.timings["boot_to_api_s"] = round(time.monotonic() - mark)
        self.save()

    def first_boot(self, within: float) -> None:
        for node in self.nodes:
            vm = self.vm(node)
            vm.remove()
            self.vms[node.node_id] = vm
            vm.start()
        for node in self.nodes:
            vm = self.vms[node.node_id]
            if vm.wait_for_console("identity public key", within) is None:
                raise RuntimeError(f"{node.node_id} did not provision its HSM; console:\n"
                                   f"{vm.console()}")  # fmt: skip
            found = IDENTITY_LINE.findall(vm.console_log.read_text(errors="replace"))
            node.identity_public = dict(found)[node.node_id]
        for vm in self.vms.values():
            vm.power_down()

    def start(self) -> None:
        for node in self.nodes:
            vm = self.vm(node)
            self.vms[node.node_id] = vm
            vm.start()

    def stop(self) -> None:
        for vm in self.vms.values():
            vm.stop()

    def save(self) -> None:
        """Where everything is, for `make cluster-up`'s reader and `make cluster-down`."""
        state = {
            "nodes": {
                name: {"api_socket": str(vm.api_socket), "console_log": str(vm.console_log),
                       "qmp_socket": str(vm.qmp_socket), "pid": vm.process.pid if vm.process
                       else None}
                for name, vm in self.vms.items()
            },
            "miner_p2p": self.miner,
            "timings": self.timings,
        }  # fmt: skip
        (self.workdir / "cluster.json").write_text(json.dumps(state, indent=1) + "\n")
