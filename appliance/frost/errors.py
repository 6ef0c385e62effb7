"""Typed failures of the threshold-signature core.

Every error that can be traced to one participant carries that participant's identifier, so
the ceremony layer can name, audit and exclude it without parsing messages.
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "EncodingError",
    "FaultyParticipantError",
    "FrostError",
    "IdentityElementError",
    "InvalidElementError",
    "InvalidSignatureSharesError",
    "NonCanonicalScalarError",
    "NonceReuseError",
    "ParameterError",
    "SmallOrderElementError",
]


class FrostError(Exception):
    """Base of every error raised by `appliance.frost`."""


class ParameterError(FrostError, ValueError):
    """The caller passed parameters that cannot work (threshold, identifiers, signer set)."""


class EncodingError(FrostError, ValueError):
    """A byte string is not the canonical encoding of a valid scalar, element or package."""


class NonCanonicalScalarError(EncodingError):
    """A scalar encoding is not reduced modulo the group order (or has the wrong length)."""


class InvalidElementError(EncodingError):
    """A group element encoding is malformed, not canonical, or not a point of the group.

    `term` is the index of the offending input when a multi-element operation failed.
    """

    term: int | None = None


class IdentityElementError(InvalidElementError):
    """A group element is the identity, which FROST never accepts or produces."""


class SmallOrderElementError(InvalidElementError):
    """An Ed25519 element lies in the small-order torsion subgroup."""


class NonceReuseError(FrostError):
    """A signing nonce was offered for a second use; it was wiped after its first."""


class FaultyParticipantError(FrostError):
    """A participant sent something provably wrong; `participant` names it."""

    def __init__(self, participant: int, reason: str) -> None:
        super().__init__(f"participant {participant}: {reason}")
        self.participant = participant
        self.reason = reason


class InvalidSignatureSharesError(FrostError):
    """Aggregation found shares that do not verify; `culprits` lists every sender."""

    def __init__(self, culprits: tuple[FaultyParticipantError, ...]) -> None:
        names = ", ".join(str(c.participant) for c in culprits)
        super().__init__(f"invalid signature share from participant(s) {names}")
        self.culprits = culprits

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(c.participant for c in self.culprits)


class AggregationError(FrostError):
    """The aggregate signature is invalid although every share verified (a bug, not a peer)."""
