"""Failures of the keystore, each worded for the operator who has to act on it.

Messages never contain a PIN, a passphrase or key material.
"""

from __future__ import annotations

__all__ = [
    "BackupFormatError",
    "BackupIntegrityError",
    "ForeignBackupError",
    "HsmError",
    "MechanismUnsupportedError",
    "ModuleLoadError",
    "PinLockedError",
    "SealedBlobError",
    "SecretUnavailableError",
    "TamperedBlobError",
    "TokenNotFoundError",
    "TokenPolicyError",
    "UnknownKeyError",
    "VaultError",
    "WrongPassphraseError",
    "WrongPinError",
]


class HsmError(Exception):
    """Base of every keystore error."""


class SecretUnavailableError(HsmError):
    """No PIN (or passphrase) could be read from any of the configured sources."""


class ModuleLoadError(HsmError):
    """The PKCS#11 module could not be loaded."""


class TokenNotFoundError(HsmError):
    """No token carries the configured label."""


class WrongPinError(HsmError):
    """The token refused the user PIN."""


class PinLockedError(HsmError):
    """The token's user PIN is locked; only its security officer can unlock it."""


class MechanismUnsupportedError(HsmError):
    """The token lacks a mechanism the keystore needs."""


class TokenPolicyError(HsmError):
    """The token's keys are missing, duplicated or have unsafe attributes."""


class SealedBlobError(HsmError):
    """A sealed blob is malformed or was sealed for another node, key or purpose."""


class TamperedBlobError(SealedBlobError):
    """A sealed blob failed authentication: altered, or sealed by another token."""


class VaultError(HsmError):
    """The share vault on disk is inconsistent or refuses an operation."""


class BackupFormatError(HsmError):
    """A file is not a readable key-share backup (truncated, foreign or unknown version)."""


class WrongPassphraseError(HsmError):
    """A backup could not be decrypted with the given passphrase or recovery key."""


class ForeignBackupError(HsmError):
    """A backup belongs to another cluster or another participant."""


class BackupIntegrityError(HsmError):
    """A decrypted backup share does not match its public verifying share."""


class UnknownKeyError(HsmError):
    """A backup is of a key this node does not hold: another name or epoch, or another
    public key package than the one this node's own ceremony made."""
