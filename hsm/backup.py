"""Key-share backups an operator can keep offline and restore onto new hardware.

A backup is JSON: the share encrypted either to a passphrase (scrypt, N = 2^17, r = 8,
p = 1, then AES-256-GCM) or to a recovery X25519 public key (ephemeral X25519, HKDF-SHA256,
AES-256-GCM), plus the public metadata needed to check it:

    {"format": "wire-mpc key-share backup", "version": 1,
     "metadata": {"cluster_id", "node_id", "key_name", "identifier", "created",
                  "ciphersuite", "threshold", "group_key", "verifying_shares"},
     "protection": {"method": "scrypt-aes-256-gcm", "salt", "n", "r", "p"}
                 | {"method": "x25519-hkdf-sha256-aes-256-gcm", "recipient", "ephemeral"},
     "nonce": base64, "ciphertext": base64}

The GCM additional data is the canonical JSON (sorted keys, no spaces) of everything but
nonce and ciphertext, so the metadata and parameters cannot be altered unnoticed.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from appliance.frost import FrostError, KeyShare, PublicKeyPackage, SecretScalar

from .errors import (
    BackupFormatError,
    BackupIntegrityError,
    ForeignBackupError,
    HsmError,
    UnknownKeyError,
    WrongPassphraseError,
)
from .keystore import Keystore
from .vault import ShareRecord, ShareVault, public_metadata, public_package

__all__ = [
    "KeyShareBackup",
    "Passphrase",
    "RecoveryKey",
    "create_backup",
    "generate_recovery_key",
    "load_recovery_key",
    "read_backup",
    "restore_backup",
]

BACKUP_FORMAT = "wire-mpc key-share backup"
BACKUP_VERSION = 1
SCRYPT_N = 2**17
SCRYPT_N_MAX = 2**22  # refuse parameters that would make restoring a denial of service
HKDF_INFO = b"wire-mpc key-share backup v1"


@dataclass(frozen=True)
class Passphrase:
    """An operator passphrase (never logged, never part of a message)."""

    value: str

    def __repr__(self) -> str:
        return "Passphrase(<secret>)"


@dataclass(frozen=True)
class RecoveryKey:
    """A recovery X25519 key: the public half encrypts, the private half (kept offline) decrypts."""

    public: bytes
    private: X25519PrivateKey | None = None

    def __repr__(self) -> str:
        return f"RecoveryKey({self.public.hex()})"


def generate_recovery_key() -> tuple[bytes, RecoveryKey]:
    """A new recovery key: (private key as PKCS#8 PEM, its public half)."""
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, RecoveryKey(private.public_key().public_bytes_raw())


def load_recovery_key(pem: bytes) -> RecoveryKey:
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BackupFormatError(f"recovery key file is not an X25519 PEM key: {exc}") from exc
    if not isinstance(private, X25519PrivateKey):
        raise BackupFormatError("recovery key file holds a key that is not X25519")
    return RecoveryKey(private.public_key().public_bytes_raw(), private)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _scrypt_key(passphrase: Passphrase, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.value.encode())


def _x25519_key(
    private: X25519PrivateKey, peer: bytes, ephemeral: bytes, recipient: bytes
) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer))
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=HKDF_INFO
    ).derive(shared)


def create_backup(
    record: ShareRecord, share: KeyShare, protect: Passphrase | RecoveryKey, created: str
) -> bytes:
    """The backup file's bytes for `share`, protected by a passphrase or a recovery key."""
    metadata = {
        "cluster_id": record.cluster_id,
        "node_id": record.node_id,
        "key_name": record.key_name,
        "identifier": share.identifier,
        "created": created,
        **public_metadata(share.public),
    }
    if isinstance(protect, Passphrase):
        salt = os.urandom(16)
        protection: dict[str, Any] = {
            "method": "scrypt-aes-256-gcm",
            "salt": _b64(salt),
            "n": SCRYPT_N,
            "r": 8,
            "p": 1,
        }
        key = _scrypt_key(protect, salt, SCRYPT_N, 8, 1)
    else:
        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = ephemeral.public_key().public_bytes_raw()
        protection = {
            "method": "x25519-hkdf-sha256-aes-256-gcm",
            "recipient": protect.public.hex(),
            "ephemeral": ephemeral_public.hex(),
        }
        key = _x25519_key(ephemeral, protect.public, ephemeral_public, protect.public)
    header = {
        "format": BACKUP_FORMAT,
        "version": BACKUP_VERSION,
        "metadata": metadata,
        "protection": protection,
    }
    nonce = os.urandom(12)
    plaintext = share.suite.group.encode_scalar(share.signing_share.reveal())
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _canonical(header))
    del plaintext, key
    document = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class KeyShareBackup:
    """A parsed backup file; `unlock` decrypts and checks the share."""

    metadata: dict[str, Any]
    protection: dict[str, Any]
    nonce: bytes
    ciphertext: bytes
    additional_data: bytes

    @property
    def cluster_id(self) -> str:
        return str(self.metadata["cluster_id"])

    @property
    def identifier(self) -> int:
        return int(self.metadata["identifier"])

    @property
    def key_name(self) -> str:
        return str(self.metadata["key_name"])

    @property
    def public(self) -> PublicKeyPackage:
        """The public key package the backup claims (authenticated only once unlocked)."""
        try:
            return public_package(self.metadata)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupFormatError(f"backup metadata is malformed: {exc}") from exc

    def unlock(self, key: Passphrase | RecoveryKey) -> KeyShare:
        method = self.protection["method"]
        if isinstance(key, Passphrase):
            if method != "scrypt-aes-256-gcm":
                raise WrongPassphraseError(f"backup is protected by {method}, not a passphrase")
            n, r, p = (int(self.protection[k]) for k in ("n", "r", "p"))
            if not (SCRYPT_N <= n <= SCRYPT_N_MAX and n & (n - 1) == 0 and r == 8 and p == 1):
                raise BackupFormatError(f"backup scrypt parameters N={n} r={r} p={p} are refused")
            secret = _scrypt_key(key, base64.b64decode(self.protection["salt"]), n, r, p)
            failure = "wrong passphrase, or the backup file was altered"
        else:
            if method != "x25519-hkdf-sha256-aes-256-gcm":
                raise WrongPassphraseError(f"backup is protected by {method}, not a recovery key")
            if key.private is None:
                raise WrongPassphraseError("restoring needs the recovery private key")
            recipient = bytes.fromhex(self.protection["recipient"])
            if recipient != key.public:
                raise WrongPassphraseError(
                    f"backup is encrypted to recovery key {recipient.hex()}, "
                    f"not to {key.public.hex()}"
                )
            ephemeral = bytes.fromhex(self.protection["ephemeral"])
            secret = _x25519_key(key.private, ephemeral, ephemeral, recipient)
            failure = "the recovery key does not open this backup: the file was altered"
        try:
            plaintext = AESGCM(secret).decrypt(self.nonce, self.ciphertext, self.additional_data)
        except InvalidTag:
            raise WrongPassphraseError(failure) from None
        finally:
            del secret
        try:
            public = public_package(self.metadata)
            value = public.suite.group.decode_scalar(plaintext)
        except (ValueError, KeyError) as exc:
            raise BackupFormatError(f"backup metadata or share is malformed: {exc}") from exc
        finally:
            del plaintext
        share = KeyShare(self.identifier, SecretScalar(value), public)
        del value
        try:
            share.check()
        except FrostError:
            share.wipe()
            raise BackupIntegrityError(
                f"backup share of participant {self.identifier} does not match its verifying share"
            ) from None
        return share


