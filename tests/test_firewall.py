"""The nftables ruleset rendered from a node's configuration, and the command that loads it.

The command is tested with nft replaced (loading a ruleset here would change the host's
firewall); the rendered rulesets are checked by the real `nft -c` when it is installed.
Under CI its absence fails the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance import firewall
from appliance.config import NodeConfig, parse_config
from appliance.firewall import FirewallError, deny_all, render
from tests.engine.test_config import sample

BITCOIND = {
    "network": "signet",
    "rpc_url": "http://127.0.0.1:38332",
    "cookie_file": "/var/lib/bitcoind/signet/.cookie",
    "zmq_block": "tcp://127.0.0.1:28332",
}


def document(**changes: Any) -> dict[str, Any]:
    """The sample config of node-2 (peers 10.0.0.1 and 10.0.0.3), with a bitcoind section."""
    config = sample()
    config["bitcoind"] = dict(BITCOIND)
    config.update(changes)
    return config


def node(**changes: Any) -> NodeConfig:
    return parse_config(document(**changes))


def with_address(config: dict[str, Any], index: int, address: str) -> dict[str, Any]:
    config["parties"][index]["address"] = address
    return config


def set_elements(ruleset: str, name: str) -> list[str]:
    block = re.search(rf"set {name} \{{\n(.*?)\n\t\}}", ruleset, re.S)
    assert block is not None, f"no set {name}"
    elements = re.search(r"elements = \{ (.*) \}", block.group(1))
    return elements.group(1).split(", ") if elements else []


def test_peers_fill_the_sets_and_this_node_is_not_in_them() -> None:
    ruleset = render(node(), local_bitcoind=False)
    assert ruleset.startswith("flush ruleset\n")
    assert ruleset.count("table inet wire {") == 1
    assert "type ipv4_addr" in ruleset
    assert "type ipv6_addr" in ruleset
    assert set_elements(ruleset, "mesh_peers_v4") == ["10.0.0.1", "10.0.0.3"]
    assert set_elements(ruleset, "mesh_peers_v6") == []
    assert "10.0.0.2" not in ruleset


def test_the_mesh_port_is_the_listen_port_and_only_for_peers() -> None:
    ruleset = render(node(mesh={"listen": "0.0.0.0:7400"}), local_bitcoind=False)
    assert "tcp dport 7400 ip saddr @mesh_peers_v4 accept" in ruleset
    assert "tcp dport 7400 ip6 saddr @mesh_peers_v6 accept" in ruleset
    assert "50051" not in ruleset  # the peers' own ports do not matter
    assert re.findall(r"tcp dport 7400 .*accept", ruleset) == [
        "tcp dport 7400 ip saddr @mesh_peers_v4 accept",
        "tcp dport 7400 ip6 saddr @mesh_peers_v6 accept",
    ]


def test_deny_by_default() -> None:
    ruleset = render(node(), local_bitcoind=False)
    assert "hook input priority filter; policy drop;" in ruleset
    assert "hook forward priority filter; policy drop;" in ruleset
    assert "hook output priority filter; policy accept;" in ruleset
    assert "ct state invalid drop" in ruleset
    assert "ct state established,related accept" in ruleset
    assert 'iif "lo" accept' in ruleset
    assert "icmp type echo-request limit rate" in ruleset
    assert "icmpv6 type echo-request limit rate" in ruleset
    assert "nd-neighbor-solicit" in ruleset
    assert "nd-router-advert" in ruleset


@pytest.mark.parametrize(
    ("network", "port"),
    [("mainnet", 8333), ("testnet", 18333), ("signet", 38333), ("regtest", 18444)],
)
def test_the_p2p_port_only_with_a_local_bitcoind(network: str, port: int) -> None:
    config = node(bitcoind=dict(BITCOIND, network=network))
    assert f"tcp dport {port} accept" in render(config, local_bitcoind=True)
    without = render(config, local_bitcoind=False)
    assert not re.search(r"tcp dport \d+ accept", without)
    assert str(port) not in without


def test_a_local_bitcoind_needs_its_network() -> None:
    config = sample()  # no bitcoind section
    assert "tcp dport 8333" not in render(parse_config(config), local_bitcoind=False)
    with pytest.raises(FirewallError, match="bitcoind"):
        render(parse_config(config), local_bitcoind=True)


def test_a_host_name_peer_is_refused_by_party() -> None:
    config = parse_config(with_address(document(node_id="node-1"), 1, "peer.example:50051"))
    with pytest.raises(FirewallError) as caught:
        render(config, local_bitcoind=False)
    assert str(caught.value) == (
        "parties[node-2].address: 'peer.example' is a host name; the firewall needs an IP address"
    )


def test_this_nodes_own_host_name_does_not_matter() -> None:
    config = parse_config(with_address(document(), 1, "me.example:50051"))
    assert set_elements(render(config, local_bitcoind=False), "mesh_peers_v4") == [
        "10.0.0.1",
        "10.0.0.3",
    ]


def test_an_ipv6_peer_goes_to_the_v6_set() -> None:
    config = parse_config(with_address(document(), 2, "[fd00::3]:50051"))
    ruleset = render(config, local_bitcoind=False)
    assert set_elements(ruleset, "mesh_peers_v4") == ["10.0.0.1"]
    assert set_elements(ruleset, "mesh_peers_v6") == ["fd00::3"]


def test_an_ipv6_peer_with_a_zone_is_refused() -> None:
    config = parse_config(with_address(document(), 0, "[fe80::1%eth0]:50051"))
    with pytest.raises(FirewallError, match=r"parties\[node-1\]\.address"):
        render(config, local_bitcoind=False)


def test_peers_on_one_host_are_listed_once() -> None:
    config = parse_config(with_address(document(), 2, "10.0.0.1:50052"))
    assert set_elements(render(config, local_bitcoind=False), "mesh_peers_v4") == ["10.0.0.1"]


def test_deny_all_is_loopback_only() -> None:
    ruleset = deny_all()
    assert ruleset.startswith("flush ruleset\n")
    assert ruleset.count("policy drop;") == 3
    assert re.findall(r"^\t\t(?!type)(.+)$", ruleset, re.M) == [
        'iif "lo" accept',
        'oif "lo" accept',
    ]


# -- nft itself ---------------------------------------------------------------------------


def nft_check(ruleset: str) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft")
    if nft is None:
        message = "nft is not installed; the rendered rulesets were not checked"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [nft, "-c", "-f", "-"], input=ruleset, text=True, capture_output=True, check=False
    )
    if "Operation not permitted" in done.stderr and os.environ.get("CI") != "true":
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    return done


@pytest.mark.parametrize(
    "ruleset",
    [
        pytest.param(lambda: render(node(), local_bitcoind=True), id="ipv4-peers"),
        pytest.param(
            lambda: render(
                parse_config(with_address(document(), 0, "[fd00::1]:50051")), local_bitcoind=False
            ),
            id="ipv6-peer",
        ),
        pytest.param(deny_all, id="deny-all"),
    ],
)
def test_nft_accepts_the_ruleset(ruleset: Any) -> None:
    done = nft_check(ruleset())
    assert done.returncode == 0, done.stderr


# -- the command --------------------------------------------------------------------------


class FakeNft:
    """Stands in for `nft`: records what it was given and answers as told."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], str]] = []

    def __call__(self, options: Sequence[str], ruleset: str) -> bool:
        self.calls.append((list(options), ruleset))
        return self.answers.pop(0)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document()))
    return path


