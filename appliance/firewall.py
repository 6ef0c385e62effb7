"""The node's packet filter: an nftables ruleset rendered from its configuration.

At boot, before the network comes up, the appliance loads the ruleset that `render` builds
from `/etc/wire-mpc/config.json`. Everything is denied unless a rule below allows it.

Inbound (chain `input`, policy drop):

- packets whose connection-tracking state is invalid are dropped;
- replies to this node's own connections (established, related) are accepted;
- loopback is accepted: the engine, the API, bitcoind's RPC and ZMQ and the metrics
  exporter (`metrics_listen`, loopback only) are reached there;
- ICMPv6 neighbour discovery and router advertisements, which IPv6 needs to work at all,
  and ICMP/ICMPv6 echo requests, rate-limited;
- the mesh port (the port of `mesh.listen`) from the other parties' IP addresses only, held
  in the named sets `mesh_peers_v4` and `mesh_peers_v6`;
- bitcoind's P2P port (by network: mainnet 8333, testnet 18333, signet 38333, regtest
  18444), only when the image carries a local bitcoind (`--local-bitcoind`).

Forwarded packets are dropped: the appliance is not a router.

Outbound (chain `output`) is not restricted. The node's outbound peers are not known as
addresses: the Wire feed and report URLs name hosts that resolve at run time (and may move
behind a CDN), and bitcoind finds its P2P peers by DNS seeds and address gossip. A filter
on addresses would either break them or have to allow everything anyway. The replies to
outbound connections come back through the `established,related` rule.

The ruleset needs the peers as IP literals: a host name would be resolved once, at load
time, by nft, before the network is up. A peer given by name is an error (`FirewallError`)
that names the party.

When the configuration cannot be read, `deny_all` is loaded instead: loopback only, in and
out, so a broken configuration fails closed.

Usage:

    python -m appliance.firewall --config PATH [--local-bitcoind] [--check | --print]

renders the ruleset and loads it with `nft -f -`; `--check` only asks nft whether it would
load it (`nft -c -f -`), `--print` writes it to standard output.

Exit codes:

- 0: the ruleset was loaded (with `--check`: nft accepts it; with `--print`: printed);
- 1: the configuration is unusable (ConfigError or FirewallError, printed on standard
  error); when loading, the deny-all ruleset was loaded in its place;
- 2: the command line is wrong;
- 3: nft failed (missing, or it refused the ruleset); when loading, the deny-all ruleset
  was attempted in its place.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from .config import ConfigError, NodeConfig, PartyConfig, load_config

__all__ = ["P2P_PORTS", "FirewallError", "deny_all", "main", "render"]

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_NFT = 3

P2P_PORTS = {"mainnet": 8333, "testnet": 18333, "signet": 38333, "regtest": 18444}

# ICMP/ICMPv6 echo requests accepted per second (the excess is dropped by the policy).
ECHO_RATE = "5/second"

NFT = "nft"
# The first load of a boot also loads nf_tables' kernel modules: over a minute on a busy
# emulated machine (three VMs on two cores). A timeout still fails closed (deny-all).
NFT_TIMEOUT_SECONDS = 300.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FirewallError(ValueError):
    """The configuration cannot be expressed as a ruleset; the message names the field."""


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _peer_ip(party: PartyConfig) -> IPAddress:
    """The IP address of `party`, which must be given as a literal."""
    host, _ = _split_host_port(party.address)
    where = f"parties[{party.node_id}].address"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise FirewallError(
            f"{where}: {host!r} is a host name; the firewall needs an IP address"
        ) from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise FirewallError(f"{where}: {host!r} has a zone; the firewall needs a plain address")
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped  # such a peer's packets arrive as IPv4
    return ip


def _peer_addresses(
    config: NodeConfig,
) -> tuple[list[ipaddress.IPv4Address], list[ipaddress.IPv6Address]]:
    """The other parties' addresses, split by family, sorted and without repeats."""
    v4: set[ipaddress.IPv4Address] = set()
    v6: set[ipaddress.IPv6Address] = set()
    for party in config.peers:
        ip = _peer_ip(party)
        if isinstance(ip, ipaddress.IPv4Address):
            v4.add(ip)
        else:
            v6.add(ip)
    return sorted(v4), sorted(v6)


def _mesh_port(config: NodeConfig) -> int:
    return _split_host_port(config.mesh_listen)[1]


def _p2p(config: NodeConfig) -> tuple[str, int]:
    """The local bitcoind's network and P2P port."""
    if config.bitcoin is None:
        raise FirewallError("bitcoind: a local bitcoind needs the bitcoind section (its network)")
    return config.bitcoin.network, P2P_PORTS[config.bitcoin.network]


