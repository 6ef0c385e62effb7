"""Small drivers that run whole protocols in one process, for the property tests."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.frost import (
    Ciphersuite,
    KeyShare,
    PublicKeyPackage,
    SigningPackage,
    Tweak,
    aggregate,
    commit,
    dkg_finalize,
    dkg_round1,
    dkg_round2,
    sign,
)


def run_dkg(suite: Ciphersuite, threshold: int, n: int) -> dict[int, KeyShare]:
    """Every participant runs the three DKG steps; packages are passed around honestly."""
    ids = range(1, n + 1)
    round1 = {i: dkg_round1(suite, i, threshold, n) for i in ids}
    broadcast = {i: package for i, (_, package) in round1.items()}
    round2 = {i: dkg_round2(round1[i][0], _others(broadcast, i)) for i in ids}
    shares = {}
    for i in ids:
        received = {j: round2[j][1][i] for j in ids if j != i}
        shares[i] = dkg_finalize(round2[i][0], _others(broadcast, i), received)
    return shares


def _others(packages: dict, me: int) -> dict:
    return {j: p for j, p in packages.items() if j != me}


def sign_with(
    shares: dict[int, KeyShare],
    signers: Sequence[int],
    message: bytes,
    tweaks: Sequence[Tweak] = (),
    public: PublicKeyPackage | None = None,
) -> bytes:
    suite = shares[signers[0]].suite
    nonces = {i: commit(shares[i]) for i in signers}
    package = SigningPackage.create(
        suite, message, [n.commitments for n in nonces.values()], tweaks
    )
    sig_shares = [sign(package, nonces[i], shares[i]) for i in signers]
    return aggregate(package, sig_shares, public or shares[signers[0]].public)