def run(monkeypatch: pytest.MonkeyPatch, nft: FakeNft, *argv: str) -> int:
    monkeypatch.setattr(firewall, "_nft", nft)
    return firewall.main(list(argv))


def test_loads_the_rendered_ruleset(monkeypatch: pytest.MonkeyPatch, config_file: Path) -> None:
    nft = FakeNft(True)
    assert run(monkeypatch, nft, "--config", str(config_file), "--local-bitcoind") == 0
    expected = render(parse_config(document()), local_bitcoind=True)
    assert nft.calls == [([], expected)]


def test_check_asks_nft_to_check(monkeypatch: pytest.MonkeyPatch, config_file: Path) -> None:
    nft = FakeNft(True)
    assert run(monkeypatch, nft, "--config", str(config_file), "--check") == 0
    assert nft.calls == [(["-c"], render(parse_config(document()), local_bitcoind=False))]


def test_print_prints(
    monkeypatch: pytest.MonkeyPatch, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nft = FakeNft()
    assert run(monkeypatch, nft, "--config", str(config_file), "--print") == 0
    assert capsys.readouterr().out == render(parse_config(document()), local_bitcoind=False)
    assert nft.calls == []


def test_a_broken_config_fails_closed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    path.write_text("{")
    nft = FakeNft(True)
    assert run(monkeypatch, nft, "--config", str(path)) == 1
    assert nft.calls == [([], deny_all())]
    assert "is not valid JSON" in capsys.readouterr().err


def test_a_host_name_peer_fails_closed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(with_address(document(), 0, "peer.example:50051")))
    nft = FakeNft(True)
    assert run(monkeypatch, nft, "--config", str(path)) == 1
    assert nft.calls == [([], deny_all())]
    assert "parties[node-1].address: 'peer.example' is a host name" in capsys.readouterr().err


def test_a_missing_config_fails_closed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nft = FakeNft(True)
    assert run(monkeypatch, nft, "--config", str(tmp_path / "absent.json")) == 1
    assert nft.calls == [([], deny_all())]


def test_check_and_print_never_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nft = FakeNft()
    for mode in ("--check", "--print"):
        assert run(monkeypatch, nft, "--config", str(tmp_path / "absent.json"), mode) == 1
    assert nft.calls == []


def test_a_refused_ruleset_falls_back_to_deny_all(
    monkeypatch: pytest.MonkeyPatch, config_file: Path
) -> None:
    nft = FakeNft(False, True)
    assert run(monkeypatch, nft, "--config", str(config_file)) == 3
    assert [ruleset for _, ruleset in nft.calls][1] == deny_all()


def test_deny_all_failing_too_is_exit_3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nft = FakeNft(False)
    assert run(monkeypatch, nft, "--config", str(tmp_path / "absent.json")) == 3


def test_check_and_print_exclude_each_other(config_file: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        firewall.main(["--config", str(config_file), "--check", "--print"])
    assert caught.value.code == 2
