"""The node's configuration: `/etc/wire-mpc/config.json`, read once, strictly.

Unknown or missing fields are errors that name the field. Secrets are never in the file:
the HSM PIN and the CURVE secret key arrive as systemd credentials (`hsm-pin`,
`curve-secret-key`), or for development as environment variables.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.utils.z85

from hsm.config import HsmConfig, SecretSource, read_secret

from .strictjson import StrictObject, as_bool, as_hex, as_integer, as_list, as_string

__all__ = [
    "ApiConfig",
    "AuditWriter",
    "ConfigError",
    "FeeReservoirConfig",
    "NodeConfig",
    "OperatorsConfig",
    "PartyConfig",
    "Policy",
    "StaticAddress",
    "load_config",
    "parse_config",
    "parse_policy",
]


class ConfigError(ValueError):
    """The configuration is unusable; the message names the field and what is wrong."""


@dataclass(frozen=True)
class PartyConfig:
    """One member of the cluster, as every node knows it."""

    node_id: str
    identifier: int
    address: str
    curve_public_key: str
    identity_public_key: bytes

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}"


@dataclass(frozen=True)
class BitcoinConfig:
    """This node's own bitcoind and the chain policy every node applies on its own."""

    network: str
    rpc_url: str
    rpc_user: str | None
    cookie_file: Path | None
    zmq_block: str
    scan_from_height: int
    normal_confirmations: int
    fork_confirmations: int
    fork_window_blocks: int
    poll_seconds: float
    max_tip_age_seconds: float
    fee_target_blocks: int
    fee_floor_sat_vb: float
    fee_ceiling_sat_vb: float
    bump_after_blocks: int
    rpc_timeout_seconds: float = 10.0  # a bitcoind that answers nothing this long is hung
    # The image's own bitcoind (production profile): P2P peers it keeps connections to
    # (besides those it finds itself), and its pruning target (MiB of blocks; 0: no pruning).
    peers: tuple[str, ...] = ()
    prune_mib: int = 0
    rpc_password: SecretSource = field(
        default_factory=lambda: SecretSource(
            "bitcoind-rpc-password", environment="WIRE_MPC_BITCOIND_RPC_PASSWORD"
        )
    )


NETWORKS = ("mainnet", "testnet", "signet", "regtest")


@dataclass(frozen=True)
class WireConfig:
    """The Wire system's side: where signed attestations are pushed, whether this node
    attests and pays by itself (the lead node coordinates), where burns are read and who
    signs them, and where paid burns are reported."""

    attestation_push_url: str | None
    auto_attest: bool
    push_seconds: float
    burn_feed_url: str | None = None
    burn_authority_key: bytes | None = None  # Ed25519 public key of the burn authority
    proof_verifier: tuple[str, ...] | None = None  # argv that must also accept each burn
    feed_poll_seconds: float = 5.0
    paid_report_url: str | None = None
    auto_pay: bool = True


@dataclass(frozen=True)
class Policy:
    """What this node signs, checked by every node on its own; an admin may change it at run
    time (audited), the configuration gives its starting values."""

    max_withdrawal_sats: int = 1_000_000_000
    daily_outflow_sats: int = 5_000_000_000
    min_deposit_sats: int = 10_000
    max_deposit_sats: int = 10_000_000_000
    min_burn_sats: int = 10_000
    approval_above_sats: int = 100_000_000
    approvals_required: int = 2
    max_batch: int = 100

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass(frozen=True)
class FeeReservoirConfig:
    """The fee reservoir: swept when `consolidation_threshold` outputs of at least
    `min_fee_amount` sat wait, to `consolidation_address` (None: only on demand, to an
    address the operators approve)."""

    consolidation_threshold: int = 10
    min_fee_amount: int = 1000
    consolidation_address: str | None = None


@dataclass(frozen=True)
class AuditWriter:
    """A process whose audit records are the node's: journald's trusted `_UID` (of `user`)
    and, when `units` is given, `_SYSTEMD_UNIT` must match; what other processes write with
    the audit identifier is not shown by audit queries."""

    user: str
    units: tuple[str, ...] | None = None


