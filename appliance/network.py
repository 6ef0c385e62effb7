"""The node's static network addresses: `network.static` of its configuration, written as
systemd-networkd `.network` files before networkd starts.

At boot `wire-network.service` runs this with `--out /run/systemd/network`: one file
`10-wire-<interface>.network` per listed interface. networkd gives each interface the first
matching file in the order of the file names (across all its directories), so these come
before the image's `99-wire-dhcp.network`: a listed interface gets its static address and
no DHCP, every other wired interface asks DHCP. Without `network.static` nothing is
written and every wired interface asks DHCP.

Usage:

    python -m appliance.network --config PATH --out DIR

Stale `10-wire-*.network` files in DIR are removed first, and only when the configuration
is usable: a broken configuration leaves DIR as it is (on a fresh boot /run is empty, so
every interface asks DHCP; the firewall, reading the same configuration, fails closed).

Exit codes:

- 0: the files were written (or there was nothing to write);
- 1: the configuration is unusable (ConfigError, printed on standard error, naming the field);
- 2: the command line is wrong;
- 3: DIR cannot be written.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, StaticAddress, load_config

__all__ = ["file_name", "main", "render", "write"]

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_WRITE = 3

PREFIX = "10-wire-"
SUFFIX = ".network"


def file_name(address: StaticAddress) -> str:
    return f"{PREFIX}{address.interface}{SUFFIX}"


def render(address: StaticAddress) -> str:
    """The `.network` file for one interface: its address, gateway and DNS servers, and
    nothing learnt from the link (no DHCP, no router advertisements)."""
    # IPv6 needs a link-local address for neighbour discovery and MLD; IPv4 needs none,
    # and then the interface carries no IPv6 at all.
    ipv6 = isinstance(address.address, ipaddress.IPv6Interface)
    lines = [
        "# Written by wire-network.service from network.static of the node configuration.",
        "[Match]",
        f"Name={address.interface}",
        "",
        "[Link]",
        "RequiredForOnline=yes",
        "",
        "[Network]",
        f"Address={address.address}",
        *([f"Gateway={address.gateway}"] if address.gateway is not None else []),
        *(f"DNS={server}" for server in address.dns),
        "DHCP=no",
        f"LinkLocalAddressing={'ipv6' if ipv6 else 'no'}",
        "IPv6AcceptRA=no",
    ]
    return "\n".join(lines) + "\n"


def write(addresses: Sequence[StaticAddress], out: Path) -> list[Path]:
    """Replace the `10-wire-*.network` files in `out` with one per address; the paths
    written."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{PREFIX}*{SUFFIX}"):
        stale.unlink()
    written = []
    for address in addresses:
        path = out / file_name(address)
        path.write_text(render(address))
        path.chmod(0o644)
        written.append(path)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.network",
        description="Write the node's static addresses (network.static) as networkd files.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the node's config.json")
    parser.add_argument(
        "--out", type=Path, required=True, help="where networkd reads them: /run/systemd/network"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # exits with EXIT_USAGE on a wrong command line
    try:
        addresses = load_config(args.config).network
    except ConfigError as exc:
        print(f"wire-network: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        written = write(addresses, args.out)
    except OSError as exc:
        print(f"wire-network: cannot write {args.out}: {exc}", file=sys.stderr)
        return EXIT_WRITE
    if not written:
        print("wire-network: no network.static in the configuration: every wired interface "
              "asks DHCP")  # fmt: skip
    for address, path in zip(addresses, written, strict=True):
        print(f"wire-network: {address.interface} {address.address} ({path})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
