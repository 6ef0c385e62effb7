"""Properties of the whole protocols: DKG then signing with any t of n, culprits named,
single-use nonces, refresh and repair, tweaked keys, and independent verifiers agreeing."""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
from coincurve import PublicKeyXOnly
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.frost import (
    ED25519_SHA512,
    SECP256K1_SHA256,
    SECP256K1_TR,
    Ciphersuite,
    FaultyParticipantError,
    InvalidSignatureSharesError,
    NonceReuseError,
    ParameterError,
    Round1Package,
    Round2Package,
    SecretScalar,
    SignatureShare,
    SigningPackage,
    Tweak,
    aggregate,
    commit,
    dkg_finalize,
    dkg_round1,
    dkg_round2,
    refresh_finalize,
    refresh_round1,
    repair_share_step1,
    repair_share_step2,
    repair_share_step3,
    sign,
    signing_key,
    taproot_tweak,
    trusted_dealer_keygen,
    verify_signature_share,
)

from .helpers import run_dkg, sign_with

SUITES = [ED25519_SHA512, SECP256K1_SHA256, SECP256K1_TR]
IDS = ["ed25519", "secp256k1", "taproot"]


def independently_verified(suite: Ciphersuite, key: bytes, message: bytes, sig: bytes) -> bool:
    """Verifiers that share no code with appliance.frost."""
    if suite is ED25519_SHA512:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, message)  # raises if invalid
        return True
    if suite is SECP256K1_TR:
        return PublicKeyXOnly(key[1:]).verify(sig, message)
    return suite.verify(key, message, sig)


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 5)])
def test_dkg_then_every_signer_subset_signs(suite: Ciphersuite, t: int, n: int) -> None:
    shares = run_dkg(suite, t, n)
    public = shares[1].public
    assert all(s.public == public for s in shares.values())
    key = signing_key(public).key
    for signers in itertools.combinations(range(1, n + 1), t):
        message = f"attest {signers}".encode()
        sig = sign_with(shares, signers, message)
        assert suite.verify(key, message, sig)
        assert independently_verified(suite, key, message, sig)
    # More than t signers work too; fewer do not.
    assert suite.verify(key, b"all", sign_with(shares, list(range(1, n + 1)), b"all"))
    with pytest.raises(ParameterError, match="threshold"):
        sign_with(shares, list(range(1, t)), b"too few")


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
def test_a_bad_signature_share_names_its_sender_and_the_retry_succeeds(suite) -> None:
    shares, public = trusted_dealer_keygen(suite, 3, 5)
    signers = [1, 2, 4]
    nonces = {i: commit(shares[i]) for i in signers}
    package = SigningPackage.create(suite, b"payout", [n.commitments for n in nonces.values()])
    sig_shares = [sign(package, nonces[i], shares[i]) for i in signers]
    sig_shares[1] = SignatureShare(2, (sig_shares[1].share + 1) % suite.group.order)
    with pytest.raises(InvalidSignatureSharesError) as caught:
        aggregate(package, sig_shares, public)
    assert caught.value.participants == (2,)
    with pytest.raises(FaultyParticipantError):
        verify_signature_share(package, sig_shares[1], public)
    verify_signature_share(package, sig_shares[0], public)
    # Retry without the culprit, with fresh nonces.
    sig = sign_with(shares, [1, 3, 4], b"payout")
    assert suite.verify(signing_key(public).key, b"payout", sig)


def test_two_bad_shares_are_both_named() -> None:
    shares, public = trusted_dealer_keygen(ED25519_SHA512, 3, 3)
    nonces = {i: commit(shares[i]) for i in (1, 2, 3)}
    package = SigningPackage.create(ED25519_SHA512, b"m", [n.commitments for n in nonces.values()])
    good = sign(package, nonces[2], shares[2])
    bad = [SignatureShare(i, 12345) for i in (1, 3)]
    with pytest.raises(InvalidSignatureSharesError) as caught:
        aggregate(package, [*bad, good], public)
    assert caught.value.participants == (1, 3)


