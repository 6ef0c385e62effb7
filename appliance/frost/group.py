"""The two prime-order groups: Ed25519 through libsodium, secp256k1 through libsecp256k1.

Elements travel as their canonical encodings (`bytes`) and are never the identity; every
point operation is done by the C library (called through the cffi modules PyNaCl and
coincurve ship). Scalars are Python integers modulo the group order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

from coincurve._libsecp256k1 import ffi as _secp_ffi
from coincurve._libsecp256k1 import lib as _secp
from coincurve.context import GLOBAL_CONTEXT
from nacl._sodium import ffi as _sodium_ffi
from nacl._sodium import lib as _sodium

from .errors import (
    IdentityElementError,
    InvalidElementError,
    NonCanonicalScalarError,
    SmallOrderElementError,
)

__all__ = ["ED25519", "SECP256K1", "Ed25519Group", "Group", "Secp256k1Group"]

Term = tuple[bytes, int]


def _at(error: InvalidElementError, term: int) -> InvalidElementError:
    error.term = term
    return error


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

    def linear_combination(self, terms: Sequence[Term], base: int = 0) -> bytes:
        """Σ k_i·P_i + base·G, constant time in the scalars.

        Every P_i is validated in full as it is used; an invalid one raises
        `InvalidElementError` whose `term` is its index. A zero result raises
        `IdentityElementError`.
        """
        raise NotImplementedError

    def neg(self, point: bytes) -> bytes:
        raise NotImplementedError

    def mul(self, point: bytes, k: int) -> bytes:
        return self.linear_combination([(point, k)])

    def add(self, p: bytes, q: bytes) -> bytes:
        return self.linear_combination([(p, 1), (q, 1)])

    def sub(self, p: bytes, q: bytes) -> bytes:
        return self.linear_combination([(p, 1), (q, -1)])

    def sum(self, points: Sequence[bytes]) -> bytes:
        return self.linear_combination([(p, 1) for p in points])


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
        if not _sodium.crypto_core_ed25519_is_valid_point(bytes(data)):
            raise InvalidElementError(
                "Ed25519 element is not on the curve, not canonical, or not of prime order"
            )
        return bytes(data)

    def base_mul(self, k: int) -> bytes:
        k %= self.order
        if k == 0:
            raise IdentityElementError("scalar multiple of the generator is the identity")
        out = _sodium_ffi.new("unsigned char[32]")
        _sodium.crypto_scalarmult_ed25519_base_noclamp(out, k.to_bytes(32, "little"))
        return bytes(out)

    def _times(self, point: bytes, k: int) -> bytes:
        """k·P for 1 < k < order; libsodium validates P in full (subgroup included)."""
        out = _sodium_ffi.new("unsigned char[32]")
        if _sodium.crypto_scalarmult_ed25519_noclamp(out, k.to_bytes(32, "little"), point) == 0:
            return bytes(out)
        self.decode_element(point)  # raises the precise reason
        raise InvalidElementError("Ed25519 scalar multiplication failed")

    def linear_combination(self, terms: Sequence[Term], base: int = 0) -> bytes:
        order = self.order
        parts: list[bytes] = []
        for index, (point, k) in enumerate(terms):
            k %= order
            try:
                if k in (0, 1, order - 1) or len(point) != 32:
                    self.decode_element(point)
                    if k:
                        parts.append(point if k == 1 else self.neg(point))
                else:
                    parts.append(self._times(point, k))
            except InvalidElementError as exc:
                raise _at(exc, index) from None
        if base % order:
            parts.append(self.base_mul(base))
        if not parts:
            raise IdentityElementError("linear combination is the identity")
        total = parts[0]
        out = _sodium_ffi.new("unsigned char[32]")
        for part in parts[1:]:
            _sodium.crypto_core_ed25519_add(out, total, part)
            total = bytes(out)
        if total == _ED_IDENTITY:
            raise IdentityElementError("linear combination is the identity")
        return total

    def neg(self, point: bytes) -> bytes:
        # -(x, y) = (-x, y): flip the sign bit; x is never 0 for accepted elements.
        return point[:31] + bytes((point[31] ^ 0x80,))

    def verify_rfc8032(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """libsodium's Ed25519 verification (strict RFC 8032: canonical, no small order)."""
        if len(public_key) != 32 or len(signature) != 64:
            return False
        signed = signature + message
        opened = _sodium_ffi.new("unsigned char[]", len(signed))
        size = _sodium_ffi.new("unsigned long long *")
        return bool(_sodium.crypto_sign_open(opened, size, signed, len(signed), public_key) == 0)