# The image's writers: the engine and its provisioning (the engine's user: whoever has it
# holds the HSM's credentials anyway), the API in its own unit, and root, which can forge
# anything on the node and whose boot steps (journal sealing, break-glass) exit at once,
# sometimes before journald has read their unit.
IMAGE_AUDIT_WRITERS = (
    AuditWriter("wire-mpc"),
    AuditWriter("wire-api", ("wire-api.service",)),
    AuditWriter("root"),
)


@dataclass(frozen=True)
class ApiConfig:
    """The operators' control API (`wire-api`): where it listens and how sessions last."""

    socket: Path
    socket_group: str | None  # the group allowed to connect (mode 0660); None: owner only
    database: Path  # operator passwords, backup codes and sessions (hashes, no key material)
    session_seconds: float
    workers: int
    metrics_dir: Path  # the API workers' Prometheus files, collected by the engine's exporter
    audit_writers: tuple[AuditWriter, ...] = IMAGE_AUDIT_WRITERS


@dataclass(frozen=True)
class OperatorsConfig:
    """The engine's operator registry: how far wrong TOTP codes slow the next one down, and
    how long a key-share export waits for a second admin."""

    code_delay_max_seconds: float = 300.0
    export_approval_seconds: float = 900.0


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Entries of `network.static`, and DNS servers per entry, at most.
MAX_STATIC_ADDRESSES = 8
MAX_DNS_SERVERS = 4


@dataclass(frozen=True)
class StaticAddress:
    """A static address of one network interface (`network.static`); written for
    systemd-networkd by `appliance.network`. Interfaces not listed ask DHCP."""

    interface: str  # the kernel's name, e.g. eth0 (the image boots with net.ifnames=0)
    address: IPInterface  # the address with its prefix length: 10.0.0.11/24
    gateway: IPAddress | None = None  # same family, inside the address's network
    dns: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class NodeConfig:
    cluster_id: str
    node_id: str
    threshold: int
    parties: tuple[PartyConfig, ...]
    mesh_listen: str
    max_message_bytes: int
    data_dir: Path
    engine_socket: Path
    engine_clients: tuple[str, ...]
    round_timeout: float
    hsm: HsmConfig
    bitcoin: BitcoinConfig | None = None
    api: ApiConfig | None = None
    wire: WireConfig = WireConfig(None, True, 5.0)
    policy: Policy = Policy()
    fee_reservoir: FeeReservoirConfig = FeeReservoirConfig()
    operators: OperatorsConfig = OperatorsConfig()
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9101)
    network: tuple[StaticAddress, ...] = ()
    curve_secret: SecretSource = field(
        default_factory=lambda: SecretSource(
            "curve-secret-key", environment="WIRE_MPC_CURVE_SECRET_KEY"
        )
    )

    @property
    def me(self) -> PartyConfig:
        return next(p for p in self.parties if p.node_id == self.node_id)

    @property
    def peers(self) -> tuple[PartyConfig, ...]:
        return tuple(p for p in self.parties if p.node_id != self.node_id)

    def party(self, identifier: int) -> PartyConfig:
        for p in self.parties:
            if p.identifier == identifier:
                return p
        raise KeyError(identifier)

    def curve_secret_key(self) -> bytes:
        """This node's CURVE secret key (Z85), checked against its configured public key."""
        secret = read_secret(self.curve_secret).encode()
        try:
            public = zmq.curve_public(secret)
        except (zmq.ZMQError, ValueError) as exc:
            raise ConfigError("credential curve-secret-key is not a Z85 CURVE secret key") from exc
        if public.decode() != self.me.curve_public_key:
            raise ConfigError(
                "credential curve-secret-key does not match this node's curve_public_key in "
                f"parties[{self.node_id}]"
            )
        return secret

    @property
    def vault_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def database(self) -> Path:
        return self.data_dir / "state.db"


def _name(value: Any, path: str) -> str:
    text = as_string(value, path, 63)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", text):
        raise ValueError(f"{text!r} must be letters, digits, '.', '_' or '-'")
    return text


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError("must be a positive number")
    return float(value)


def _address(value: Any, path: str) -> str:
    text = as_string(value, path, 255)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} must be host:port")
    return text


def _path(value: Any, path: str) -> Path:
    text = as_string(value, path, 4096)
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must be an absolute path")
    return Path(text)


def _curve_key(value: Any, path: str) -> str:
    text = as_string(value, path, 40)
    try:
        ok = len(text) == 40 and len(zmq.utils.z85.decode(text)) == 32
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ValueError("must be a 40-character Z85 CURVE public key")
    return text


