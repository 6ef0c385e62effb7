"""Where the keystore finds its module, its token and its PIN.

Secrets are never part of the configuration JSON: a PIN is read, in this order, from a
systemd credential (`$CREDENTIALS_DIRECTORY/<name>`), from a file readable by its owner
only, or, for development, from an environment variable.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SecretUnavailableError

__all__ = ["SOFTHSM_MODULE", "HsmConfig", "SecretSource", "read_secret"]

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


@dataclass(frozen=True)
class SecretSource:
    """The places a secret may come from, tried in order: credential, file, environment."""

    credential: str
    file: Path | None = None
    environment: str | None = None

    def describe(self) -> str:
        places = [f"systemd credential '{self.credential}'"]
        if self.file is not None:
            places.append(f"file {self.file}")
        if self.environment is not None:
            places.append(f"environment variable {self.environment}")
        return ", ".join(places)


def read_secret(source: SecretSource) -> str:
    """The secret from the first source that has it; a file must be private to its owner."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        credential = Path(directory) / source.credential
        if credential.is_file():
            return _strip(credential.read_text(), f"credential '{source.credential}'")
    if source.file is not None and source.file.exists():
        mode = stat.S_IMODE(source.file.stat().st_mode)
        if mode & 0o077:
            raise SecretUnavailableError(
                f"{source.file} has mode {mode:04o}; a secret file must be readable by its "
                f"owner only (chmod 600 {source.file})"
            )
        return _strip(source.file.read_text(), str(source.file))
    if source.environment is not None and os.environ.get(source.environment):
        return os.environ[source.environment]
    raise SecretUnavailableError(f"no secret found; looked in: {source.describe()}")


def _strip(text: str, where: str) -> str:
    value = text.rstrip("\r\n")
    if not value:
        raise SecretUnavailableError(f"{where} is empty")
    return value


@dataclass(frozen=True)
class HsmConfig:
    """The token a node uses. `module` may be any vendor's PKCS#11 library."""

    module: Path = SOFTHSM_MODULE
    token_label: str = "wire-mpc"  # noqa: S105 - a label, not a secret
    pin: SecretSource = field(
        default_factory=lambda: SecretSource("hsm-pin", environment="WIRE_MPC_HSM_PIN")
    )
    so_pin: SecretSource = field(
        default_factory=lambda: SecretSource("hsm-so-pin", environment="WIRE_MPC_HSM_SO_PIN")
    )

    @property
    def is_softhsm(self) -> bool:
        return "softhsm" in self.module.name
