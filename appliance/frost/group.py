"""The two prime-order groups: Ed25519 through libsodium, secp256k1 through libsecp256k1.

Elements travel as their canonical encodings (`bytes`) and are never the identity; every
point operation is done by the C library. Scalars are Python integers modulo the order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from coincurve import PublicKey
from nacl import bindings as sodium

from .errors import (
    IdentityElementError,
    InvalidElementError,
    NonCanonicalScalarError,
    SmallOrderElementError,
)

__all__ = ["ED25519", "SECP256K1", "Ed25519Group", "Group", "Secp256k1Group"]


class Group:
    """A prime-order group with canonical, strictly checked encodings."""

    name: str
    order: int
    element_size: int
    scalar_size: int
    scalar_byteorder: Literal["little", "big"]

    # -- scalars ---------------------------------------------------------------------
    def encode_scalar(self, k: int) -> bytes:
        return (k % self.order).to_bytes(self.scalar_size, self.scalar_byteorder)

    def decode_scalar(self, data: bytes) -> int:
        if len(data) != self.scalar_size:
            raise NonCanonicalScalarError(
                f"{self.name} scalar must be {self.scalar_size} bytes, got {len(data)}"
            )
        k = int.from_bytes(data, self.scalar_byteorder)
        if k >= self.order:
            raise NonCanonicalScalarError(f"{self.name} scalar is not reduced modulo the order")
        return k

    # -- elements --------------------------------------------------------------------
    def decode_element(self, data: bytes) -> bytes:
        """Return `data` if it canonically encodes a non-identity prime-order element."""
        raise NotImplementedError

    def base_mul(self, k: int) -> bytes:
        """k·G in constant time (k is usually secret)."""
        raise NotImplementedError

    def mul(self, point: bytes, k: int) -> bytes:
        """k·P in constant time."""
        raise NotImplementedError

    def add(self, p: bytes, q: bytes) -> bytes:
        return self.sum((p, q))

    def sum(self, points: Sequence[bytes]) -> bytes:
        raise NotImplementedError

    def neg(self, point: bytes) -> bytes:
        raise NotImplementedError

    def sub(self, p: bytes, q: bytes) -> bytes:
        return self.add(p, self.neg(q))


# --- Ed25519 --------------------------------------------------------------------------

_P25519: Final = 2**255 - 19
_ED_IDENTITY: Final = b"\x01" + bytes(31)
# y-coordinates of the eight small-order points (x is recovered from y and the sign bit).
_ED_SMALL_ORDER_Y: Final = frozenset(
    {
        0,
        1,
        _P25519 - 1,
        int.from_bytes(
            bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
            "little",
        ),
        int.from_bytes(
            bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
            "little",
        ),
    }
)


class Ed25519Group(Group):
    name = "Ed25519"
    order = 2**252 + 27742317777372353535851937790883648493
    element_size = 32
    scalar_size = 32
    scalar_byteorder: Literal["little", "big"] = "little"
    identity = _ED_IDENTITY

    def decode_element(self, data: bytes) -> bytes:
        if len(data) != 32:
            raise InvalidElementError(f"Ed25519 element must be 32 bytes, got {len(data)}")
        y = int.from_bytes(data, "little") & ((1 << 255) - 1)
        if y >= _P25519:
            raise InvalidElementError("Ed25519 element has a non-canonical y-coordinate")
        if y == 1:
            raise IdentityElementError("Ed25519 element is the identity")
        if y in _ED_SMALL_ORDER_Y:
            raise SmallOrderElementError("Ed25519 element has small order")
        # libsodium: canonical, on the curve, not small order, in the prime-order subgroup.
        if not sodium.crypto_core_ed25519_is_valid_point(data):
            raise InvalidElementError(
                "Ed25519 element is not on the curve, not canonical, or not of prime order"
            )
        return bytes(data)

    def base_mul(self, k: int) -> bytes:
        k %= self.order
        if k == 0:
            raise IdentityElementError("scalar multiple of the generator is the identity")
        return sodium.crypto_scalarmult_ed25519_base_noclamp(k.to_bytes(32, "little"))

    def mul(self, point: bytes, k: int) -> bytes:
        k %= self.order
        if k == 0:
            raise IdentityElementError("scalar multiple is the identity")
        try:
            return sodium.crypto_scalarmult_ed25519_noclamp(k.to_bytes(32, "little"), point)
        except Exception as exc:  # libsodium refuses identity results and bad inputs alike
            raise InvalidElementError(f"Ed25519 scalar multiplication failed: {exc}") from exc

    def sum(self, points: Sequence[bytes]) -> bytes:
        if not points:
            raise IdentityElementError("empty sum is the identity")
        total = points[0]
        for point in points[1:]:
            total = sodium.crypto_core_ed25519_add(total, point)
        if total == _ED_IDENTITY:
            raise IdentityElementError("sum of Ed25519 elements is the identity")
        return total

    def neg(self, point: bytes) -> bytes:
        # -(x, y) = (-x, y): flip the sign bit; x is never 0 for accepted elements.
        return point[:31] + bytes((point[31] ^ 0x80,))


# --- secp256k1 ------------------------------------------------------------------------

_PSECP: Final = 2**256 - 2**32 - 977


class Secp256k1Group(Group):
    name = "secp256k1"
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    element_size = 33
    scalar_size = 32
    scalar_byteorder: Literal["little", "big"] = "big"

    def decode_element(self, data: bytes) -> bytes:
        if len(data) != 33:
            raise InvalidElementError(f"secp256k1 element must be 33 bytes, got {len(data)}")
        if data == bytes(33):
            raise IdentityElementError("secp256k1 element is the identity")
        if data[0] not in (2, 3):
            raise InvalidElementError("secp256k1 element must be SEC1-compressed (0x02/0x03)")
        if int.from_bytes(data[1:], "big") >= _PSECP:
            raise InvalidElementError("secp256k1 element has a non-canonical x-coordinate")
        try:
            PublicKey(bytes(data))
        except ValueError as exc:
            raise InvalidElementError("secp256k1 element is not on the curve") from exc
        return bytes(data)

    def base_mul(self, k: int) -> bytes:
        k %= self.order
        if k == 0:
            raise IdentityElementError("scalar multiple of the generator is the identity")
        return PublicKey.from_secret(k.to_bytes(32, "big")).format()

    def mul(self, point: bytes, k: int) -> bytes:
        k %= self.order
        if k == 0:
            raise IdentityElementError("scalar multiple is the identity")
        return PublicKey(point).multiply(k.to_bytes(32, "big")).format()

    def sum(self, points: Sequence[bytes]) -> bytes:
        if not points:
            raise IdentityElementError("empty sum is the identity")
        if len(points) == 1:
            return points[0]
        try:
            return PublicKey.combine_keys([PublicKey(p) for p in points]).format()
        except ValueError as exc:
            raise IdentityElementError("sum of secp256k1 elements is the identity") from exc

    def neg(self, point: bytes) -> bytes:
        return bytes((point[0] ^ 1,)) + point[1:]

    @staticmethod
    def has_even_y(point: bytes) -> bool:
        return point[0] == 2

    @staticmethod
    def xonly(point: bytes) -> bytes:
        return point[1:]

    def lift_x(self, x: bytes) -> bytes:
        """The element with x-coordinate `x` and even y (BIP340 `lift_x`)."""
        if len(x) != 32:
            raise InvalidElementError(f"x-only key must be 32 bytes, got {len(x)}")
        return self.decode_element(b"\x02" + x)


ED25519: Final = Ed25519Group()
SECP256K1: Final = Secp256k1Group()
