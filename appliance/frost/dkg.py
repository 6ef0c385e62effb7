"""Pedersen distributed key generation with proofs of knowledge (as the ZF `frost-core` DKG).

Three local steps per participant; the caller moves the packages. Round-1 packages are
broadcast and must be echo-checked by the caller (every participant must have received the
same set) before round 2; round-2 packages are secret and go point-to-point, encrypted.
Anything provably wrong raises `FaultyParticipantError` naming its sender.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .ciphersuite import Ciphersuite
from .errors import EncodingError, FaultyParticipantError, ParameterError
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
    "DkgRound1Secret",
    "DkgRound2Secret",
    "Round1Package",
    "Round2Package",
    "dkg_finalize",
    "dkg_round1",
    "dkg_round2",
    "public_key_package",
    "verify_proof_of_knowledge",
]


class Round1Package(NamedTuple):
    """Broadcast: the Feldman commitment to the sender's polynomial and a proof that the
    sender knows its constant term (stops rogue-key attacks)."""

    sender: int
    commitment: tuple[bytes, ...]
    proof_of_knowledge: bytes


class Round2Package(NamedTuple):
    """Point-to-point and secret: f_sender(recipient)."""

    sender: int
    recipient: int
    share: SecretScalar


class DkgRound1Secret(HoldsSecrets):
    """Kept in memory between round 1 and round 2: the secret polynomial."""

    __slots__ = ("coefficients", "commitment", "identifier", "max_signers", "suite", "threshold")

    def __init__(
        self,
        suite: Ciphersuite,
        identifier: int,
        threshold: int,
        max_signers: int,
        coefficients: list[SecretScalar],
        commitment: tuple[bytes, ...],
    ) -> None:
        self.suite = suite
        self.identifier = identifier
        self.threshold = threshold
        self.max_signers = max_signers
        self.coefficients = coefficients
        self.commitment = commitment


class DkgRound2Secret(HoldsSecrets):
    """Kept in memory between round 2 and finalisation: f_self(self)."""

    __slots__ = ("commitment", "identifier", "max_signers", "own_share", "suite", "threshold")

    def __init__(
        self,
        suite: Ciphersuite,
        identifier: int,
        threshold: int,
        max_signers: int,
        own_share: SecretScalar,
        commitment: tuple[bytes, ...],
    ) -> None:
        self.suite = suite
        self.identifier = identifier
        self.threshold = threshold
        self.max_signers = max_signers
        self.own_share = own_share
        self.commitment = commitment


def _pok_challenge(suite: Ciphersuite, identifier: int, key: bytes, nonce: bytes) -> int:
    group = suite.group
    return suite.HDKG(group.encode_scalar(identifier) + key + nonce)


def dkg_round1(
    suite: Ciphersuite,
    identifier: int,
    threshold: int,
    max_signers: int,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> tuple[DkgRound1Secret, Round1Package]:
    """Choose a random polynomial of degree threshold-1, commit to it and prove the constant."""
    group = suite.group
    if not 2 <= threshold <= max_signers:
        raise ParameterError(f"threshold {threshold} must be between 2 and {max_signers}")
    if not 0 < identifier < group.order:
        raise ParameterError(f"identifier {identifier} is not a non-zero scalar")
    coefficients = [random_scalar(group, random_bytes) for _ in range(threshold)]
    commitment = tuple(group.base_mul(a) for a in coefficients)
    k = random_scalar(group, random_bytes)
    k, nonce = suite.even_nonce(k, group.base_mul(k))
    c = _pok_challenge(suite, identifier, commitment[0], nonce)
    mu = (k + coefficients[0] * c) % group.order
    proof = suite.encode_signature(nonce, mu)
    secret = DkgRound1Secret(
        suite,
        identifier,
        threshold,
        max_signers,
        [SecretScalar(a) for a in coefficients],
        commitment,
    )
    return secret, Round1Package(identifier, commitment, proof)


def verify_proof_of_knowledge(suite: Ciphersuite, package: Round1Package) -> None:
    """Raise `FaultyParticipantError` unless the sender proved knowledge of its constant."""
    group = suite.group
    try:
        nonce, mu = suite.decode_signature(package.proof_of_knowledge)
        key = package.commitment[0]
        c = _pok_challenge(suite, package.sender, key, nonce)
        expected = group.linear_combination([(key, -c)], base=mu)
    except (EncodingError, IndexError) as exc:
        raise FaultyParticipantError(
            package.sender, f"malformed proof of knowledge: {exc}"
        ) from exc
    if expected != nonce:
        raise FaultyParticipantError(package.sender, "invalid proof of knowledge")


def _check_round1_packages(
    secret: DkgRound1Secret | DkgRound2Secret, packages: Mapping[int, Round1Package]
) -> list[Round1Package]:
    group = secret.suite.group
    others = sorted(packages)
    if secret.identifier in packages:
        raise ParameterError("round-1 packages must not include our own")
    if len(others) != secret.max_signers - 1:
        raise ParameterError(
            f"expected round-1 packages from {secret.max_signers - 1} participants, "
            f"got {len(others)}"
        )
    checked = []
    for sender in others:
        package = packages[sender]
        if package.sender != sender or not 0 < sender < group.order:
            raise FaultyParticipantError(sender, "round-1 package claims another sender")
        if len(package.commitment) != secret.threshold:
            raise FaultyParticipantError(
                sender, f"commitment has {len(package.commitment)} terms, not {secret.threshold}"
            )
        try:
            for element in package.commitment:
                group.decode_element(element)
        except EncodingError as exc:
            raise FaultyParticipantError(sender, f"invalid commitment element: {exc}") from exc
        checked.append(package)
    return checked


def dkg_round2(
    secret: DkgRound1Secret, round1_packages: Mapping[int, Round1Package]
) -> tuple[DkgRound2Secret, dict[int, Round2Package]]:
    """Check every peer's proof, then evaluate our polynomial at each peer's identifier."""
    suite = secret.suite
    group = suite.group
    for package in _check_round1_packages(secret, round1_packages):
        verify_proof_of_knowledge(suite, package)
    coefficients = [c.reveal() for c in secret.coefficients]
    outgoing = {
        peer: Round2Package(
            secret.identifier,
            peer,
            SecretScalar(evaluate_polynomial(group, coefficients, peer)),
        )
        for peer in sorted(round1_packages)
    }
    own = SecretScalar(evaluate_polynomial(group, coefficients, secret.identifier))
    coefficients.clear()
    for c in secret.coefficients:
        c.wipe()
    return (
        DkgRound2Secret(
            suite, secret.identifier, secret.threshold, secret.max_signers, own, secret.commitment
        ),
        outgoing,
    )


def dkg_finalize(
    secret: DkgRound2Secret,
    round1_packages: Mapping[int, Round1Package],
    round2_packages: Mapping[int, Round2Package],
) -> KeyShare:
    """Check every received share against its sender's commitment and build our key share."""
    suite = secret.suite
    group = suite.group
    me = secret.identifier
    packages = _check_round1_packages(secret, round1_packages)
    if sorted(round2_packages) != sorted(round1_packages):
        raise ParameterError("round-2 packages must come from exactly the round-1 senders")
    total = secret.own_share.reveal()
    for package in packages:
        received = round2_packages[package.sender]
        if received.sender != package.sender or received.recipient != me:
            raise FaultyParticipantError(package.sender, "round-2 package is addressed wrongly")
        value = received.share.reveal()
        try:
            matches = 0 < value < group.order and group.base_mul(value) == evaluate_commitment(
                group, package.commitment, me
            )
        except EncodingError:
            matches = False
        if not matches:
            raise FaultyParticipantError(package.sender, "secret share does not match commitment")
        total = (total + value) % group.order
    commitments = [secret.commitment] + [p.commitment for p in packages]
    identifiers = sorted([me] + [p.sender for p in packages])
    public = public_key_package(suite, secret.threshold, identifiers, commitments)
    share = KeyShare(me, SecretScalar(total), public)
    secret.own_share.wipe()
    share.check()
    return share


def public_key_package(
    suite: Ciphersuite,
    threshold: int,
    identifiers: Sequence[int],
    commitments: Sequence[Sequence[bytes]],
) -> PublicKeyPackage:
    """Group key and every verifying share from all participants' Feldman commitments."""
    group = suite.group
    summed = [group.sum([c[k] for c in commitments]) for k in range(threshold)]
    return PublicKeyPackage(
        suite,
        threshold,
        summed[0],
        tuple((i, evaluate_commitment(group, summed, i)) for i in sorted(identifiers)),
    )