def test_nonces_are_single_use_and_never_serialised() -> None:
    shares, _ = trusted_dealer_keygen(ED25519_SHA512, 2, 3)
    nonces = {i: commit(shares[i]) for i in (1, 2)}
    package = SigningPackage.create(ED25519_SHA512, b"m", [n.commitments for n in nonces.values()])
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            attempt(nonces[1])
    hiding = nonces[1]._hiding.reveal()
    for secret in (hiding, shares[1].signing_share.reveal()):
        assert str(secret) not in repr(nonces[1])
        assert f"{secret:x}" not in repr(nonces[1]) + repr(shares[1])
    sign(package, nonces[1], shares[1])
    with pytest.raises(NonceReuseError):
        sign(package, nonces[1], shares[1])
    # Nonces are spent by the first attempt even when the package is rejected.
    other = commit(shares[2]).commitments
    bad_package = SigningPackage.create(
        ED25519_SHA512, b"m", [other, commit(shares[1]).commitments]
    )
    with pytest.raises(ParameterError):
        sign(bad_package, nonces[2], shares[2])
    assert nonces[2].spent
    with pytest.raises(TypeError):
        pickle.dumps(shares[1])
    with pytest.raises(TypeError):
        pickle.dumps(shares[1].signing_share)


def test_signing_for_a_participant_outside_the_key_is_refused() -> None:
    shares, public = trusted_dealer_keygen(ED25519_SHA512, 2, 3)
    stranger_shares, _ = trusted_dealer_keygen(ED25519_SHA512, 2, 5)
    commitments = [commit(shares[1]).commitments, commit(stranger_shares[4]).commitments]
    package = SigningPackage.create(ED25519_SHA512, b"m", commitments)
    with pytest.raises(ParameterError, match="not part of this key"):
        aggregate(package, [SignatureShare(1, 1), SignatureShare(4, 1)], public)


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
def test_dkg_names_a_participant_with_a_bad_proof(suite) -> None:
    secrets_, packages = {}, {}
    for i in (1, 2, 3):
        secrets_[i], packages[i] = dkg_round1(suite, i, 2, 3)
    # Participant 3 republishes participant 2's proof: its own constant is unproven.
    packages[3] = packages[3]._replace(proof_of_knowledge=packages[2].proof_of_knowledge)
    with pytest.raises(FaultyParticipantError) as caught:
        dkg_round2(secrets_[1], {2: packages[2], 3: packages[3]})
    assert caught.value.participant == 3


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
def test_dkg_names_a_participant_that_sends_a_bad_share(suite) -> None:
    round1 = {i: dkg_round1(suite, i, 2, 3) for i in (1, 2, 3)}
    broadcast = {i: p for i, (_, p) in round1.items()}
    round2 = {
        i: dkg_round2(round1[i][0], {j: p for j, p in broadcast.items() if j != i})
        for i in (1, 2, 3)
    }
    received = {j: round2[j][1][1] for j in (2, 3)}
    good = received[3].share.reveal()
    received[3] = Round2Package(3, 1, SecretScalar((good + 1) % suite.group.order))
    with pytest.raises(FaultyParticipantError) as caught:
        dkg_finalize(round2[1][0], {j: broadcast[j] for j in (2, 3)}, received)
    assert caught.value.participant == 3


def test_dkg_refuses_malformed_round1_packages() -> None:
    suite = ED25519_SHA512
    s1, p1 = dkg_round1(suite, 1, 2, 3)
    _, p2 = dkg_round1(suite, 2, 2, 3)
    _, p3 = dkg_round1(suite, 3, 2, 3)
    cases = {
        "claims another sender": {2: p2, 3: p2},
        "terms": {2: p2, 3: p3._replace(commitment=p3.commitment[:1])},
        "invalid commitment element": {
            2: p2,
            3: p3._replace(commitment=(bytes(32), p3.commitment[1])),
        },
    }
    for expected, packages in cases.items():
        with pytest.raises(FaultyParticipantError, match=expected) as caught:
            dkg_round2(s1, packages)
        assert caught.value.participant == 3
    with pytest.raises(ParameterError):
        dkg_round2(s1, {2: p2})  # a participant is missing
    assert isinstance(p1, Round1Package)


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
def test_refresh_keeps_the_key_and_retires_old_shares(suite) -> None:
    old = run_dkg(suite, 2, 3)
    public = old[1].public
    round1 = {i: refresh_round1(old[i]) for i in (1, 2, 3)}
    packages = {i: r[1] for i, r in round1.items()}
    new = {
        i: refresh_finalize(round1[i][0], packages, {j: round1[j][2][i] for j in (1, 2, 3)})
        for i in (1, 2, 3)
    }
    assert all(s.group_key == public.group_key for s in new.values())
    assert all(s.public == new[1].public for s in new.values())
    assert all(new[i].signing_share.reveal() != old[i].signing_share.reveal() for i in (1, 2, 3))
    key = signing_key(public).key
    assert suite.verify(key, b"after refresh", sign_with(new, [2, 3], b"after refresh"))
    # An old share no longer combines with a new one.
    mixed = {1: old[1], 2: new[2]}
    with pytest.raises(InvalidSignatureSharesError) as caught:
        sign_with(mixed, [1, 2], b"mixed", public=new[2].public)
    assert caught.value.participants == (1,)


