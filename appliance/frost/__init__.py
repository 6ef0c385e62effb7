"""Threshold Schnorr signatures for the bridge's keys: FROST (RFC 9591) over Ed25519 and
secp256k1, and FROST for BIP340/Taproot. Pure functions: no I/O, no clock, no global state.

The attestation key uses `ED25519_SHA512`; the custody key uses `SECP256K1_TR`.
"""

from .ciphersuite import (
    CIPHERSUITES,
    ED25519_SHA512,
    SECP256K1_SHA256,
    SECP256K1_TR,
    Ciphersuite,
    TaprootCiphersuite,
    tagged_hash,
)
from .dkg import (
    DkgRound1Secret,
    DkgRound2Secret,
    Round1Package,
    Round2Package,
    dkg_finalize,
    dkg_round1,
    dkg_round2,
    public_key_package,
    verify_proof_of_knowledge,
)
from .errors import (
    AggregationError,
    EncodingError,
    FaultyParticipantError,
    FrostError,
    IdentityElementError,
    InvalidElementError,
    InvalidSignatureSharesError,
    NonCanonicalScalarError,
    NonceReuseError,
    ParameterError,
    SmallOrderElementError,
)
from .keys import (
    KeyShare,
    PublicKeyPackage,
    RandomBytes,
    lagrange_coefficient,
    split,
    trusted_dealer_keygen,
)
from .refresh import RefreshPackage, RefreshSecret, refresh_finalize, refresh_round1
from .repair import repair_share_step1, repair_share_step2, repair_share_step3
from .secret import SecretScalar
from .signing import (
    SignatureShare,
    SigningCommitments,
    SigningNonces,
    SigningPackage,
    aggregate,
    commit,
    sign,
    signing_key,
    verify_signature_share,
)
from .tweak import Tweak, TweakedKey, apply_tweaks, taproot_tweak

__all__ = [
    "CIPHERSUITES",
    "ED25519_SHA512",
    "SECP256K1_SHA256",
    "SECP256K1_TR",
    "AggregationError",
    "Ciphersuite",
    "DkgRound1Secret",
    "DkgRound2Secret",
    "EncodingError",
    "FaultyParticipantError",
    "FrostError",
    "IdentityElementError",
    "InvalidElementError",
    "InvalidSignatureSharesError",
    "KeyShare",
    "NonCanonicalScalarError",
    "NonceReuseError",
    "ParameterError",
    "PublicKeyPackage",
    "RandomBytes",
    "RefreshPackage",
    "RefreshSecret",
    "Round1Package",
    "Round2Package",
    "SecretScalar",
    "SignatureShare",
    "SigningCommitments",
    "SigningNonces",
    "SigningPackage",
    "SmallOrderElementError",
    "TaprootCiphersuite",
    "Tweak",
    "TweakedKey",
    "aggregate",
    "apply_tweaks",
    "commit",
    "dkg_finalize",
    "dkg_round1",
    "dkg_round2",
    "lagrange_coefficient",
    "public_key_package",
    "refresh_finalize",
    "refresh_round1",
    "repair_share_step1",
    "repair_share_step2",
    "repair_share_step3",
    "sign",
    "signing_key",
    "split",
    "tagged_hash",
    "taproot_tweak",
    "trusted_dealer_keygen",
    "verify_proof_of_knowledge",
    "verify_signature_share",
]
