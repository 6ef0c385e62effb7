"""Per-site configuration of appliance nodes, as an operator organisation prepares it: the
node configuration JSON and the secrets, delivered to the VM as systemd credentials.

The paths are the image's (units and tmpfiles in image/tree); everything else is the
cluster's choice.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import zmq

MESH_PORT = 50051
# An identity key nobody holds: the node's own is made by its HSM on first boot and printed
# on its console, and the configuration is then corrected (the runbook's preparation phase).
UNKNOWN_IDENTITY = "00" * 32

APPLIANCE_PATHS = {
    "paths": {"data_dir": "/var/lib/wire-mpc", "engine_socket": "/run/wire-mpc/engine/engine.sock"},
    "engine": {"allowed_users": ["wire-api"]},
    "hsm": {"module": "/usr/lib/softhsm/libsofthsm2.so"},
    "api": {
        "socket": "/run/wire-mpc/api.sock",
        "socket_group": "wire-operators",
        "database": "/var/lib/wire-api/accounts.db",
        "metrics_dir": "/run/wire-mpc/api-metrics",
    },
}


@dataclass
class NodeSite:
    """One node: its address on the VM network and its secrets."""

    node_id: str
    identifier: int
    address: str
    curve_public: str = ""
    curve_secret: str = ""
    hsm_pin: str = field(default_factory=lambda: secrets.token_hex(8))
    hsm_so_pin: str = field(default_factory=lambda: secrets.token_hex(8))
    rpc_password: str = field(default_factory=lambda: secrets.token_hex(16))
    identity_public: str = UNKNOWN_IDENTITY

    def __post_init__(self) -> None:
        if not self.curve_secret:
            public, secret = zmq.curve_keypair()
            self.curve_public, self.curve_secret = public.decode(), secret.decode()

    def party(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "identifier": self.identifier,
            "address": f"{self.address}:{MESH_PORT}",
            "curve_public_key": self.curve_public,
            "identity_public_key": self.identity_public,
        }


def local_bitcoind(peers: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The `bitcoind` section of a production image's node: its own bitcoind on regtest
    (RPC and ZMQ on the VM's loopback; the RPC password is the node's credential), keeping
    P2P connections to `peers`."""
    return {
        "network": "regtest",
        "rpc_url": "http://127.0.0.1:18443",
        "rpc_user": "wire",
        "zmq_block": "tcp://127.0.0.1:28332",
        "peers": list(peers),
        "poll_seconds": 2,
    }


def node_config(cluster_id: str, threshold: int, me: NodeSite, nodes: list[NodeSite],
                **sections: Any) -> dict[str, Any]:  # fmt: skip
    config: dict[str, Any] = {
        "cluster_id": cluster_id,
        "node_id": me.node_id,
        "threshold": threshold,
        "parties": [n.party() for n in nodes],
        "mesh": {"listen": f"0.0.0.0:{MESH_PORT}"},
        **json.loads(json.dumps(APPLIANCE_PATHS)),
    }
    config["hsm"]["token_label"] = me.node_id
    config.update(sections)
    return config


def credentials(me: NodeSite, config: dict[str, Any]) -> dict[str, bytes]:
    """The node's systemd credentials (names as the units load them)."""
    return {
        "wire.config": json.dumps(config, indent=1).encode(),
        "hsm-pin": me.hsm_pin.encode(),
        "hsm-so-pin": me.hsm_so_pin.encode(),
        "curve-secret-key": me.curve_secret.encode(),
        "bitcoind-rpc-password": me.rpc_password.encode(),
    }