def test_refresh_names_a_participant_with_a_bad_delta() -> None:
    old, _ = trusted_dealer_keygen(SECP256K1_TR, 2, 3)
    round1 = {i: refresh_round1(old[i]) for i in (1, 2, 3)}
    packages = {i: r[1] for i, r in round1.items()}
    deltas = {j: round1[j][2][1] for j in (1, 2, 3)}
    deltas[2] = deltas[2]._replace(share=SecretScalar(7))
    with pytest.raises(FaultyParticipantError) as caught:
        refresh_finalize(round1[1][0], packages, deltas)
    assert caught.value.participant == 2


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
def test_repair_restores_a_lost_share(suite) -> None:
    shares, public = trusted_dealer_keygen(suite, 3, 5)
    lost_value = shares[2].signing_share.reveal()
    helpers = [1, 4, 5]
    pieces = {h: repair_share_step1(shares[h], helpers, 2) for h in helpers}
    sums = [repair_share_step2(suite, [pieces[h][j] for h in helpers]) for j in helpers]
    repaired = repair_share_step3(2, sums, public)
    assert repaired.signing_share.reveal() == lost_value
    # No single piece is the share or a helper's share.
    for h in helpers:
        for piece in pieces[h].values():
            assert piece.reveal() not in (lost_value, shares[h].signing_share.reveal())
    repaired_set = {2: repaired, 3: shares[3], 5: shares[5]}
    sig = sign_with(repaired_set, [2, 3, 5], b"repaired")
    assert suite.verify(signing_key(public).key, b"repaired", sig)


def test_repair_with_a_wrong_piece_is_refused() -> None:
    shares, public = trusted_dealer_keygen(ED25519_SHA512, 2, 3)
    pieces = {h: repair_share_step1(shares[h], [1, 3], 2) for h in (1, 3)}
    pieces[3][1] = SecretScalar(99)
    sums = [repair_share_step2(ED25519_SHA512, [pieces[h][j] for h in (1, 3)]) for j in (1, 3)]
    with pytest.raises(ParameterError, match="wrong piece"):
        repair_share_step3(2, sums, public)
    with pytest.raises(ParameterError):
        repair_share_step1(shares[1], [1], 2)  # fewer helpers than the threshold


def test_repair_share_vectors_sum_as_zcash_does(vectors) -> None:
    for folder, suite in [
        ("zcash-frost-ed25519", ED25519_SHA512),
        ("zcash-frost-secp256k1", SECP256K1_SHA256),
        ("zcash-frost-secp256k1-tr", SECP256K1_TR),
    ]:
        v = vectors.json(f"{folder}/repair-share.json")
        group = suite.group
        for section, keys, total in [
            (
                "scalar_generation",
                ["random_scalar_1", "random_scalar_2", "random_scalar_3"],
                "random_scalar_sum",
            ),
            ("sigma_generation", ["sigma_1", "sigma_2", "sigma_3", "sigma_4"], "sigma_sum"),
        ]:
            values = [SecretScalar(group.decode_scalar(bytes.fromhex(v[section][k]))) for k in keys]
            summed = repair_share_step2(suite, values).reveal()
            assert group.encode_scalar(summed).hex() == v[section][total]


def test_taproot_and_deposit_tweaks() -> None:
    """The custody key signs for its Taproot output key and for per-recipient tweaks."""
    shares = run_dkg(SECP256K1_TR, 2, 3)
    internal = shares[1].group_key
    recipient_tweak = Tweak(int.from_bytes(b"recipient-42".rjust(32, b"\0"), "big"), xonly=False)
    deposit_internal = signing_key(shares[1].public, [recipient_tweak]).key
    for tweaks in (
        [taproot_tweak(internal)],
        [recipient_tweak, taproot_tweak(deposit_internal)],
        [taproot_tweak(internal, bytes(range(32)))],
    ):
        message = bytes(32)
        sig = sign_with(shares, [1, 3], message, tweaks)
        output_key = signing_key(shares[1].public, tweaks).key
        assert PublicKeyXOnly(output_key[1:]).verify(sig, message)
        assert not PublicKeyXOnly(internal[1:]).verify(sig, message)
    with pytest.raises(ParameterError, match="cannot be tweaked"):
        SigningPackage.create(ED25519_SHA512, b"m", [], [recipient_tweak])
