"""Key shares, public key packages, polynomials and the trusted-dealer split.

Shamir shares over the suite's scalar field with Feldman commitments (RFC 9591 §5 and
Appendix C). The dealer exists for tests and demos; the appliance creates keys by DKG.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from .ciphersuite import Ciphersuite
from .errors import FaultyParticipantError, ParameterError
from .group import Group
from .secret import HoldsSecrets, SecretScalar

__all__ = [
    "KeyShare",
    "PublicKeyPackage",
    "RandomBytes",
    "evaluate_commitment",
    "evaluate_polynomial",
    "lagrange_coefficient",
    "random_scalar",
    "split",
    "trusted_dealer_keygen",
    "validate_identifiers",
]

RandomBytes = Callable[[int], bytes]
"""A source of uniformly random bytes; outside tests it must be `secrets.token_bytes`."""


def random_scalar(group: Group, random_bytes: RandomBytes) -> int:
    """A uniform non-zero scalar (64 random bytes reduced: bias below 2^-250)."""
    while True:
        k = int.from_bytes(random_bytes(64), "big") % group.order
        if k:
            return k


def validate_identifiers(group: Group, identifiers: Iterable[int]) -> tuple[int, ...]:
    """Identifiers sorted, checked non-zero, below the order and distinct."""
    ordered = tuple(sorted(identifiers))
    for identifier in ordered:
        if not 0 < identifier < group.order:
            raise ParameterError(f"identifier {identifier} is not a non-zero scalar")
    if len(set(ordered)) != len(ordered):
        raise ParameterError("identifiers are not distinct")
    return ordered


def lagrange_coefficient(
    group: Group, identifiers: Sequence[int], identifier: int, at: int = 0
) -> int:
    """λ_i for interpolating at x = `at` over the set `identifiers` (RFC 9591 §4.2)."""
    if identifier not in identifiers:
        raise ParameterError(f"identifier {identifier} is not in the interpolation set")
    order = group.order
    numerator, denominator = 1, 1
    for other in identifiers:
        if other == identifier:
            continue
        numerator = numerator * (at - other) % order
        denominator = denominator * (identifier - other) % order
    if denominator == 0:
        raise ParameterError("interpolation set has duplicate identifiers")
    return numerator * pow(denominator, -1, order) % order


def evaluate_polynomial(group: Group, coefficients: Sequence[int], x: int) -> int:
    """f(x) for f = coefficients[0] + coefficients[1]·x + … (Horner)."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % group.order
    return value


def evaluate_commitment(group: Group, commitment: Sequence[bytes], x: int) -> bytes:
    """Σ C_k·x^k: the public image of f(x) under a Feldman commitment (constant term first)."""
    terms = []
    power = 1
    for element in commitment:
        terms.append((element, power))
        power = power * x % group.order
    return group.linear_combination(terms)


class PublicKeyPackage(NamedTuple):
    """The public side of a threshold key: group key and every participant's verifying share."""

    suite: Ciphersuite
    threshold: int
    group_key: bytes
    verifying_shares: tuple[tuple[int, bytes], ...]

    @property
    def identifiers(self) -> tuple[int, ...]:
        return tuple(identifier for identifier, _ in self.verifying_shares)

    @property
    def fingerprint(self) -> str:
        """128 bits of SHA-256 over suite and group key, for comparing keys out of band."""
        digest = hashlib.sha256(self.suite.context + b"\0" + self.group_key).hexdigest()[:32]
        return "-".join(digest[i : i + 4] for i in range(0, 32, 4))

    def verifying_share(self, identifier: int) -> bytes:
        for known, share in self.verifying_shares:
            if known == identifier:
                return share
        raise ParameterError(f"participant {identifier} is not part of this key")

    def interpolated_group_key(self, identifiers: Sequence[int]) -> bytes:
        """Σ λ_i·Y_i over `identifiers` (at least `threshold` of them): must equal group_key."""
        group = self.suite.group
        chosen = validate_identifiers(group, identifiers)
        if len(chosen) < self.threshold:
            raise ParameterError("interpolating the group key needs at least t shares")
        return group.linear_combination(
            [(self.verifying_share(i), lagrange_coefficient(group, chosen, i)) for i in chosen]
        )


class KeyShare(HoldsSecrets):
    """One participant's share of a threshold key: the secret share and the public package.

    Holds a secret; it cannot be printed, pickled or copied. `wipe()` when done.
    """

    __slots__ = ("identifier", "public", "signing_share")

    def __init__(self, identifier: int, signing_share: SecretScalar, public: PublicKeyPackage):
        self.identifier = identifier
        self.signing_share = signing_share
        self.public = public

    @property
    def suite(self) -> Ciphersuite:
        return self.public.suite

    @property
    def threshold(self) -> int:
        return self.public.threshold

    @property
    def group_key(self) -> bytes:
        return self.public.group_key

    @property
    def verifying_share(self) -> bytes:
        return self.public.verifying_share(self.identifier)

    def check(self) -> None:
        """Raise unless the secret share matches this participant's verifying share."""
        group = self.suite.group
        if group.base_mul(self.signing_share.reveal()) != self.verifying_share:
            raise FaultyParticipantError(
                self.identifier, "signing share does not match its verifying share"
            )

    def wipe(self) -> None:
        self.signing_share.wipe()

    def __repr__(self) -> str:
        return f"KeyShare(identifier={self.identifier}, group_key={self.group_key.hex()})"


def split(
    suite: Ciphersuite,
    secret: int,
    threshold: int,
    identifiers: Sequence[int],
    random_bytes: RandomBytes = secrets.token_bytes,
) -> tuple[dict[int, KeyShare], PublicKeyPackage]:
    """Shamir-split `secret` among `identifiers`, any `threshold` of whom can sign.

    Shares are returned in memory; a dealer that sends them anywhere must also send the
    public package, so each receiver can check its share (`KeyShare.check`).
    """
    group = suite.group
    ids = validate_identifiers(group, identifiers)
    if not 2 <= threshold <= len(ids):
        raise ParameterError(f"threshold {threshold} must be between 2 and {len(ids)}")
    if not 0 < secret < group.order:
        raise ParameterError("secret must be a non-zero scalar")
    coefficients = [secret] + [random_scalar(group, random_bytes) for _ in range(threshold - 1)]
    values = {i: evaluate_polynomial(group, coefficients, i) for i in ids}
    coefficients.clear()
    public = PublicKeyPackage(
        suite,
        threshold,
        group.base_mul(secret),
        tuple((i, group.base_mul(values[i])) for i in ids),
    )
    return {i: KeyShare(i, SecretScalar(values[i]), public) for i in ids}, public


def trusted_dealer_keygen(
    suite: Ciphersuite,
    threshold: int,
    max_signers: int,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> tuple[dict[int, KeyShare], PublicKeyPackage]:
    """A fresh key split by a dealer among identifiers 1..max_signers (tests and demos only)."""
    secret = random_scalar(suite.group, random_bytes)
    return split(suite, secret, threshold, range(1, max_signers + 1), random_bytes)
