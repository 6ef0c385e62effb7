"""`make demo`: threshold signing with both of the bridge's keys, 2-of-3 and 3-of-5.

Keys come from a trusted-dealer split (the appliance itself uses a DKG). Every signature
is checked by verifiers that share no code with the signer: OpenSSL's Ed25519 (through
`cryptography`) for the attestation key, libsecp256k1's BIP340 for the custody key.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

from coincurve import PublicKeyXOnly
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.frost import (
    ED25519_SHA512,
    SECP256K1_TR,
    Ciphersuite,
    KeyShare,
    PublicKeyPackage,
    SigningPackage,
    Tweak,
    aggregate,
    commit,
    sign,
    signing_key,
    taproot_tweak,
    trusted_dealer_keygen,
)


def threshold_sign(
    shares: dict[int, KeyShare],
    public: PublicKeyPackage,
    signers: list[int],
    message: bytes,
    tweaks: list[Tweak],
) -> tuple[bytes, float]:
    suite: Ciphersuite = public.suite
    start = time.perf_counter()
    nonces = {i: commit(shares[i]) for i in signers}
    package = SigningPackage.create(
        suite, message, [n.commitments for n in nonces.values()], tweaks
    )
    sig_shares = [sign(package, nonces[i], shares[i]) for i in signers]
    signature = aggregate(package, sig_shares, public)
    return signature, (time.perf_counter() - start) * 1e3


def ed25519_valid(key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def demo(threshold: int, parties: int, signers: list[int]) -> dict[str, object]:
    print(f"\n== {threshold}-of-{parties}: keys split by a dealer among nodes 1..{parties}")
    attestation_shares, attestation = trusted_dealer_keygen(ED25519_SHA512, threshold, parties)
    custody_shares, custody = trusted_dealer_keygen(SECP256K1_TR, threshold, parties)
    output_tweaks = [taproot_tweak(custody.group_key)]
    output_key = signing_key(custody, output_tweaks).key
    print(f"   attestation key (Ed25519):            {attestation.group_key.hex()}")
    print(f"   custody internal key (secp256k1):     {custody.group_key.hex()}")
    print(f"   custody output key (Taproot, x-only): {output_key[1:].hex()}")

    attestation_message = b"wire-mpc demo attestation: 0.5 BTC to wire:alice"
    sig_a, ms_a = threshold_sign(attestation_shares, attestation, signers, attestation_message, [])
    ok_a = ed25519_valid(attestation.group_key, attestation_message, sig_a)
    print(f"   nodes {signers} sign an attestation: {sig_a.hex()[:32]}… {ms_a:.2f} ms")
    print(f"     OpenSSL Ed25519 verifies it: {ok_a}")

    spend_digest = hashlib.sha256(b"wire-mpc demo withdrawal sighash").digest()
    sig_c, ms_c = threshold_sign(custody_shares, custody, signers, spend_digest, output_tweaks)
    ok_c = PublicKeyXOnly(output_key[1:]).verify(sig_c, spend_digest)
    print(f"   nodes {signers} sign a Taproot key-path digest: {sig_c.hex()[:32]}… {ms_c:.2f} ms")
    print(f"     libsecp256k1 BIP340 verifies it under the output key: {ok_c}")

    fewer = signers[: threshold - 1]
    try:
        threshold_sign(custody_shares, custody, fewer, spend_digest, output_tweaks)
        refused = False
    except ValueError as exc:
        refused = True
        print(f"   nodes {fewer} alone are refused: {exc}")

    for share in [*attestation_shares.values(), *custody_shares.values()]:
        share.wipe()
    return {
        "threshold": threshold,
        "parties": parties,
        "signers": signers,
        "attestation": {
            "group_key": attestation.group_key.hex(),
            "message": attestation_message.hex(),
            "signature": sig_a.hex(),
            "verified_by_openssl_ed25519": ok_a,
            "signing_ms": round(ms_a, 3),
        },
        "custody": {
            "internal_key": custody.group_key.hex(),
            "output_key_xonly": output_key[1:].hex(),
            "message": spend_digest.hex(),
            "signature": sig_c.hex(),
            "verified_by_libsecp256k1_bip340": ok_c,
            "signing_ms": round(ms_c, 3),
        },
        "fewer_than_threshold_refused": refused,
    }


def main() -> int:
    print("wire-mpc demo: threshold signing with the attestation and custody keys")
    runs = [demo(2, 3, [1, 3]), demo(3, 5, [2, 4, 5])]
    summary = {"demo": "threshold signing, dealer split", "runs": runs}
    print("\nSummary (JSON):")
    print(json.dumps(summary, indent=2))
    ok = all(
        r["attestation"]["verified_by_openssl_ed25519"]  # type: ignore[index]
        and r["custody"]["verified_by_libsecp256k1_bip340"]  # type: ignore[index]
        and r["fewer_than_threshold_refused"]
        for r in runs
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
