"""The share vault: one file per key under the node's data directory, holding the public
key package in the clear and the node's share sealed by the HSM.

    {"format": "wire-mpc key share", "version": 1, "cluster_id": …, "node_id": …,
     "key_name": "custody", "ciphersuite": "FROST-secp256k1-SHA256-TR-v1",
     "identifier": 2, "threshold": 2, "group_key": hex,
     "verifying_shares": {"1": hex, …}, "sealed_share": base64 sealed blob}

A share is only ever written sealed; an opened share is checked against its verifying share.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.frost import CIPHERSUITES, FrostError, KeyShare, PublicKeyPackage, SecretScalar

from .errors import SealedBlobError, VaultError
from .keystore import Keystore
from .sealed import SealContext

__all__ = [
    "ShareRecord",
    "ShareVault",
    "open_share",
    "seal_share",
    "share_context",
    "write_private_file",
]

RECORD_FORMAT = "wire-mpc key share"
RECORD_VERSION = 1
SHARE_PURPOSE = "key-share"
_KEY_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def write_private_file(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` atomically with `data`, readable by its owner only (0600); `owner`
    (uid, gid) is set before the file takes its name."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if owner is not None:
            os.chown(temporary, *owner)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass(frozen=True)
class ShareRecord:
    """What the vault keeps for one key: who holds it, the public package, the sealed share."""

    cluster_id: str
    node_id: str
    key_name: str
    identifier: int
    public: PublicKeyPackage
    sealed_share: bytes

    def to_json(self) -> bytes:
        document = {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "key_name": self.key_name,
            **public_metadata(self.public),
            "identifier": self.identifier,
            "sealed_share": base64.b64encode(self.sealed_share).decode(),
        }
        return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ShareRecord:
        try:
            document = json.loads(data)
            if document.get("format") != RECORD_FORMAT or document.get("version") != RECORD_VERSION:
                raise VaultError(f"{where} is not a version-{RECORD_VERSION} key-share record")
            return cls(
                cluster_id=str(document["cluster_id"]),
                node_id=str(document["node_id"]),
                key_name=str(document["key_name"]),
                identifier=int(document["identifier"]),
                public=public_package(document),
                sealed_share=base64.b64decode(document["sealed_share"], validate=True),
            )
        except VaultError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise VaultError(f"{where} is damaged: {exc}") from exc


def public_metadata(public: PublicKeyPackage) -> dict[str, Any]:
    """The public key package as JSON fields (shared by vault records and backups)."""
    return {
        "ciphersuite": public.suite.context.decode(),
        "threshold": public.threshold,
        "group_key": public.group_key.hex(),
        "verifying_shares": {str(i): share.hex() for i, share in public.verifying_shares},
    }


def public_package(document: dict[str, Any]) -> PublicKeyPackage:
    """Parse `public_metadata` back, decoding every element strictly."""
    name = document["ciphersuite"]
    if name not in CIPHERSUITES:
        raise ValueError(f"unknown ciphersuite {name!r}")
    suite = CIPHERSUITES[name]
    group = suite.group
    shares = tuple(
        sorted(
            (int(i), group.decode_element(bytes.fromhex(share)))
            for i, share in document["verifying_shares"].items()
        )
    )
    threshold = int(document["threshold"])
    if not 1 <= threshold <= len(shares):
        raise ValueError(f"threshold {threshold} does not fit {len(shares)} participants")
    return PublicKeyPackage(
        suite, threshold, group.decode_element(bytes.fromhex(document["group_key"])), shares
    )


def share_context(node_id: str, key_name: str, public: PublicKeyPackage) -> SealContext:
    """A share's sealed blob is bound to the node, the key (name and fingerprint) and suite."""
    return SealContext(
        node_id=node_id,
        key_id=f"{key_name}/{public.fingerprint}",
        ciphersuite=public.suite.context.decode(),
        purpose=SHARE_PURPOSE,
    )


def seal_share(keystore: Keystore, share: KeyShare, node_id: str, key_name: str) -> bytes:
    """The share's secret scalar sealed by the HSM for this node and key."""
    group = share.suite.group
    return keystore.seal(
        group.encode_scalar(share.signing_share.reveal()),
        share_context(node_id, key_name, share.public),
    )


def open_share(keystore: Keystore, record: ShareRecord) -> KeyShare:
    """Unseal a record's share and check it against its public verifying share."""
    context = share_context(record.node_id, record.key_name, record.public)
    plaintext = keystore.unseal(record.sealed_share, context)
    try:
        value = record.public.suite.group.decode_scalar(plaintext)
    except ValueError as exc:
        raise SealedBlobError(f"sealed share of key {record.key_name!r} is malformed") from exc
    finally:
        del plaintext
    share = KeyShare(record.identifier, SecretScalar(value), record.public)
    del value
    try:
        share.check()
    except FrostError as exc:
        share.wipe()
        raise VaultError(
            f"share of key {record.key_name!r} does not match its verifying share"
        ) from exc
    return share


class ShareVault:
    """The directory of key-share records (mode 0700, records 0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        # Parsed records by file identity: decoding a public package checks every element.
        self._parsed: dict[str, tuple[tuple[int, int, int], ShareRecord]] = {}

    def _path(self, key_name: str) -> Path:
        if not _KEY_NAME.match(key_name):
            raise VaultError(f"key name {key_name!r} must be lowercase letters, digits and '-'")
        return self.directory / f"{key_name}.json"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def load(self, key_name: str) -> ShareRecord:
        path = self._path(key_name)
        try:
            status = path.stat()
        except FileNotFoundError:
            raise VaultError(f"the vault holds no share of key {key_name!r}") from None
        identity = (status.st_ino, status.st_mtime_ns, status.st_size)
        cached = self._parsed.get(key_name)
        if cached is not None and cached[0] == identity:
            return cached[1]
        record = ShareRecord.from_json(path.read_bytes(), str(path))
        self._parsed[key_name] = (identity, record)
        return record

    def store(
        self,
        keystore: Keystore,
        share: KeyShare,
        cluster_id: str,
        node_id: str,
        key_name: str,
        replace: bool = False,
    ) -> ShareRecord:
        """Seal `share` and write its record; an existing record is kept unless `replace`."""
        path = self._path(key_name)
        if path.exists() and not replace:
            raise VaultError(f"the vault already holds a share of key {key_name!r}")
        share.check()
        record = ShareRecord(
            cluster_id,
            node_id,
            key_name,
            share.identifier,
            share.public,
            seal_share(keystore, share, node_id, key_name),
        )
        write_private_file(path, record.to_json())
        return record

    def open(self, keystore: Keystore, key_name: str) -> KeyShare:
        return open_share(keystore, self.load(key_name))

    def remove(self, key_name: str) -> None:
        self._path(key_name).unlink(missing_ok=True)
