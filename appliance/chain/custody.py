"""The custody key's Bitcoin outputs: its own address (change of withdrawals), one deposit
address per Wire recipient, and the fee reservoir.

Each is a Taproot output of the DKG's internal key P, with public tweaks: a deposit address
adds t = H(P, recipient) to P, then applies the BIP341 tweak with an empty script tree.
The BIP341 tweak always comes last, so no output key is ever the raw DKG key (a
participant could have biased that key to hide a script path it controls).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from appliance.frost import SECP256K1_TR, Tweak, apply_tweaks, tagged_hash, taproot_tweak

from .address import address_of_script, p2tr_script

__all__ = ["DEPOSIT_TAG", "RESERVOIR_TAG", "CustodyKey", "CustodyOutput"]

DEPOSIT_TAG = "wire-mpc/deposit"
RESERVOIR_TAG = "wire-mpc/fee-reservoir"
ORDER = SECP256K1_TR.group.order


@dataclass(frozen=True)
class CustodyOutput:
    """An output the custody key can spend, and the tweaks that sign for it."""

    kind: str  # "custody", "deposit" or "reservoir"
    label: str  # the recipient, for a deposit address
    tweaks: tuple[Tweak, ...]
    output_key: bytes  # 33-byte element, even y
    script: bytes

    @property
    def tweaks_json(self) -> list[list[object]]:
        return [[t.value.to_bytes(32, "big").hex(), t.xonly] for t in self.tweaks]


class CustodyKey:
    def __init__(self, group_key: bytes, network: str) -> None:
        SECP256K1_TR.group.decode_element(group_key)
        self.group_key = group_key
        self.network = network

    def _output(self, kind: str, label: str, plain: Tweak | None) -> CustodyOutput:
        internal = self.group_key
        tweaks: list[Tweak] = []
        if plain is not None:
            tweaks.append(plain)
            internal = apply_tweaks(SECP256K1_TR, self.group_key, tweaks).key
        tweaks.append(taproot_tweak(internal))
        key = apply_tweaks(SECP256K1_TR, self.group_key, tweaks).key
        return CustodyOutput(kind, label, tuple(tweaks), key, p2tr_script(key[1:]))

    def _plain(self, tag: str, label: str) -> Tweak:
        data = self.group_key[1:] + label.encode()
        value = int.from_bytes(tagged_hash(tag, data), "big")
        while not 0 < value < ORDER:  # probability below 2^-127
            data = tagged_hash(tag, data)
            value = int.from_bytes(data, "big")
        return Tweak(value, xonly=False)

    @cached_property
    def custody(self) -> CustodyOutput:
        return self._output("custody", "", None)

    @cached_property
    def reservoir(self) -> CustodyOutput:
        return self._output("reservoir", "", self._plain(RESERVOIR_TAG, ""))

    def deposit(self, recipient: str) -> CustodyOutput:
        """The deposit output of a Wire recipient (any printable name up to 128 characters)."""
        if not 0 < len(recipient) <= 128 or not recipient.isprintable():
            raise ValueError("a recipient is 1 to 128 printable characters")
        return self._output("deposit", recipient, self._plain(DEPOSIT_TAG, recipient))

    def address(self, output: CustodyOutput) -> str:
        return address_of_script(output.script, self.network)