def _identity_key(value: Any, path: str) -> bytes:
    try:
        return as_hex(value, path, 32)
    except ValueError:
        raise ValueError("must be 64 hex digits (an Ed25519 public key)") from None


def _party(value: Any, path: str) -> PartyConfig:
    fields = StrictObject(value, path, ConfigError)
    party = PartyConfig(
        node_id=fields.take("node_id", _name),
        identifier=fields.take("identifier", lambda v, p: as_integer(v, p, 1, 65535)),
        address=fields.take("address", _address),
        curve_public_key=fields.take("curve_public_key", _curve_key),
        identity_public_key=fields.take("identity_public_key", _identity_key),
    )
    fields.done()
    return party


def _parties(value: Any, path: str) -> tuple[PartyConfig, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list")
    parties = tuple(_party(v, f"{path}[{i}]") for i, v in enumerate(value))
    for attribute in ("node_id", "identifier", "address", "curve_public_key"):
        values = [getattr(p, attribute) for p in parties]
        duplicates = sorted({str(v) for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"{attribute} repeated: {', '.join(duplicates)}")
    return parties


def parse_config(document: Any) -> NodeConfig:
    """Build a NodeConfig from parsed JSON; errors name the offending field."""
    top = StrictObject(document, "", ConfigError)
    cluster_id = top.take("cluster_id", _name)
    node_id = top.take("node_id", _name)
    threshold = top.take("threshold", as_integer)
    parties = top.take("parties", _parties)

    mesh = top.section("mesh")
    mesh_listen = mesh.take("listen", _address)
    max_message = mesh.take(
        "max_message_bytes", lambda v, p: as_integer(v, p, 1024, 64 << 20), 4 << 20
    )
    mesh.done()

    paths = top.section("paths")
    data_dir = paths.take("data_dir", _path)
    engine_socket = paths.take("engine_socket", _path)
    paths.done()

    engine = top.section("engine", {})
    clients = tuple(engine.take("allowed_users", as_list(_name, 16), []))
    engine.done()

    hsm = top.section("hsm")
    module = hsm.take("module", _path)
    label = hsm.take("token_label", lambda v, p: as_string(v, p, 32))
    hsm.done()

    ceremony = top.section("ceremony", {})
    round_timeout = ceremony.take("round_timeout_seconds", _number, 10.0)
    ceremony.done()
    bitcoin = _bitcoin(top.section("bitcoind")) if "bitcoind" in top.data else None
    api = _api(top.section("api", {}), engine_socket)
    wire = _wire(top.section("wire", {}))
    policy = parse_policy(top.section("policy", {}), Policy())
    reservoir = _fee_reservoir(top.section("fee_reservoir", {}))
    operators = _operators(top.section("operators", {}))
    metrics = top.section("metrics", {})
    metrics_listen = metrics.take("listen", _metrics_address, ("127.0.0.1", 9101))
    metrics.done()
    network = top.section("network", {})
    static = network.take("static", _static_addresses, ())
    network.done()
    top.done()

    if node_id not in {p.node_id for p in parties}:
        raise ConfigError(f"node_id: {node_id!r} is not one of the parties")
    if not 2 <= threshold <= len(parties):
        raise ConfigError(f"threshold: {threshold} must be between 2 and {len(parties)} (parties)")
    if policy.approvals_required > len(parties):
        raise ConfigError(f"policy.approvals_required: {policy.approvals_required} exceeds the "
                          f"{len(parties)} parties")  # fmt: skip
    if reservoir.consolidation_address is not None:
        from appliance.chain.address import AddressError, script_of_address

        if bitcoin is None:
            raise ConfigError("fee_reservoir.consolidation_address: needs a bitcoind section")
        try:
            script_of_address(reservoir.consolidation_address, bitcoin.network)
        except (AddressError, ValueError) as exc:
            raise ConfigError(f"fee_reservoir.consolidation_address: {exc}") from None
    return NodeConfig(
        cluster_id=cluster_id,
        node_id=node_id,
        threshold=threshold,
        parties=tuple(sorted(parties, key=lambda p: p.identifier)),
        mesh_listen=mesh_listen,
        max_message_bytes=max_message,
        data_dir=data_dir,
        engine_socket=engine_socket,
        engine_clients=clients,
        round_timeout=round_timeout,
        hsm=HsmConfig(module=module, token_label=label),
        bitcoin=bitcoin,
        api=api,
        wire=wire,
        policy=policy,
        fee_reservoir=reservoir,
        operators=operators,
        metrics_listen=metrics_listen,
        network=static,
    )


def _api(fields: StrictObject, engine_socket: Path) -> ApiConfig:
    runtime = engine_socket.parent
    config = ApiConfig(
        socket=fields.take("socket", _path, runtime / "api.sock"),
        socket_group=fields.take(
            "socket_group", lambda v, p: None if v is None else _name(v, p), "wire-operators"
        ),
        database=fields.take("database", _path, Path("/var/lib/wire-api/accounts.db")),
        session_seconds=fields.take("session_seconds", _number, 900.0),
        workers=fields.take("workers", lambda v, p: as_integer(v, p, 1, 64), 2),
        metrics_dir=fields.take("metrics_dir", _path, runtime / "api-metrics"),
        audit_writers=fields.take("audit_writers", _audit_writers, IMAGE_AUDIT_WRITERS),
    )
    fields.done()
    return config


def _audit_writer(value: Any, path: str) -> AuditWriter:
    fields = StrictObject(value, path, ConfigError)
    user = fields.take("user", _name)
    units = fields.take("units", _units, None)
    fields.done()
    if units is not None and not units:
        raise ConfigError(f"{path}.units: give at least one unit, or null for any")
    return AuditWriter(user, None if units is None else tuple(units))


def _units(value: Any, path: str) -> list[str] | None:
    return None if value is None else as_list(_unit, 16)(value, path)


def _audit_writers(value: Any, path: str) -> tuple[AuditWriter, ...]:
    writers = tuple(as_list(_audit_writer, 16)(value, path))
    if not writers:
        raise ValueError("must name at least one writer (else no audit record would show)")
    return writers


def _unit(value: Any, path: str) -> str:
    text = as_string(value, path, 255)
    if not re.fullmatch(r"[A-Za-z0-9:_.@-]+\.service", text):
        raise ValueError(f"{text!r} must be a systemd service name (name.service)")
    return text


def _operators(fields: StrictObject) -> OperatorsConfig:
    config = OperatorsConfig(
        code_delay_max_seconds=fields.take("code_delay_max_seconds", _seconds(1, 3600), 300.0),
        export_approval_seconds=fields.take("export_approval_seconds", _seconds(1, 86400), 900.0),
    )
    fields.done()
    return config


def _seconds(low: float, high: float) -> Callable[[Any, str], float]:
    def reader(value: Any, path: str) -> float:
        seconds = _number(value, path)
        if not low <= seconds <= high:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return seconds

    return reader


def _wire(fields: StrictObject) -> WireConfig:
    url = fields.take(
        "attestation_push_url", lambda v, p: None if v is None else as_string(v, p, 2048), None
    )
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError("wire.attestation_push_url: must be an http:// or https:// URL")

    def optional_url(name: str) -> str | None:
        value = fields.take(name, lambda v, p: None if v is None else as_string(v, p, 2048), None)
        if value is not None and not value.startswith(("http://", "https://")):
            raise ConfigError(f"wire.{name}: must be an http:// or https:// URL")
        return value

    def verifier(value: Any, path: str) -> tuple[str, ...] | None:
        if value is None:
            return None
        argv = as_list(lambda v, p: as_string(v, p, 4096), 64)(value, path)
        if not argv or not argv[0].startswith("/"):
            raise ValueError("must be an argv whose first item is an absolute path")
        return tuple(argv)

    config = WireConfig(
        attestation_push_url=url,
        auto_attest=fields.take("auto_attest", as_bool, True),
        push_seconds=fields.take("push_seconds", _number, 5.0),
        burn_feed_url=optional_url("burn_feed_url"),
        burn_authority_key=fields.take(
            "burn_authority_key", lambda v, p: None if v is None else _identity_key(v, p), None
        ),
        proof_verifier=fields.take("proof_verifier", verifier, None),
        feed_poll_seconds=fields.take("feed_poll_seconds", _number, 5.0),
        paid_report_url=optional_url("paid_report_url"),
        auto_pay=fields.take("auto_pay", as_bool, True),
    )
    fields.done()
    if config.burn_feed_url is not None and config.burn_authority_key is None:
        raise ConfigError("wire.burn_authority_key: required with burn_feed_url (burns are "
                          "verified against it)")  # fmt: skip
    return config


def parse_policy(fields: StrictObject, base: Policy) -> Policy:
    """A policy from `fields`, each missing field taken from `base`."""

    def sats(name: str) -> int:
        return int(fields.take(name, lambda v, p: as_integer(v, p, 0, 21 * 10**14),
                               getattr(base, name)))  # fmt: skip

    policy = Policy(
        max_withdrawal_sats=sats("max_withdrawal_sats"),
        daily_outflow_sats=sats("daily_outflow_sats"),
        min_deposit_sats=sats("min_deposit_sats"),
        max_deposit_sats=sats("max_deposit_sats"),
        min_burn_sats=sats("min_burn_sats"),
        approval_above_sats=sats("approval_above_sats"),
        approvals_required=fields.take(
            "approvals_required", lambda v, p: as_integer(v, p, 1, 255), base.approvals_required
        ),
        max_batch=fields.take("max_batch", lambda v, p: as_integer(v, p, 1, 1000), base.max_batch),
    )
    fields.done()
    if policy.min_deposit_sats > policy.max_deposit_sats:
        raise ConfigError("policy.min_deposit_sats: must not exceed max_deposit_sats")
    if policy.min_burn_sats > policy.max_withdrawal_sats:
        raise ConfigError("policy.min_burn_sats: must not exceed max_withdrawal_sats")
    if policy.max_withdrawal_sats > policy.daily_outflow_sats:
        raise ConfigError("policy.max_withdrawal_sats: must not exceed daily_outflow_sats")
    return policy


def _fee_reservoir(fields: StrictObject) -> FeeReservoirConfig:
    config = FeeReservoirConfig(
        consolidation_threshold=fields.take(
            "consolidation_threshold", lambda v, p: as_integer(v, p, 1, 500), 10
        ),
        min_fee_amount=fields.take("min_fee_amount", lambda v, p: as_integer(v, p, 1, 10**9), 1000),
        consolidation_address=fields.take(
            "consolidation_address", lambda v, p: None if v is None else as_string(v, p, 128), None
        ),
    )
    fields.done()
    return config


def _metrics_address(value: Any, path: str) -> tuple[str, int] | None:
    """`host:port` on loopback, or null for no exporter: metrics never leave the machine."""
    if value is None:
        return None
    host, port = _address(value, path).rsplit(":", 1)
    if host not in ("127.0.0.1", "::1"):
        raise ValueError(f"the metrics exporter listens on loopback only, not on {host}")
    return host, int(port)


def _interface_name(value: Any, path: str) -> str:
    text = as_string(value, path, 15)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", text) or text in (".", ".."):
        raise ValueError(f"{text!r} must be an interface name: letters, digits, '.', '_' or "
                         "'-' (no patterns)")  # fmt: skip
    return text


def _unicast(ip: IPAddress, text: str) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise ValueError(f"{text!r} has a zone; give a plain address")
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValueError(f"{text!r} is not a unicast address of a network")
    return ip


def _ip(value: Any, path: str) -> IPAddress:
    text = as_string(value, path, 64)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    return _unicast(ip, text)


def _interface_address(value: Any, path: str) -> IPInterface:
    text = as_string(value, path, 64)
    if "/" not in text:
        raise ValueError(f"{text!r} needs its prefix length, e.g. 10.0.0.11/24")
    try:
        address = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address with a prefix length") from None
    if isinstance(address, ipaddress.IPv6Interface) and address.scope_id is not None:
        raise ValueError(f"{text!r} has a zone; give a plain address")  # .ip drops the zone
    _unicast(address.ip, text)
    network = address.network
    if (
        isinstance(address, ipaddress.IPv4Interface)
        and network.prefixlen <= 30
        and address.ip in (network.network_address, network.broadcast_address)
    ):
        raise ValueError(f"{text!r} is the network's own or its broadcast address, "
                         "not a host's")  # fmt: skip
    return address


def _static_address(value: Any, path: str) -> StaticAddress:
    fields = StrictObject(value, path, ConfigError)
    static = StaticAddress(
        interface=fields.take("interface", _interface_name),
        address=fields.take("address", _interface_address),
        gateway=fields.take("gateway", _ip, None),
        dns=tuple(fields.take("dns", as_list(_ip, MAX_DNS_SERVERS), [])),
    )
    fields.done()
    gateway, address = static.gateway, static.address
    if gateway is None:
        return static
    if gateway.version != address.version:
        raise ConfigError(f"{path}.gateway: {gateway} is IPv{gateway.version}, the address "
                          f"IPv{address.version}")  # fmt: skip
    if gateway not in address.network or gateway == address.ip:
        raise ConfigError(f"{path}.gateway: {gateway} is not another host of the address's "
                          f"network {address.network}")  # fmt: skip
    return static


def _static_addresses(value: Any, path: str) -> tuple[StaticAddress, ...]:
    entries = as_list(_static_address, MAX_STATIC_ADDRESSES)(value, path)
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.interface in first:
            raise ConfigError(f"{path}[{i}].interface: {entry.interface!r} already has an "
                              f"address in {path}[{first[entry.interface]}]")  # fmt: skip
        first[entry.interface] = i
    return tuple(entries)


def _bitcoin(fields: StrictObject) -> BitcoinConfig:
    def count(low: int, high: int) -> Any:
        return lambda v, p: as_integer(v, p, low, high)

    network = fields.take("network", as_string)
    if network not in NETWORKS:
        raise ConfigError(f"bitcoind.network: {network!r} must be one of {', '.join(NETWORKS)}")
    rpc_url = fields.take("rpc_url", as_string)
    if not rpc_url.startswith("http://"):
        raise ConfigError("bitcoind.rpc_url: must be an http:// URL (bitcoind speaks plain HTTP)")
    rpc_user = fields.take("rpc_user", as_string, None)
    cookie = fields.take("cookie_file", _path, None)
    if (rpc_user is None) == (cookie is None):
        raise ConfigError("bitcoind: give exactly one of rpc_user (password as a credential) "
                          "or cookie_file")  # fmt: skip
    zmq_block = fields.take("zmq_block", as_string)
    if not zmq_block.startswith("tcp://"):
        raise ConfigError("bitcoind.zmq_block: must be a tcp:// endpoint")
    config = BitcoinConfig(
        network=network,
        rpc_url=rpc_url,
        rpc_user=rpc_user,
        cookie_file=cookie,
        zmq_block=zmq_block,
        scan_from_height=fields.take("scan_from_height", count(0, 10**7), 0),
        normal_confirmations=fields.take("normal_confirmations", count(1, 1000), 6),
        fork_confirmations=fields.take("fork_confirmations", count(1, 1000), 12),
        fork_window_blocks=fields.take("fork_window_blocks", count(0, 100_000), 144),
        poll_seconds=fields.take("poll_seconds", _number, 5.0),
        max_tip_age_seconds=fields.take("max_tip_age_seconds", _number, 7200.0),
        fee_target_blocks=fields.take("fee_target_blocks", count(1, 1008), 6),
        fee_floor_sat_vb=fields.take("fee_floor_sat_vb", _number, 1.0),
        fee_ceiling_sat_vb=fields.take("fee_ceiling_sat_vb", _number, 500.0),
        bump_after_blocks=fields.take("bump_after_blocks", count(1, 1000), 3),
        rpc_timeout_seconds=fields.take("rpc_timeout_seconds", _number, 10.0),
        peers=tuple(fields.take("peers", as_list(_address, 16), [])),
        prune_mib=fields.take("prune_mib", count(0, 10**9), 0),
    )
    fields.done()
    if config.fork_confirmations < config.normal_confirmations:
        raise ConfigError("bitcoind.fork_confirmations: must not be below normal_confirmations")
    if config.fee_ceiling_sat_vb < config.fee_floor_sat_vb:
        raise ConfigError("bitcoind.fee_ceiling_sat_vb: must not be below fee_floor_sat_vb")
    if 0 < config.prune_mib < 550:
        raise ConfigError(
            "bitcoind.prune_mib: 0 (no pruning) or at least 550, Bitcoin Core's least"
        )
    return config


def load_config(path: Path) -> NodeConfig:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: is not valid JSON: {exc}") from exc
    try:
        return parse_config(document)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
