"""Addresses: bech32m P2TR on every network (BIP341/BIP350 vectors), the custody key's
custody, deposit and reservoir outputs, and addresses of the wrong network refused."""

from __future__ import annotations

import pytest

from appliance.chain.address import (
    AddressError,
    address_of_script,
    p2tr_script,
    script_of_address,
    script_type,
)
from appliance.chain.custody import CustodyKey
from appliance.frost import SECP256K1_TR, apply_tweaks, trusted_dealer_keygen

PREFIXES = {"mainnet": "bc1p", "testnet": "tb1p", "signet": "tb1p", "regtest": "bcrt1p"}


def test_bip341_scripts_and_bip350_addresses(vectors) -> None:
    cases = vectors.json("bip341/wallet-test-vectors.json")["scriptPubKey"]
    for case in cases:
        script = bytes.fromhex(case["expected"]["scriptPubKey"])
        address = case["expected"]["bip350Address"]
        assert script_type(script) == "p2tr"
        assert address_of_script(script, "mainnet") == address
        assert script_of_address(address, "mainnet") == script
    assert len(cases) == 7


@pytest.fixture(scope="module")
def group_key() -> bytes:
    _, package = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    return package.group_key


@pytest.mark.parametrize("network", sorted(PREFIXES))
def test_custody_outputs_on_every_network(group_key, network) -> None:
    key = CustodyKey(group_key, network)
    outputs = [key.custody, key.reservoir, key.deposit("wire:alice"), key.deposit("wire:bob")]
    addresses = [key.address(o) for o in outputs]
    assert len(set(addresses)) == 4
    for output, address in zip(outputs, addresses, strict=True):
        assert address.startswith(PREFIXES[network])
        assert script_of_address(address, network) == output.script
        # The tweaks recorded with the output give its key: what the signers will use.
        assert apply_tweaks(SECP256K1_TR, group_key, list(output.tweaks)).key == output.output_key
        assert output.script == b"\x51\x20" + output.output_key[1:]


def test_deposit_addresses_are_deterministic_per_recipient(group_key) -> None:
    a, b = CustodyKey(group_key, "regtest"), CustodyKey(group_key, "regtest")
    assert a.deposit("wire:carol").script == b.deposit("wire:carol").script
    assert a.deposit("wire:carol").script != a.deposit("wire:carol ").script
    for bad in ("", "x" * 129, "tab\there"):
        with pytest.raises(ValueError, match="recipient"):
            a.deposit(bad)


def test_addresses_of_another_network_or_malformed_are_refused(group_key) -> None:
    key = CustodyKey(group_key, "mainnet")
    mainnet = key.address(key.custody)
    with pytest.raises(AddressError):
        script_of_address(mainnet, "regtest")
    with pytest.raises(AddressError):
        script_of_address(mainnet[:-1] + ("q" if mainnet[-1] != "q" else "p"), "mainnet")
    with pytest.raises(AddressError):
        script_of_address("not an address", "mainnet")


def test_the_witness_version_decides_the_output_type() -> None:
    """A version-2 program of 32 bytes is not Taproot, a version-1 program of 20 bytes is not
    P2WPKH: paying either as if it were would send coins to an output nobody named."""
    from bitcoinlib.encoding import pubkeyhash_to_addr_bech32

    for version, size in ((2, 32), (1, 20), (16, 32)):
        address = pubkeyhash_to_addr_bech32(bytes(range(size)), prefix="bc", witver=version)
        with pytest.raises(AddressError):
            script_of_address(address, "mainnet")
    assert script_of_address(
        pubkeyhash_to_addr_bech32(bytes(range(20)), prefix="bc", witver=0), "mainnet"
    ) == b"\x00\x14" + bytes(range(20))


@pytest.mark.parametrize("program", [b"0123456789abcdef" * 2, b"\n" * 32, b" 0a" * 10 + b"00"])
def test_programs_that_look_like_hex_text_keep_their_bytes(program: bytes) -> None:
    """Witness programs whose bytes are ASCII hex digits or white space are still addresses
    of exactly those bytes (bitcoinlib reads such bytes as hex text if given bytes)."""
    for script in (p2tr_script(program), b"\x00\x20" + program):
        for network in ("mainnet", "regtest"):
            address = address_of_script(script, network)
            assert script_of_address(address, network) == script


@pytest.mark.parametrize(
    ("version", "kind"),
    [(b"\x00", "p2pkh"), (b"\x05", "p2sh"), (b"\x6f", "p2pkh"), (b"\xc4", "p2sh")],
)
def test_base58_addresses_by_their_version_byte(version: bytes, kind: str) -> None:
    """Legacy and P2SH addresses carry only a version byte: mainnet's, or the one testnet,
    testnet4, signet and regtest share (Bitcoin Core hands the latter out on all four)."""
    from bitcoinlib.encoding import pubkeyhash_to_addr_base58

    program = bytes(range(20))
    address = pubkeyhash_to_addr_base58(program, prefix=version)
    script = (
        b"\x76\xa9\x14" + program + b"\x88\xac"
        if kind == "p2pkh"
        else b"\xa9\x14" + program + b"\x87"
    )
    mainnet = version in (b"\x00", b"\x05")
    for network in ("mainnet", "testnet", "signet", "regtest"):
        if (network == "mainnet") == mainnet:
            assert script_of_address(address, network) == script
        else:
            with pytest.raises(AddressError):
                script_of_address(address, network)
