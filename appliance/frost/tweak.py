"""Public tweaks of a threshold key: the BIP341 Taproot tweak and plain (derivation) tweaks.

A tweak list turns the group key P into Q = g·P + t·G (BIP327/BIP 445 semantics, where
an x-only tweak first negates an odd-y key). Each signer applies the same affine map to its
own share, so signing for Q needs no secret beyond the shares of P.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .ciphersuite import TaprootCiphersuite, tagged_hash
from .errors import IdentityElementError, ParameterError
from .group import Group, Secp256k1Group

__all__ = ["Tweak", "TweakedKey", "apply_tweaks", "taproot_tweak"]


class Tweak(NamedTuple):
    """A public scalar added to the key; `xonly` tweaks act on the even-y form (BIP341)."""

    value: int
    xonly: bool


class TweakedKey(NamedTuple):
    """Q = factor·P + offset·G, already normalised to what the suite signs for.

    `key` is the element signatures verify against (even y for BIP340); a share s_i of P
    becomes factor·s_i + offset, a verifying share Y_i becomes factor·Y_i + offset·G.
    """

    key: bytes
    factor: int
    offset: int

    def share(self, group: Group, signing_share: int) -> int:
        return (self.factor * signing_share + self.offset) % group.order

    def verifying_share(self, group: Group, verifying_share: bytes) -> bytes:
        if self.factor == 1 and self.offset == 0:
            return verifying_share
        return group.linear_combination([(verifying_share, self.factor)], base=self.offset)


def taproot_tweak(internal_key: bytes, merkle_root: bytes = b"") -> Tweak:
    """The BIP341 tweak of an internal key (33-byte element or 32-byte x-only).

    An empty `merkle_root` commits to no script path, as BIP86 key-path-only outputs do.
    """
    x_only = internal_key[1:] if len(internal_key) == 33 else internal_key
    if len(x_only) != 32 or len(merkle_root) not in (0, 32):
        raise ParameterError("taproot tweak needs a 32-byte x-only key and a 0/32-byte root")
    value = int.from_bytes(tagged_hash("TapTweak", x_only + merkle_root), "big")
    if value >= Secp256k1Group.order:
        raise ParameterError("taproot tweak is not below the group order")
    return Tweak(value, xonly=True)


def apply_tweaks(
    suite: TaprootCiphersuite, group_key: bytes, tweaks: Sequence[Tweak]
) -> TweakedKey:
    """Apply `tweaks` in order and normalise the result to even y for BIP340 signing."""
    group = suite.group
    order = group.order
    key, factor, offset = group_key, 1, 0
    for tweak in tweaks:
        if not 0 <= tweak.value < order:
            raise ParameterError("The tweak value is out of range.")
        sign = -1 if tweak.xonly and not group.has_even_y(key) else 1
        try:
            key = group.linear_combination([(key, sign)], base=tweak.value)
        except IdentityElementError as exc:
            raise ParameterError("The result of tweaking cannot be infinity.") from exc
        factor = sign * factor
        offset = (sign * offset + tweak.value) % order
    if not group.has_even_y(key):
        key, factor, offset = group.neg(key), -factor, (-offset) % order
    return TweakedKey(key, factor, offset)
