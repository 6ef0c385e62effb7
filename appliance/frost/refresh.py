"""Proactive refresh: every participant gets a new share of the same group key.

Each participant deals a random polynomial with constant term zero and commits to its
non-constant coefficients only, so the sum of all refreshes cannot move the group key. Old
shares become useless with the new ones; the caller deletes them only after every
participant confirms its new share (see the ceremony layer).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .dkg import Round2Package
from .errors import EncodingError, FaultyParticipantError, ParameterError
from .group import Group
from .keys import (
    KeyShare,
    PublicKeyPackage,
    RandomBytes,
    evaluate_commitment,
    evaluate_polynomial,
    random_scalar,
)
from .secret import HoldsSecrets, SecretScalar

__all__ = [
    "RefreshPackage",
    "RefreshSecret",
    "evaluate_refresh_commitment",
    "refresh_finalize",
    "refresh_round1",
]


class RefreshPackage(NamedTuple):
    """Broadcast: commitments to the coefficients of degree 1..t-1 (the constant is zero)."""

    sender: int
    commitment: tuple[bytes, ...]


class RefreshSecret(HoldsSecrets):
    """Kept in memory between the rounds: the zero-constant polynomial's values."""

    __slots__ = ("commitment", "share")

    def __init__(self, share: KeyShare, commitment: tuple[bytes, ...]) -> None:
        self.share = share
        self.commitment = commitment


def refresh_round1(
    share: KeyShare, random_bytes: RandomBytes = secrets.token_bytes
) -> tuple[RefreshSecret, RefreshPackage, dict[int, Round2Package]]:
    """Deal a zero-constant polynomial to every participant of the key (ourselves included).

    Returns our secret state, the broadcast package and one secret delta per participant,
    to be sent point-to-point (our own stays with us).
    """
    group = share.suite.group
    coefficients = [0] + [random_scalar(group, random_bytes) for _ in range(share.threshold - 1)]
    commitment = tuple(group.base_mul(a) for a in coefficients[1:])
    deltas = {
        peer: Round2Package(
            share.identifier, peer, SecretScalar(evaluate_polynomial(group, coefficients, peer))
        )
        for peer in share.public.identifiers
    }
    coefficients.clear()
    package = RefreshPackage(share.identifier, commitment)
    return RefreshSecret(share, commitment), package, deltas


def evaluate_refresh_commitment(group: Group, commitment: Sequence[bytes], x: int) -> bytes:
    """Σ_{k≥1} C_k·x^k for a commitment to the coefficients of degree 1.. (constant zero)."""
    return group.mul(evaluate_commitment(group, commitment, x), x)


def refresh_finalize(
    secret: RefreshSecret,
    packages: Mapping[int, RefreshPackage],
    deltas: Mapping[int, Round2Package],
) -> KeyShare:
    """Check every delta against its sender's commitment; return the refreshed share.

    `packages` and `deltas` must cover every participant of the key, ourselves included.
    """
    share = secret.share
    group = share.suite.group
    me = share.identifier
    everyone = sorted(share.public.identifiers)
    if sorted(packages) != everyone or sorted(deltas) != everyone:
        raise ParameterError("a refresh needs a package and a delta from every participant")
    total = share.signing_share.reveal()
    for sender in everyone:
        package, delta = packages[sender], deltas[sender]
        if package.sender != sender or delta.sender != sender or delta.recipient != me:
            raise FaultyParticipantError(sender, "refresh message is addressed wrongly")
        if len(package.commitment) != share.threshold - 1:
            raise FaultyParticipantError(sender, "refresh commitment has the wrong degree")
        value = delta.share.reveal()
        try:
            for element in package.commitment:
                group.decode_element(element)
            matches = 0 < value < group.order and group.base_mul(
                value
            ) == evaluate_refresh_commitment(group, package.commitment, me)
        except EncodingError:
            matches = False
        if not matches:
            raise FaultyParticipantError(sender, "refresh delta does not match its commitment")
        total = (total + value) % group.order
    verifying_shares = tuple(
        (
            i,
            group.sum(
                [share.public.verifying_share(i)]
                + [evaluate_refresh_commitment(group, packages[j].commitment, i) for j in everyone]
            ),
        )
        for i in everyone
    )
    public = PublicKeyPackage(share.suite, share.threshold, share.group_key, verifying_shares)
    refreshed = KeyShare(me, SecretScalar(total), public)
    refreshed.check()
    return refreshed
