"""The node's token: provisioning, login, sealing with the KEK, signing with the identity key.

The token holds two things and nothing else of ours:
- `wire-kek`: AES-256, sensitive, never extractable, used only for AES-GCM sealing;
- `wire-identity`: an Ed25519 key pair whose private half is sensitive and never
  extractable; it signs the node's mesh messages, which are its blame evidence.
`Keystore.open` refuses a token where either is missing, duplicated or weaker than that.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.constants import TokenFlag
from pkcs11.exceptions import (
    NoSuchToken,
    PinIncorrect,
    PinLocked,
    PKCS11Error,
    SessionHandleInvalid,
)
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from .config import HsmConfig, read_secret
from .errors import (
    MechanismUnsupportedError,
    ModuleLoadError,
    PinLockedError,
    SealedBlobError,
    TamperedBlobError,
    TokenNotFoundError,
    TokenPolicyError,
    WrongPinError,
)
from .sealed import NONCE_SIZE, SealContext, parse_blob

__all__ = [
    "IDENTITY_LABEL",
    "KEK_LABEL",
    "Keystore",
    "ProvisionReport",
    "load_module",
    "provision",
]

KEK_LABEL = "wire-kek"
IDENTITY_LABEL = "wire-identity"
ED25519_OID = "1.3.101.112"

# What the engine needs from any token, and why (quoted in the refusal).
REQUIRED_MECHANISMS = {
    Mechanism.AES_GCM: "sealing key shares (AES-256-GCM)",
    Mechanism.EDDSA: "identity signatures (Ed25519)",
}
PROVISIONING_MECHANISMS = {
    Mechanism.AES_KEY_GEN: "creating the key-encryption key",
    Mechanism.EC_EDWARDS_KEY_PAIR_GEN: "creating the Ed25519 identity key",
}


def load_module(path: Path) -> Any:
    """The PKCS#11 library at `path` (loaded once per process)."""
    if not path.is_file():
        raise ModuleLoadError(
            f"PKCS#11 module {path} does not exist; install the HSM's module (softhsm2 for "
            "SoftHSM) or set the module path"
        )
    try:
        return pkcs11.lib(str(path))
    except PKCS11Error as exc:
        raise ModuleLoadError(f"PKCS#11 module {path} could not be loaded: {exc}") from exc


def _find_token(lib: Any, label: str) -> Any:
    try:
        return lib.get_token(token_label=label)
    except NoSuchToken:
        labels = sorted(t.label for t in lib.get_tokens() if t.label)
        present = ", ".join(repr(x) for x in labels) or "none (only uninitialised slots)"
        raise TokenNotFoundError(
            f"no token labelled {label!r}; tokens present: {present}"
        ) from None


def _check_mechanisms(token: Any, required: dict[Mechanism, str]) -> None:
    available = set(token.slot.get_mechanisms())
    missing = [f"{m.name} ({why})" for m, why in required.items() if m not in available]
    if missing:
        raise MechanismUnsupportedError(
            f"token {token.label!r} does not support {', '.join(missing)}"
        )


def _login(token: Any, pin: str, rw: bool) -> Any:
    if token.flags & TokenFlag.USER_PIN_LOCKED:
        raise PinLockedError(
            f"the user PIN of token {token.label!r} is locked; its security officer must "
            "unlock it (reset the user PIN with the SO PIN) before the node can start"
        )
    try:
        return token.open(user_pin=pin, rw=rw)
    except PinIncorrect:
        warning = ""
        refreshed = token.slot.get_token()
        if refreshed.flags & TokenFlag.USER_PIN_FINAL_TRY:
            warning = "; one more wrong PIN will lock it"
        elif refreshed.flags & TokenFlag.USER_PIN_COUNT_LOW:
            warning = "; few tries remain before it locks"
        raise WrongPinError(
            f"token {token.label!r} refused the user PIN{warning}; check the hsm-pin credential"
        ) from None
    except PinLocked:
        raise PinLockedError(
            f"the user PIN of token {token.label!r} is locked; its security officer must "
            "unlock it before the node can start"
        ) from None