# --- secp256k1 ------------------------------------------------------------------------

_PSECP: Final = 2**256 - 2**32 - 977
_CTX: Final = GLOBAL_CONTEXT.ctx


class Secp256k1Group(Group):
    name = "secp256k1"
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    element_size = 33
    scalar_size = 32
    scalar_byteorder: Literal["little", "big"] = "big"

    def _parse(self, data: bytes) -> Any:
        if len(data) != 33:
            raise InvalidElementError(f"secp256k1 element must be 33 bytes, got {len(data)}")
        if data[0] not in (2, 3):
            if data == bytes(33):
                raise IdentityElementError("secp256k1 element is the identity")
            raise InvalidElementError("secp256k1 element must be SEC1-compressed (0x02/0x03)")
        if int.from_bytes(data[1:], "big") >= _PSECP:
            raise InvalidElementError("secp256k1 element has a non-canonical x-coordinate")
        point = _secp_ffi.new("secp256k1_pubkey *")
        if not _secp.secp256k1_ec_pubkey_parse(_CTX, point, bytes(data), 33):
            raise InvalidElementError("secp256k1 element is not on the curve")
        return point

    @staticmethod
    def _serialize(point: Any) -> bytes:
        out = _secp_ffi.new("unsigned char[33]")
        size = _secp_ffi.new("size_t *", 33)
        _secp.secp256k1_ec_pubkey_serialize(_CTX, out, size, point, _secp.SECP256K1_EC_COMPRESSED)
        return bytes(out)

    def decode_element(self, data: bytes) -> bytes:
        self._parse(data)
        return bytes(data)

    def base_mul(self, k: int) -> bytes:
        k %= self.order
        if k == 0:
            raise IdentityElementError("scalar multiple of the generator is the identity")
        point = _secp_ffi.new("secp256k1_pubkey *")
        _secp.secp256k1_ec_pubkey_create(_CTX, point, k.to_bytes(32, "big"))
        return self._serialize(point)

    def linear_combination(self, terms: Sequence[Term], base: int = 0) -> bytes:
        order = self.order
        parts = []
        for index, (data, k) in enumerate(terms):
            try:
                point = self._parse(data)
            except InvalidElementError as exc:
                raise _at(exc, index) from None
            k %= order
            if k == 0:
                continue
            if k != 1:
                _secp.secp256k1_ec_pubkey_tweak_mul(_CTX, point, k.to_bytes(32, "big"))
            parts.append(point)
        if base % order:
            point = _secp_ffi.new("secp256k1_pubkey *")
            _secp.secp256k1_ec_pubkey_create(_CTX, point, (base % order).to_bytes(32, "big"))
            parts.append(point)
        if not parts:
            raise IdentityElementError("linear combination is the identity")
        if len(parts) == 1:
            return self._serialize(parts[0])
        total = _secp_ffi.new("secp256k1_pubkey *")
        if not _secp.secp256k1_ec_pubkey_combine(_CTX, total, parts, len(parts)):
            raise IdentityElementError("linear combination is the identity")
        return self._serialize(total)

    def neg(self, point: bytes) -> bytes:
        return bytes((point[0] ^ 1,)) + point[1:]

    @staticmethod
    def has_even_y(point: bytes) -> bool:
        return point[0] == 2

    def lift_x(self, x: bytes) -> bytes:
        """The element with x-coordinate `x` and even y (BIP340 `lift_x`)."""
        if len(x) != 32:
            raise InvalidElementError(f"x-only key must be 32 bytes, got {len(x)}")
        return self.decode_element(b"\x02" + x)

    def verify_bip340(self, x_only: bytes, message: bytes, signature: bytes) -> bool:
        """libsecp256k1's BIP340 verification."""
        if len(x_only) != 32 or len(signature) != 64:
            return False
        key = _secp_ffi.new("secp256k1_xonly_pubkey *")
        if not _secp.secp256k1_xonly_pubkey_parse(_CTX, key, x_only):
            return False
        return bool(_secp.secp256k1_schnorrsig_verify(_CTX, signature, message, len(message), key))


ED25519: Final = Ed25519Group()
SECP256K1: Final = Secp256k1Group()
