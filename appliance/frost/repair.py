"""Share repair: a participant that lost its share gets it back from t others (RTS).

Each helper splits its Lagrange-weighted share into random pieces, one per helper; each
helper sums the pieces it receives; the lost participant sums those sums. No helper and no
piece reveals the repaired share or any helper's share. The repaired share is checked
against the public verifying share before it is accepted.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

from .ciphersuite import Ciphersuite
from .errors import ParameterError
from .keys import (
    KeyShare,
    PublicKeyPackage,
    RandomBytes,
    lagrange_coefficient,
    random_scalar,
    validate_identifiers,
)
from .secret import SecretScalar

__all__ = ["repair_share_step1", "repair_share_step2", "repair_share_step3"]


def repair_share_step1(
    helper: KeyShare,
    helpers: Sequence[int],
    lost: int,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> dict[int, SecretScalar]:
    """Helper `helper` splits λ_helper(lost)·s_helper into one random piece per helper."""
    group = helper.suite.group
    ids = validate_identifiers(group, helpers)
    if len(ids) < helper.threshold:
        raise ParameterError(f"repair needs at least {helper.threshold} helpers, got {len(ids)}")
    if helper.identifier not in ids:
        raise ParameterError(f"participant {helper.identifier} is not among the helpers")
    if lost in ids or lost not in helper.public.identifiers:
        raise ParameterError(f"participant {lost} cannot be repaired by these helpers")
    lam = lagrange_coefficient(group, ids, helper.identifier, at=lost)
    total = lam * helper.signing_share.reveal() % group.order
    pieces = [random_scalar(group, random_bytes) for _ in ids[1:]]
    pieces.insert(0, (total - sum(pieces)) % group.order)
    return {i: SecretScalar(piece) for i, piece in zip(ids, pieces, strict=True)}


def repair_share_step2(suite: Ciphersuite, pieces: Iterable[SecretScalar]) -> SecretScalar:
    """A helper sums the pieces it received from every helper (its own included)."""
    return SecretScalar(sum(p.reveal() for p in pieces) % suite.group.order)


def repair_share_step3(
    identifier: int, sums: Iterable[SecretScalar], public: PublicKeyPackage
) -> KeyShare:
    """The lost participant sums the helpers' sums and checks the result publicly."""
    group = public.suite.group
    value = sum(s.reveal() for s in sums) % group.order
    if value == 0 or group.base_mul(value) != public.verifying_share(identifier):
        raise ParameterError(
            f"repaired share of participant {identifier} does not match its verifying share: "
            "a helper sent a wrong piece"
        )
    return KeyShare(identifier, SecretScalar(value), public)