def _one(session: Any, attributes: dict[Attribute, Any], what: str) -> Any:
    found = list(session.get_objects(attributes))
    if not found:
        raise TokenPolicyError(f"{what} is missing from the token; run provisioning")
    if len(found) > 1:
        raise TokenPolicyError(f"{what} exists {len(found)} times on the token; it must be unique")
    return found[0]


def _require(obj: Any, what: str, rules: Iterable[tuple[Attribute, Any, str]]) -> None:
    for attribute, expected, meaning in rules:
        if obj[attribute] != expected:
            raise TokenPolicyError(f"{what} {meaning} ({attribute.name} is {obj[attribute]})")


def _kek(session: Any) -> Any:
    kek = _one(
        session,
        {Attribute.LABEL: KEK_LABEL, Attribute.CLASS: ObjectClass.SECRET_KEY},
        f"key-encryption key {KEK_LABEL!r}",
    )
    _require(
        kek,
        f"key-encryption key {KEK_LABEL!r}",
        [
            (Attribute.KEY_TYPE, KeyType.AES, "is not an AES key"),
            (Attribute.VALUE_LEN, 32, "is not 256 bits long"),
            (Attribute.SENSITIVE, True, "is not sensitive"),
            (Attribute.EXTRACTABLE, False, "is extractable: it could leave the HSM"),
            (Attribute.NEVER_EXTRACTABLE, True, "was extractable once: it may have left the HSM"),
        ],
    )
    return kek


def _identity(session: Any) -> tuple[Any, bytes]:
    private = _one(
        session,
        {Attribute.LABEL: IDENTITY_LABEL, Attribute.CLASS: ObjectClass.PRIVATE_KEY},
        f"identity private key {IDENTITY_LABEL!r}",
    )
    _require(
        private,
        f"identity private key {IDENTITY_LABEL!r}",
        [
            (Attribute.KEY_TYPE, KeyType.EC_EDWARDS, "is not an Ed25519 key"),
            (Attribute.SENSITIVE, True, "is not sensitive"),
            (Attribute.EXTRACTABLE, False, "is extractable: it could leave the HSM"),
            (Attribute.NEVER_EXTRACTABLE, True, "was extractable once: it may have left the HSM"),
        ],
    )
    public = _one(
        session,
        {Attribute.LABEL: IDENTITY_LABEL, Attribute.CLASS: ObjectClass.PUBLIC_KEY},
        f"identity public key {IDENTITY_LABEL!r}",
    )
    point = bytes(public[Attribute.EC_POINT])
    # CKA_EC_POINT is a DER OCTET STRING (04 20 ‖ key) on most tokens, raw on some.
    if len(point) == 34 and point[:2] == b"\x04\x20":
        point = point[2:]
    if len(point) != 32:
        raise TokenPolicyError(
            f"identity public key has an unexpected encoding ({len(point)} bytes)"
        )
    return private, point


