"""The appliance's boot steps that can run outside the image: bitcoind's command line and
taking the journal's verification key off the node (the rest is exercised by booting the
image in tests/image)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from appliance.boot import bitcoind_argv
from appliance.config import ConfigError, parse_config
from appliance.errors import CommandError
from appliance.sealing import VERIFICATION_KEY, take_verification_key
from tests.engine.test_config import sample


def chain(**changes: object) -> dict:
    config = sample()
    config["bitcoind"] = {
        "network": "mainnet",
        "rpc_url": "http://127.0.0.1:8332",
        "rpc_user": "wire",
        "zmq_block": "tcp://127.0.0.1:28332",
        **changes,
    }
    return config


def test_bitcoind_gets_an_rpcauth_hash_never_the_password(monkeypatch) -> None:
    monkeypatch.setenv("WIRE_MPC_BITCOIND_RPC_PASSWORD", "correct horse")
    argv = bitcoind_argv(parse_config(chain()), Path("/var/lib/bitcoind"), "00ff")
    assert argv[0] == "/usr/bin/bitcoind"
    assert "-chain=main" in argv
    assert "-rpcbind=127.0.0.1" in argv
    digest = hmac.new(b"00ff", b"correct horse", hashlib.sha256).hexdigest()
    assert f"-rpcauth=wire:00ff${digest}" in argv
    assert not any("correct horse" in a for a in argv)
    assert "-zmqpubhashblock=tcp://127.0.0.1:28332" in argv
    assert "-zmqpubrawblock=tcp://127.0.0.1:28332" in argv
    assert "-prune=0" in argv


def test_bitcoind_keeps_its_configured_peers_and_prunes_as_told(monkeypatch) -> None:
    monkeypatch.setenv("WIRE_MPC_BITCOIND_RPC_PASSWORD", "x")
    config = parse_config(chain(peers=["10.0.2.2:18444", "node.example:8333"], prune_mib=550))
    argv = bitcoind_argv(config, Path("/var/lib/bitcoind"), "00")
    assert "-addnode=10.0.2.2:18444" in argv
    assert "-addnode=node.example:8333" in argv
    assert "-prune=550" in argv
    for bad, message in (({"prune_mib": 100}, "prune_mib"), ({"peers": ["nohost"]}, "peers")):
        with pytest.raises(ConfigError, match=message):
            parse_config(chain(**bad))


def test_bitcoind_listens_on_loopback_only(monkeypatch) -> None:
    monkeypatch.setenv("WIRE_MPC_BITCOIND_RPC_PASSWORD", "x")
    config = parse_config(chain(rpc_url="http://10.0.0.5:8332"))
    with pytest.raises(ConfigError, match=r"rpc_url.*loopback"):
        bitcoind_argv(config, Path("/var/lib/bitcoind"), "00")


def test_the_verification_key_leaves_the_node_once(tmp_path: Path) -> None:
    (tmp_path / VERIFICATION_KEY).write_text("abcdef-123456/1-2\n")
    assert take_verification_key(tmp_path) == "abcdef-123456/1-2"
    assert not (tmp_path / VERIFICATION_KEY).exists()
    with pytest.raises(CommandError) as refused:
        take_verification_key(tmp_path)
    assert refused.value.code == "already-taken"
