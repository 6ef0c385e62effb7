"""FROST signing: round 1 (nonces and commitments), round 2 (signature shares), aggregation.

RFC 9591 §5 for every suite; for the Taproot suite the key is tweaked and normalised to even
y and the nonces are negated when the group commitment has odd y, as BIP340 requires.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .ciphersuite import Ciphersuite, TaprootCiphersuite
from .errors import (
    AggregationError,
    EncodingError,
    FaultyParticipantError,
    FrostError,
    InvalidElementError,
    InvalidSignatureSharesError,
    NonceReuseError,
    ParameterError,
)
from .keys import KeyShare, PublicKeyPackage, RandomBytes, lagrange_coefficient
from .secret import HoldsSecrets, SecretScalar
from .tweak import Tweak, TweakedKey, apply_tweaks

__all__ = [
    "SignatureShare",
    "SigningCommitments",
    "SigningNonces",
    "SigningPackage",
    "aggregate",
    "commit",
    "sign",
    "signing_key",
    "verify_signature_share",
]


class SigningCommitments(NamedTuple):
    """A signer's public round-1 output for one signature: D = d·G, E = e·G."""

    identifier: int
    hiding: bytes
    binding: bytes


class SignatureShare(NamedTuple):
    """A signer's round-2 output z_i."""

    identifier: int
    share: int


class SigningNonces(HoldsSecrets):
    """A signer's secret nonce pair for exactly one signature.

    The first call to `sign` spends it, successful or not: the scalars are wiped and any
    second use raises `NonceReuseError`. It cannot be printed, pickled or copied, so it
    cannot leave the process by accident.
    """

    __slots__ = ("_binding", "_hiding", "commitments")

    def __init__(self, hiding: int, binding: int, commitments: SigningCommitments) -> None:
        self._hiding = SecretScalar(hiding)
        self._binding = SecretScalar(binding)
        self.commitments = commitments

    @property
    def spent(self) -> bool:
        return self._hiding.wiped

    def _spend(self) -> tuple[int, int]:
        if self._hiding.wiped:
            raise NonceReuseError(
                f"nonces of participant {self.commitments.identifier} were already used"
            )
        pair = (self._hiding.reveal(), self._binding.reveal())
        self._hiding.wipe()
        self._binding.wipe()
        return pair

    def __repr__(self) -> str:
        state = "spent" if self.spent else "unspent"
        return f"SigningNonces(identifier={self.commitments.identifier}, {state})"


def commit(share: KeyShare, random_bytes: RandomBytes = secrets.token_bytes) -> SigningNonces:
    """Round 1: fresh nonces hedged with the signing share (RFC 9591 §4.1, §5.1).

    `random_bytes` must be a CSPRNG; it is a parameter so vector tests can replay the RFC's.
    """
    suite = share.suite
    group = suite.group
    secret_encoding = group.encode_scalar(share.signing_share.reveal())
    hiding = suite.H3(random_bytes(32) + secret_encoding)
    binding = suite.H3(random_bytes(32) + secret_encoding)
    commitments = SigningCommitments(
        share.identifier, group.base_mul(hiding), group.base_mul(binding)
    )
    return SigningNonces(hiding, binding, commitments)


