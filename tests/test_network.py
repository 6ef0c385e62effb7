"""Static network addresses: `network.static` of the configuration, read strictly, and the
networkd files `appliance.network` writes from it."""

from __future__ import annotations

import copy
import json
import stat
from ipaddress import ip_address, ip_interface
from pathlib import Path
from typing import Any

import pytest

from appliance import network
from appliance.config import ConfigError, StaticAddress, parse_config
from qemu.cluster import Cluster
from qemu.vm import Image
from tests.engine.test_config import sample

ETH0 = {"interface": "eth0", "address": "10.0.0.12/24", "gateway": "10.0.0.1",
        "dns": ["10.0.0.1", "9.9.9.9"]}  # fmt: skip


def document(*static: dict[str, Any]) -> dict[str, Any]:
    """The sample config of node-2 with these `network.static` entries."""
    config = sample()
    config["network"] = {"static": copy.deepcopy(list(static))}
    return config


# -- the configuration ---------------------------------------------------------------------
def test_a_good_network_section() -> None:
    v6 = {"interface": "eth1", "address": "2001:db8::12/64"}
    config = parse_config(document(ETH0, v6))
    assert config.network == (
        StaticAddress("eth0", ip_interface("10.0.0.12/24"), ip_address("10.0.0.1"),
                      (ip_address("10.0.0.1"), ip_address("9.9.9.9"))),
        StaticAddress("eth1", ip_interface("2001:db8::12/64")),
    )  # fmt: skip


def test_ipv6_with_gateway_and_dns() -> None:
    entry = {"interface": "eth0", "address": "2001:db8:0:1::12/64",
             "gateway": "2001:db8:0:1::1", "dns": ["2001:db8::53"]}  # fmt: skip
    (address,) = parse_config(document(entry)).network
    assert address.address == ip_interface("2001:db8:0:1::12/64")
    assert address.gateway == ip_address("2001:db8:0:1::1")
    assert address.dns == (ip_address("2001:db8::53"),)


def test_without_the_section_there_are_no_static_addresses() -> None:
    assert parse_config(sample()).network == ()
    assert parse_config(document()).network == ()


def entry(**changes: Any) -> dict[str, Any]:
    """ETH0 with fields changed (None: removed)."""
    changed = {**ETH0, **changes}
    return {k: v for k, v in changed.items() if v is not None}


@pytest.mark.parametrize(
    ("network", "error"),
    [
        ("static", "network: must be an object"),
        ({"dhcp": True}, "network.dhcp: unknown field"),
        ({"static": {}}, "network.static: must be a list of at most 8 items"),
        ({"static": [entry(interface=f"eth{i}") for i in range(9)]},
         "network.static: must be a list of at most 8 items"),
        ({"static": ["eth0"]}, r"network.static\[0\]: must be an object"),
        ({"static": [entry(mtu=1500)]}, r"network.static\[0\].mtu: unknown field"),
        ({"static": [entry(interface=None)]}, r"network.static\[0\].interface: missing"),
        ({"static": [entry(interface="eth*")]},
         r"network.static\[0\].interface: 'eth\*' must be an interface name"),
        ({"static": [entry(interface="en p1")]}, r"network.static\[0\].interface: 'en p1'"),
        ({"static": [entry(interface="..")]}, r"network.static\[0\].interface: '\.\.'"),
        ({"static": [entry(interface="a" * 16)]},
         r"network.static\[0\].interface: must be a non-empty string of at most 15"),
        ({"static": [entry(interface="")]}, r"network.static\[0\].interface: must be a non-empty"),
        ({"static": [entry(), entry(interface="eth1", address=None)]},
         r"network.static\[1\].address: missing"),
        ({"static": [entry(address="10.0.0.12", gateway=None)]},
         r"network.static\[0\].address: '10.0.0.12' needs its prefix length"),
        ({"static": [entry(address="10.0.0.300/24")]},
         r"network.static\[0\].address: '10.0.0.300/24' is not an IP address with a prefix"),
        ({"static": [entry(address="10.0.0.12/33")]}, r"network.static\[0\].address: "),
        ({"static": [entry(address=1)]}, r"network.static\[0\].address: must be a non-empty"),
        ({"static": [entry(address="10.0.0.0/24")]},
         r"network.static\[0\].address: '10.0.0.0/24' is the network's own"),
        ({"static": [entry(address="10.0.0.255/24")]}, "or its broadcast address"),
        ({"static": [entry(address="224.0.0.5/24", gateway=None)]},
         r"network.static\[0\].address: '224.0.0.5/24' is not a unicast address"),
        ({"static": [entry(address="127.0.0.2/8", gateway=None)]}, "is not a unicast address"),
        ({"static": [{"interface": "eth0", "address": "fe80::2%eth0/64"}]},
         r"network.static\[0\].address: 'fe80::2%eth0/64' has a zone"),
        ({"static": [entry(gateway="router")]},
         r"network.static\[0\].gateway: 'router' is not an IP address"),
        ({"static": [entry(gateway="10.0.1.1")]},
         r"network.static\[0\].gateway: 10.0.1.1 is not another host of the address's network "
         r"10.0.0.0/24"),
        ({"static": [entry(gateway="10.0.0.12")]},
         r"network.static\[0\].gateway: 10.0.0.12 is not another host"),
        ({"static": [entry(gateway="2001:db8::1")]},
         r"network.static\[0\].gateway: 2001:db8::1 is IPv6, the address IPv4"),
        ({"static": [entry(dns="10.0.0.1")]}, r"network.static\[0\].dns: must be a list"),
        ({"static": [entry(dns=["10.0.0.1"] * 5)]},
         r"network.static\[0\].dns: must be a list of at most 4 items"),
        ({"static": [entry(dns=["10.0.0.1", "resolver"])]},
         r"network.static\[0\].dns: 'resolver' is not an IP address"),
        ({"static": [entry(dns=["224.0.0.251"])]},
         r"network.static\[0\].dns: '224.0.0.251' is not a unicast address"),
        ({"static": [entry(), entry(address="10.0.1.12/24", gateway=None)]},
         r"network.static\[1\].interface: 'eth0' already has an address in network.static\[0\]"),
    ],
)  # fmt: skip
def test_errors_name_the_field(network: Any, error: str) -> None:
    config = sample()
    config["network"] = network
    with pytest.raises(ConfigError, match=error):
        parse_config(config)