class Keystore:
    """A logged-in session on the node's token. Use as a context manager or `close()` it."""

    def __init__(self, session: Any, label: str) -> None:
        self._session = session
        self.label = label
        self._kek = _kek(session)
        self._identity, self.identity_public_key = _identity(session)

    @classmethod
    def open(cls, config: HsmConfig) -> Keystore:
        """Log in and check the token's keys; refuse any token not fit to hold shares."""
        lib = load_module(config.module)
        token = _find_token(lib, config.token_label)
        _check_mechanisms(token, REQUIRED_MECHANISMS)
        session = _login(token, read_secret(config.pin), rw=False)
        try:
            return cls(session, token.label)
        except Exception:
            session.close()
            raise

    def check(self) -> None:
        """Look at the token's KEK and identity key again (another session could have changed
        them); raises the same errors as opening the keystore."""
        _kek(self._session)
        _identity(self._session)

    def close(self) -> None:
        # After the library was re-initialised the session is already gone.
        with contextlib.suppress(SessionHandleInvalid):
            self._session.close()

    def __enter__(self) -> Keystore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- sealing ---------------------------------------------------------------------
    def seal(self, secret: bytes, context: SealContext) -> bytes:
        """Encrypt `secret` inside the HSM under the KEK, bound to `context`."""
        header = context.header()
        nonce = bytes(self._session.generate_random(NONCE_SIZE * 8))
        ciphertext = self._kek.encrypt(
            secret, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, header, 128)
        )
        return header + nonce + bytes(ciphertext)

    def unseal(self, blob: bytes, context: SealContext) -> bytes:
        """Decrypt a blob sealed for exactly `context`; any failure is treated as tampering."""
        found, header, nonce, ciphertext = parse_blob(blob)
        if found != context:
            raise SealedBlobError(f"blob was sealed for {found}, not for {context}")
        try:
            return bytes(
                self._kek.decrypt(
                    ciphertext,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, header, 128),
                )
            )
        except PKCS11Error:
            # SoftHSM reports a failed tag as a general error; no token error is benign here.
            raise TamperedBlobError(
                f"sealed blob for {context} failed authentication on token {self.label!r}: "
                "it was altered, or sealed by another token"
            ) from None

    # -- identity ----------------------------------------------------------------------
    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature by the node's identity key."""
        return bytes(self._identity.sign(message, mechanism=Mechanism.EDDSA))


@dataclass(frozen=True)
class ProvisionReport:
    token_label: str
    token_created: bool
    created: tuple[str, ...]
    identity_public_key: bytes


def provision(config: HsmConfig) -> ProvisionReport:
    """Create what the node needs on its token, once; running it again changes nothing.

    For SoftHSM the token itself is created with softhsm2-util (PINs from the configured
    sources, typed at its prompt, never on a command line); the library is then
    re-initialised so it lists the new token, which ends any other session this process
    holds. A vendor HSM's token must be initialised with the vendor's tools first.
    """
    lib = load_module(config.module)
    token_created = False
    try:
        token = _find_token(lib, config.token_label)
    except TokenNotFoundError:
        if not config.is_softhsm:
            raise
        _init_softhsm_token(config)
        lib.reinitialize()  # SoftHSM lists a new token only after C_Initialize
        token = _find_token(lib, config.token_label)
        token_created = True
    _check_mechanisms(token, REQUIRED_MECHANISMS | PROVISIONING_MECHANISMS)
    created = []
    with _login(token, read_secret(config.pin), rw=True) as session:
        if not list(session.get_objects({Attribute.LABEL: KEK_LABEL})):
            session.generate_key(
                KeyType.AES,
                256,
                label=KEK_LABEL,
                store=True,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                },
            )
            created.append(KEK_LABEL)
        if not list(session.get_objects({Attribute.LABEL: IDENTITY_LABEL})):
            session.generate_keypair(
                KeyType.EC_EDWARDS,
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                label=IDENTITY_LABEL,
                store=True,
                public_template={
                    Attribute.TOKEN: True,
                    Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID),
                    Attribute.VERIFY: True,
                },
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                },
            )
            created.append(IDENTITY_LABEL)
        _kek(session)
        _, identity = _identity(session)
    return ProvisionReport(config.token_label, token_created, tuple(created), identity)


def _init_softhsm_token(config: HsmConfig) -> None:
    """Run softhsm2-util on a pseudo-terminal and answer its PIN prompts."""
    so_pin = read_secret(config.so_pin)
    pin = read_secret(config.pin)
    answers = [so_pin, so_pin, pin, pin]
    argv = ["softhsm2-util", "--init-token", "--free", "--label", config.token_label]
    pid, fd = pty.fork()
    if pid == 0:  # the child: softhsm2-util with the pty as its terminal
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - fixed argv, no shell
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            while answers and output.count(b"PIN:") > 4 - len(answers):
                os.write(fd, answers.pop(0).encode() + b"\n")
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or b"has been initialized" not in output:
        shown = output.decode(errors="replace").replace("\r", "").strip().splitlines()[-1:]
        raise TokenNotFoundError(
            f"softhsm2-util could not create token {config.token_label!r}: {' '.join(shown)}"
        )