@dataclass(frozen=True, slots=True)
class SigningPackage:
    """What the coordinator asks the signers to sign: one message, its signers' commitments
    (sorted by identifier) and the public tweaks of the key.

    Build it with `SigningPackage.create`. Commitment elements are validated in full by the
    first operation that uses them (round 2 or aggregation), which names the participant
    whose commitment is bad; the values derived from the package (binding factors, group
    commitment, challenge) are computed once and kept with it.
    """

    suite: Ciphersuite
    message: bytes
    commitments: tuple[SigningCommitments, ...]
    tweaks: tuple[Tweak, ...] = ()
    _sessions: dict[PublicKeyPackage, _Session] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def create(
        cls,
        suite: Ciphersuite,
        message: bytes,
        commitments: Iterable[SigningCommitments],
        tweaks: Iterable[Tweak] = (),
    ) -> SigningPackage:
        group = suite.group
        ordered = tuple(sorted(commitments, key=lambda c: c.identifier))
        seen: set[int] = set()
        for c in ordered:
            if not 0 < c.identifier < group.order:
                raise ParameterError(f"identifier {c.identifier} is not a non-zero scalar")
            if c.identifier in seen:
                raise ParameterError(f"participant {c.identifier} committed twice")
            seen.add(c.identifier)
            if len(c.hiding) != group.element_size or len(c.binding) != group.element_size:
                raise FaultyParticipantError(c.identifier, "nonce commitment has the wrong size")
        tweak_list = tuple(tweaks)
        if tweak_list and not isinstance(suite, TaprootCiphersuite):
            raise ParameterError(f"{suite.name} keys cannot be tweaked")
        return cls(suite, bytes(message), ordered, tweak_list)

    @property
    def identifiers(self) -> tuple[int, ...]:
        return tuple(c.identifier for c in self.commitments)

    def commitments_of(self, identifier: int) -> SigningCommitments:
        for c in self.commitments:
            if c.identifier == identifier:
                return c
        raise ParameterError(f"participant {identifier} has no commitment in this package")


def signing_key(public: PublicKeyPackage, tweaks: Sequence[Tweak] = ()) -> TweakedKey:
    """The key a signature made with `tweaks` verifies under, and how shares map onto it."""
    suite = public.suite
    if isinstance(suite, TaprootCiphersuite):
        return apply_tweaks(suite, public.group_key, tweaks)
    if tweaks:
        raise ParameterError(f"{suite.name} keys cannot be tweaked")
    return TweakedKey(public.group_key, 1, 0)


class _Session(NamedTuple):
    """Everything round 2 and aggregation derive from a package (RFC 9591 §4.4-4.6)."""

    key: TweakedKey
    binding_factors: dict[int, int]
    commitment: bytes  # the group commitment R, normalised for the suite
    negate_nonces: bool
    challenge: int


def _session(
    package: SigningPackage,
    public: PublicKeyPackage,
    own: tuple[int, int, int] | None = None,
) -> _Session:
    """Derive (or recall) the package's session under `public`.

    `own` = (identifier, d, e) lets a signer compute its own commitment share as
    (d + e·ρ)·G instead of multiplying its own public commitments.
    """
    cached = package._sessions.get(public)
    if cached is not None:
        return cached
    suite = package.suite
    if public.suite is not suite:
        raise ParameterError("signing package and key belong to different ciphersuites")
    group = suite.group
    ids = package.identifiers
    if len(ids) < public.threshold:
        raise ParameterError(f"{len(ids)} signers cannot reach the threshold {public.threshold}")
    known = set(public.identifiers)
    strangers = [i for i in ids if i not in known]
    if strangers:
        raise ParameterError(f"participants {strangers} are not part of this key")
    key = signing_key(public, package.tweaks)
    encoded = b"".join(
        group.encode_scalar(c.identifier) + c.hiding + c.binding for c in package.commitments
    )
    prefix = key.key + suite.H4(package.message) + suite.H5(encoded)
    factors = {i: suite.H1(prefix + group.encode_scalar(i)) for i in ids}
    terms: list[tuple[bytes, int]] = []
    owners: list[int] = []
    base = 0
    for c in package.commitments:
        rho = factors[c.identifier]
        if own is not None and own[0] == c.identifier:
            base = own[1] + own[2] * rho
        else:
            terms += [(c.hiding, 1), (c.binding, rho)]
            owners += [c.identifier, c.identifier]
    try:
        commitment = group.linear_combination(terms, base)
    except InvalidElementError as exc:
        if exc.term is None:
            raise FrostError(f"group commitment is invalid: {exc}") from exc
        raise FaultyParticipantError(owners[exc.term], f"invalid nonce commitment: {exc}") from exc
    negate = suite.needs_negation(commitment)
    if negate:
        commitment = group.neg(commitment)
    challenge = suite.challenge(commitment, key.key, package.message)
    session = _Session(key, factors, commitment, negate, challenge)
    package._sessions[public] = session
    return session


