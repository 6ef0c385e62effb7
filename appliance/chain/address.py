"""Bitcoin addresses of the networks the bridge runs on, encoded and parsed by bitcoinlib.

bitcoinlib writes a configuration and log directory when imported; it is pointed at a
private temporary directory (unless `BCL_DATA_DIR` says otherwise), because the appliance's
root and home are read-only and nothing of it is worth keeping.
"""

from __future__ import annotations

import os
import tempfile
from typing import Final

os.environ.setdefault("BCL_DATA_DIR", tempfile.mkdtemp(prefix="wire-mpc-bitcoinlib-"))

from bitcoinlib.encoding import addr_bech32_to_pubkeyhash, pubkeyhash_to_addr_bech32
from bitcoinlib.keys import Address

__all__ = ["HRP", "AddressError", "address_of_script", "p2tr_script", "script_of_address"]

HRP: Final = {"mainnet": "bc", "testnet": "tb", "signet": "tb", "regtest": "bcrt"}
# Base58 (legacy and P2SH) addresses carry only a version byte: testnet, testnet4, signet and
# regtest share theirs (Bitcoin Core's chainparams), so bitcoinlib may name any of them.
_TEST_NETWORKS: Final = {"testnet", "testnet4", "signet", "regtest"}
_BITCOINLIB_NETWORK: Final = {
    "mainnet": {"bitcoin"},
    "testnet": _TEST_NETWORKS,
    "signet": _TEST_NETWORKS,
    "regtest": _TEST_NETWORKS,
}
# Dust thresholds of Bitcoin Core's default relay policy (3 sat/vB dust relay fee).
DUST: Final = {"p2tr": 330, "p2wsh": 330, "p2wpkh": 294, "p2sh": 540, "p2pkh": 546}


class AddressError(ValueError):
    """An address that is malformed, of another network or of a non-standard type."""


def p2tr_script(output_key_xonly: bytes) -> bytes:
    if len(output_key_xonly) != 32:
        raise ValueError("a Taproot output key is 32 bytes (x-only)")
    return b"\x51\x20" + output_key_xonly


def script_type(script: bytes) -> str | None:
    """The standard output type of a scriptPubKey, or None."""
    if len(script) == 34 and script[:2] == b"\x51\x20":
        return "p2tr"
    if len(script) == 34 and script[:2] == b"\x00\x20":
        return "p2wsh"
    if len(script) == 22 and script[:2] == b"\x00\x14":
        return "p2wpkh"
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[-1] == 0x87:
        return "p2sh"
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[-2:] == b"\x88\xac":
        return "p2pkh"
    return None


def address_of_script(script: bytes, network: str) -> str:
    """The address of a segwit scriptPubKey (the kinds the appliance creates)."""
    kind = script_type(script)
    if kind not in ("p2tr", "p2wsh", "p2wpkh"):
        raise AddressError(f"no segwit address for script {script.hex()}")
    version = 1 if kind == "p2tr" else 0
    # As hex: given bytes, bitcoinlib first tries to read them as a hex string, so a program
    # whose bytes happen to be ASCII hex digits or spaces would be encoded as another one.
    program = script[2:].hex()
    return str(pubkeyhash_to_addr_bech32(program, prefix=HRP[network], witver=version))


def script_of_address(address: str, network: str) -> bytes:
    """The scriptPubKey an address pays to; refuses other networks and non-standard types."""
    if not isinstance(address, str) or not 14 <= len(address) <= 90:
        raise AddressError("an address is 14 to 90 characters")
    # Bech32 has no '1' in its data part: the last one ends the human-readable prefix.
    prefix = address.lower().rsplit("1", 1)[0]
    if prefix in HRP.values():
        # Decoded here, not by bitcoinlib's Address, which takes some valid programs (those
        # whose bytes read as hex text) for malformed ones.
        if prefix != HRP[network]:
            raise AddressError(f"{address!r} is not a {network} address (prefix {prefix})")
        return _segwit_script(address)
    try:
        parsed = Address.parse(address)
    except Exception as exc:  # bitcoinlib raises several kinds for bad input; all mean "invalid"
        raise AddressError(f"{address!r} is not a valid address: {exc}") from exc
    if parsed.network.name not in _BITCOINLIB_NETWORK[network]:
        raise AddressError(f"{address!r} is a {parsed.network.name} address, not {network}")
    if parsed.encoding == "bech32":
        raise AddressError(f"{address!r} has an unknown segwit prefix")
    program = bytes(parsed.hash_bytes)
    kind = parsed.script_type
    if kind == "p2tr" and len(program) == 32:
        return p2tr_script(program)
    if kind == "p2wpkh" and len(program) == 20:
        return b"\x00\x14" + program
    if kind == "p2wsh" and len(program) == 32:
        return b"\x00\x20" + program
    if kind == "p2sh" and len(program) == 20:
        return b"\xa9\x14" + program + b"\x87"
    if kind == "p2pkh" and len(program) == 20:
        return b"\x76\xa9\x14" + program + b"\x88\xac"
    raise AddressError(f"{address!r} pays to a non-standard output type ({kind})")


def _segwit_script(address: str) -> bytes:
    """A segwit address's script from its own witness version and program: the version is
    what decides the output type, never the program's length alone."""
    try:
        decoded = bytes(addr_bech32_to_pubkeyhash(address, include_witver=True))
    except Exception as exc:  # as above: any failure of the decoder means invalid
        raise AddressError(f"{address!r} is not a valid segwit address: {exc}") from exc
    op_version, program = decoded[0], decoded[2:]
    if decoded[1] != len(program):
        raise AddressError(f"{address!r} has a malformed witness program")
    if (op_version, len(program)) == (0x00, 20):
        return b"\x00\x14" + program
    if (op_version, len(program)) == (0x00, 32):
        return b"\x00\x20" + program
    if (op_version, len(program)) == (0x51, 32):
        return p2tr_script(program)
    raise AddressError(f"{address!r} pays to a non-standard witness program "
                       f"(version opcode {op_version:#x}, {len(program)} bytes)")  # fmt: skip