def _address_set(name: str, kind: str, addresses: Iterable[IPAddress]) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}"]
    elements = ", ".join(str(a) for a in addresses)
    if elements:  # nft refuses an empty element list; an empty set is declared without one
        lines.append(f"\t\telements = {{ {elements} }}")
    lines.append("\t}")
    return lines


def _chain(name: str, hook: str, policy: str, rules: Iterable[str]) -> list[str]:
    head = f"\t\ttype filter hook {hook} priority filter; policy {policy};"
    return [f"\tchain {name} {{", head, *(f"\t\t{rule}" if rule else "" for rule in rules), "\t}"]


def _table(body: Iterable[list[str]]) -> str:
    lines = ["flush ruleset", "", "table inet wire {"]
    for i, block in enumerate(body):
        lines.extend(([""] if i else []) + block)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _icmp_rules() -> list[str]:
    return [
        "# IPv6 needs neighbour discovery and router advertisements; hop limit 255 proves",
        "# they were not forwarded (RFC 4861), so only the local link can send them.",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } "
        "ip6 hoplimit 255 accept",
        f"# Echo (ping) is answered, rate-limited to {ECHO_RATE} per family; the excess is",
        "# dropped by the policy.",
        f"icmp type echo-request limit rate {ECHO_RATE} accept",
        f"icmpv6 type echo-request limit rate {ECHO_RATE} accept",
    ]


def _input_rules(config: NodeConfig, *, local_bitcoind: bool) -> list[str]:
    mesh = _mesh_port(config)
    rules = [
        "ct state invalid drop",
        "ct state established,related accept",
        'iif "lo" accept',
        "",
        *_icmp_rules(),
        "",
        "# The mesh: only the other parties of the cluster.",
        f"tcp dport {mesh} ip saddr @mesh_peers_v4 accept",
        f"tcp dport {mesh} ip6 saddr @mesh_peers_v6 accept",
    ]
    if local_bitcoind:
        network, port = _p2p(config)
        rules += ["", f"# The local bitcoind's P2P port ({network}).", f"tcp dport {port} accept"]
    return rules


def render(config: NodeConfig, *, local_bitcoind: bool) -> str:
    """The whole ruleset for this node, for `nft -f`."""
    v4, v6 = _peer_addresses(config)
    return _table(
        [
            _address_set("mesh_peers_v4", "ipv4_addr", v4),
            _address_set("mesh_peers_v6", "ipv6_addr", v6),
            _chain("input", "input", "drop", _input_rules(config, local_bitcoind=local_bitcoind)),
            _chain("forward", "forward", "drop", []),
            _chain("output", "output", "accept", []),
        ]
    )


def deny_all() -> str:
    """The ruleset for a node whose configuration cannot be read: loopback only."""
    return _table(
        [
            _chain("input", "input", "drop", ['iif "lo" accept']),
            _chain("forward", "forward", "drop", []),
            _chain("output", "output", "drop", ['oif "lo" accept']),
        ]
    )


def _nft(options: Sequence[str], ruleset: str) -> bool:
    """Feed `ruleset` to `nft OPTIONS -f -`; nft's own messages go to standard error."""
    try:
        done = subprocess.run(
            [NFT, *options, "-f", "-"],
            input=ruleset,
            text=True,
            check=False,
            timeout=NFT_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"wire-firewall: cannot run {NFT}: {exc}", file=sys.stderr)
        return False
    return done.returncode == 0


def _fail_closed() -> int:
    """Load the deny-all ruleset; EXIT_NFT if even that fails."""
    if _nft([], deny_all()):
        print("wire-firewall: loaded the deny-all ruleset (loopback only)", file=sys.stderr)
        return EXIT_CONFIG
    print("wire-firewall: could not load the deny-all ruleset either", file=sys.stderr)
    return EXIT_NFT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.firewall",
        description="Render the node's nftables ruleset from its configuration and load it.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the node's config.json")
    parser.add_argument(
        "--local-bitcoind", action="store_true", help="open bitcoind's P2P port (by network)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check with nft -c")
    mode.add_argument("--print", action="store_true", help="only print the ruleset")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    loading = not (args.check or args.print)
    try:
        ruleset = render(load_config(args.config), local_bitcoind=args.local_bitcoind)
    except (ConfigError, FirewallError) as exc:
        print(f"wire-firewall: {exc}", file=sys.stderr)
        return _fail_closed() if loading else EXIT_CONFIG
    if args.print:
        sys.stdout.write(ruleset)
        return EXIT_OK
    if _nft(["-c"] if args.check else [], ruleset):
        return EXIT_OK
    print("wire-firewall: nft refused the ruleset", file=sys.stderr)
    if loading:
        _fail_closed()
    return EXIT_NFT


if __name__ == "__main__":
    sys.exit(main())