def sign(package: SigningPackage, nonces: SigningNonces, share: KeyShare) -> SignatureShare:
    """Round 2: this signer's share of the signature over `package` (RFC 9591 §5.2).

    Spends `nonces`. The caller must have checked `package.message` against its own view
    of what should be signed; this function only checks the package is well-formed and
    carries this signer's own commitments.
    """
    d, e = nonces._spend()
    suite = package.suite
    group = suite.group
    me = share.identifier
    if package.commitments_of(me) != nonces.commitments:
        raise ParameterError(f"package carries other commitments for participant {me}")
    session = _session(package, share.public, own=(me, d, e))
    if session.negate_nonces:
        d, e = group.order - d, group.order - e
    lam = lagrange_coefficient(group, package.identifiers, me)
    s = session.key.share(group, share.signing_share.reveal())
    z = (d + e * session.binding_factors[me] + lam * s * session.challenge) % group.order
    return SignatureShare(me, z)


def _share_is_valid(
    package: SigningPackage, public: PublicKeyPackage, session: _Session, share: SignatureShare
) -> bool:
    """z_i·G == ±(D_i + ρ_i·E_i) + c·λ_i·Y_i (RFC 9591 §5.4; ± for BIP340's nonce parity)."""
    group = package.suite.group
    i = share.identifier
    if not 0 < share.share < group.order:
        return False
    c = package.commitments_of(i)
    sign = -1 if session.negate_nonces else 1
    verifying_share = session.key.verifying_share(group, public.verifying_share(i))
    lam = lagrange_coefficient(group, package.identifiers, i)
    try:
        expected = group.linear_combination(
            [
                (c.hiding, sign),
                (c.binding, sign * session.binding_factors[i]),
                (verifying_share, session.challenge * lam),
            ]
        )
    except EncodingError:
        return False
    return expected == group.base_mul(share.share)


def verify_signature_share(
    package: SigningPackage, share: SignatureShare, public: PublicKeyPackage
) -> None:
    """Raise `FaultyParticipantError` unless `share` is valid (RFC 9591 §5.4)."""
    if share.identifier not in package.identifiers:
        raise ParameterError(f"participant {share.identifier} did not commit in this package")
    if not _share_is_valid(package, public, _session(package, public), share):
        raise FaultyParticipantError(share.identifier, "signature share does not verify")


def aggregate(
    package: SigningPackage, shares: Iterable[SignatureShare], public: PublicKeyPackage
) -> bytes:
    """Combine the signature shares into a signature that verifies under the (tweaked) key.

    Every share is accounted for: the aggregate is verified against the group key, which
    fails if any share is wrong; when it fails, each share is verified on its own and
    `InvalidSignatureSharesError` names every signer whose share is bad (RFC 9591 §5.3-5.4).
    """
    by_id = {}
    for s in shares:
        if s.identifier in by_id:
            raise FaultyParticipantError(s.identifier, "sent two signature shares")
        by_id[s.identifier] = s
    expected = set(package.identifiers)
    missing = sorted(expected - by_id.keys())
    extra = sorted(by_id.keys() - expected)
    if missing or extra:
        raise ParameterError(f"signature shares missing from {missing}, unexpected from {extra}")
    suite = package.suite
    session = _session(package, public)
    z = sum(s.share for s in by_id.values()) % suite.group.order
    signature = suite.encode_signature(session.commitment, z)
    if suite.verify(session.key.key, package.message, signature):
        return signature
    culprits = tuple(
        FaultyParticipantError(i, "signature share does not verify")
        for i in package.identifiers
        if not _share_is_valid(package, public, session, by_id[i])
    )
    if culprits:
        raise InvalidSignatureSharesError(culprits)
    raise AggregationError("aggregate signature is invalid although every share verified")