# -- the networkd files --------------------------------------------------------------------
def test_render_a_static_ipv4_address() -> None:
    (address,) = parse_config(document(ETH0)).network
    assert network.render(address) == (
        "# Written by wire-network.service from network.static of the node configuration.\n"
        "[Match]\n"
        "Name=eth0\n"
        "\n"
        "[Link]\n"
        "RequiredForOnline=yes\n"
        "\n"
        "[Network]\n"
        "Address=10.0.0.12/24\n"
        "Gateway=10.0.0.1\n"
        "DNS=10.0.0.1\n"
        "DNS=9.9.9.9\n"
        "DHCP=no\n"
        "LinkLocalAddressing=no\n"
        "IPv6AcceptRA=no\n"
    )


def test_render_without_gateway_or_dns() -> None:
    address = StaticAddress("eth3", ip_interface("192.0.2.7/28"))
    text = network.render(address)
    assert "Name=eth3\n" in text
    assert "Address=192.0.2.7/28\n" in text
    assert "Gateway=" not in text
    assert "DNS=" not in text


def test_an_ipv6_address_keeps_its_link_local_address() -> None:
    """Neighbour discovery needs the link-local address; router advertisements stay off."""
    text = network.render(StaticAddress("eth0", ip_interface("2001:db8::12/64")))
    assert "Address=2001:db8::12/64\n" in text
    assert "LinkLocalAddressing=ipv6\n" in text
    assert "IPv6AcceptRA=no\n" in text


# -- the command ---------------------------------------------------------------------------
def config_file(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_writes_one_file_per_interface_and_removes_stale_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run" / "systemd" / "network"  # made if missing
    v6 = {"interface": "eth1", "address": "2001:db8::12/64"}
    path = config_file(tmp_path, document(ETH0, v6))
    out.mkdir(parents=True)
    (out / "10-wire-eth7.network").write_text("stale")
    (out / "90-eth2.network").write_text("systemd-network-generator's")
    assert network.main(["--config", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "10-wire-eth0.network", "10-wire-eth1.network", "90-eth2.network",
    ]  # fmt: skip
    config = parse_config(document(ETH0, v6))
    for address in config.network:
        written = out / f"10-wire-{address.interface}.network"
        assert written.read_text() == network.render(address)
        assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert (out / "90-eth2.network").read_text() == "systemd-network-generator's"
    assert "eth0 10.0.0.12/24" in capsys.readouterr().out


def test_creates_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "network"
    assert network.main(["--config", str(config_file(tmp_path, document(ETH0))),
                         "--out", str(out)]) == 0  # fmt: skip
    assert [p.name for p in out.iterdir()] == ["10-wire-eth0.network"]


def test_no_static_addresses_writes_nothing_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "network"
    out.mkdir()
    (out / "10-wire-eth0.network").write_text("stale")
    assert network.main(["--config", str(config_file(tmp_path, sample())), "--out", str(out)]) == 0
    assert list(out.iterdir()) == []
    assert "every wired interface asks DHCP" in capsys.readouterr().out


def test_a_bad_config_is_exit_1_naming_the_field_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "network"
    out.mkdir()
    (out / "10-wire-eth0.network").write_text("from before")
    path = config_file(tmp_path, document(entry(address="10.0.0.12")))
    assert network.main(["--config", str(path), "--out", str(out)]) == 1
    assert "network.static[0].address: '10.0.0.12' needs its prefix length" in (
        capsys.readouterr().err
    )
    assert [p.read_text() for p in out.iterdir()] == ["from before"]


def test_a_missing_config_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert network.main(["--config", str(tmp_path / "absent.json"),
                         "--out", str(tmp_path / "network")]) == 1  # fmt: skip
    assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "network").exists()


def test_an_unwritable_directory_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "network"
    out.write_text("a file, not a directory")
    assert network.main(["--config", str(config_file(tmp_path, document(ETH0))),
                         "--out", str(out)]) == 3  # fmt: skip
    assert f"cannot write {out}" in capsys.readouterr().err


def test_a_wrong_command_line_is_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        network.main(["--config", str(tmp_path / "config.json")])
    assert caught.value.code == 2


# -- the QEMU cluster ----------------------------------------------------------------------
def test_the_qemu_cluster_gives_each_node_its_mesh_address_by_configuration(
    tmp_path: Path,
) -> None:
    cluster = Cluster(Image(tmp_path), tmp_path, miner="127.0.0.1:18444")
    for node in cluster.nodes:
        vm = cluster.vm(node)
        assert vm.credentials["wire.data-disk"] == b"/dev/vdb"
        config = parse_config(json.loads(vm.credentials["wire.config"]))
        assert config.network == (StaticAddress("eth0", ip_interface(f"{node.address}/24")),)
        assert config.me.address.startswith(f"{node.address}:")
        # Its own bitcoind, on its loopback, peered with the miner as the VM reaches it.
        assert config.bitcoin is not None
        assert config.bitcoin.rpc_url == "http://127.0.0.1:18443"
        assert config.bitcoin.peers == ("10.0.2.2:18444",)