def read_backup(data: bytes) -> KeyShareBackup:
    """Parse a backup file; refuse anything truncated, foreign or of an unknown version."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupFormatError(f"backup is truncated or not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != BACKUP_FORMAT:
        raise BackupFormatError("file is not a wire-mpc key-share backup")
    if document.get("version") != BACKUP_VERSION:
        raise BackupFormatError(f"backup version {document.get('version')} is not supported")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        raise BackupFormatError("backup is incomplete: it has no metadata")
    for name, kind in (
        ("cluster_id", str),
        ("node_id", str),
        ("key_name", str),
        ("identifier", int),
    ):
        value = metadata.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BackupFormatError(f"backup metadata.{name} is missing or not a {kind.__name__}")
    try:
        header = {k: document[k] for k in ("format", "version", "metadata", "protection")}
        return KeyShareBackup(
            metadata=dict(document["metadata"]),
            protection=dict(document["protection"]),
            nonce=base64.b64decode(document["nonce"], validate=True),
            ciphertext=base64.b64decode(document["ciphertext"], validate=True),
            additional_data=_canonical(header),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupFormatError(f"backup is incomplete: {exc}") from exc


def restore_backup(
    vault: ShareVault,
    keystore: Keystore,
    data: bytes,
    key: Passphrase | RecoveryKey,
    cluster_id: str,
    node_id: str,
    identifier: int,
    known: Callable[[str], PublicKeyPackage],
) -> ShareRecord:
    """Put this node's share of a key it knows back into the vault, sealed by this token.

    `known(key_name)` is the public key package this node itself holds for the backup's
    key name, and raises `UnknownKeyError` for a name it does not know: the backup must
    carry exactly that package, and its share must be this participant's verifying share.
    Every check runs before anything is written. A record that opens under this token
    and holds the share already is left as it is; one that does not (sealed by a lost
    token, damaged) is replaced: no other share can match the verifying share."""
    backup = read_backup(data)
    if backup.cluster_id != cluster_id:
        raise ForeignBackupError(
            f"backup belongs to cluster {backup.cluster_id!r}, this node to {cluster_id!r}"
        )
    if backup.identifier != identifier:
        raise ForeignBackupError(
            f"backup holds the share of participant {backup.identifier}, "
            f"this node is participant {identifier}"
        )
    expected = known(backup.key_name)
    if backup.public != expected:
        raise UnknownKeyError(
            f"backup of {backup.key_name!r} holds key {backup.public.fingerprint} "
            f"({_differences(backup.public, expected)}); this node holds "
            f"{expected.fingerprint} under that name"
        )
    share = backup.unlock(key)
    try:
        if backup.key_name in vault.names():
            try:
                existing = vault.open(keystore, backup.key_name)
            except HsmError:
                pass  # does not open here, or not as this key: replaced below
            else:
                try:
                    if existing.public == expected and existing.identifier == identifier:
                        return vault.load(backup.key_name)
                finally:
                    existing.wipe()
        return vault.store(keystore, share, cluster_id, node_id, backup.key_name, replace=True)
    finally:
        share.wipe()


def _differences(found: PublicKeyPackage, expected: PublicKeyPackage) -> str:
    """Which parts of a public key package differ, for the operator's error message."""
    parts = [
        name
        for name, a, b in (
            ("ciphersuite", found.suite.context, expected.suite.context),
            ("threshold", found.threshold, expected.threshold),
            ("group key", found.group_key, expected.group_key),
            ("verifying shares", found.verifying_shares, expected.verifying_shares),
        )
        if a != b
    ]
    return "other " + ", ".join(parts)
