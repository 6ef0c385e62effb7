"""Provisioning, login failures, token policy, sealing and identity signatures on SoftHSM2."""

from __future__ import annotations

import glob
from dataclasses import replace
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hsm.config import SOFTHSM_MODULE, HsmConfig
from hsm.errors import (
    MechanismUnsupportedError,
    ModuleLoadError,
    PinLockedError,
    SealedBlobError,
    TamperedBlobError,
    TokenNotFoundError,
    TokenPolicyError,
    WrongPinError,
)
from hsm.identity import verify_identity_signature
from hsm.keystore import IDENTITY_LABEL, KEK_LABEL, Keystore, _check_mechanisms, provision
from hsm.sealed import SealContext

from .conftest import USER_PIN, second_token

CONTEXT = SealContext("node-1", "custody/0000", "FROST-secp256k1-SHA256-TR-v1", "key-share")


def token_session(config: HsmConfig, rw: bool = False):
    token = pkcs11.lib(str(SOFTHSM_MODULE)).get_token(token_label=config.token_label)
    return token.open(user_pin=USER_PIN, rw=rw)


def test_provisioning_creates_the_token_and_keys_once(softhsm: Path) -> None:
    config = HsmConfig(token_label="node-1")
    first = provision(config)
    assert first.token_created
    assert first.created == (KEK_LABEL, IDENTITY_LABEL)
    again = provision(config)
    assert not again.token_created
    assert again.created == ()
    assert again.identity_public_key == first.identity_public_key
    with token_session(config) as session:
        kek = session.get_key(label=KEK_LABEL, object_class=ObjectClass.SECRET_KEY)
        assert kek[Attribute.SENSITIVE]
        assert not kek[Attribute.EXTRACTABLE]
        assert kek[Attribute.NEVER_EXTRACTABLE]
        assert kek[Attribute.VALUE_LEN] == 32
        private = session.get_key(label=IDENTITY_LABEL, object_class=ObjectClass.PRIVATE_KEY)
        assert private[Attribute.SENSITIVE]
        assert not private[Attribute.EXTRACTABLE]


def test_a_token_with_an_extractable_kek_is_refused(softhsm: Path) -> None:
    config = HsmConfig(token_label="node-1")
    provision(config)
    with token_session(config, rw=True) as session:
        session.get_key(label=KEK_LABEL, object_class=ObjectClass.SECRET_KEY).destroy()
        session.generate_key(
            KeyType.AES,
            256,
            label=KEK_LABEL,
            store=True,
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
        )
    with pytest.raises(TokenPolicyError, match="extractable"):
        Keystore.open(config)
    with pytest.raises(TokenPolicyError, match="extractable"):
        provision(config)  # provisioning never silently accepts or replaces a weak KEK


def test_a_token_without_identity_key_is_refused(softhsm: Path) -> None:
    config = HsmConfig(token_label="node-1")
    provision(config)
    with token_session(config, rw=True) as session:
        for obj in session.get_objects({Attribute.LABEL: IDENTITY_LABEL}):
            obj.destroy()
    with pytest.raises(TokenPolicyError, match=r"identity private key .* missing"):
        Keystore.open(config)


def test_module_not_found(softhsm: Path) -> None:
    with pytest.raises(ModuleLoadError, match="does not exist"):
        Keystore.open(HsmConfig(module=Path("/opt/vendor/libpkcs11-missing.so")))


def test_token_not_found_lists_the_tokens_present(hsm_config: HsmConfig) -> None:
    with pytest.raises(TokenNotFoundError, match=r"no token labelled 'node-9'.*'node-1'"):
        Keystore.open(HsmConfig(token_label="node-9"))


def test_wrong_pin_is_refused_without_echoing_it(
    hsm_config: HsmConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIRE_MPC_HSM_PIN", "not-the-pin-0000")
    with pytest.raises(WrongPinError) as caught:
        Keystore.open(hsm_config)
    assert "not-the-pin" not in str(caught.value)


def set_softhsm_user_pin_locked(tokens: Path) -> None:
    """SoftHSM 2.6 counts wrong PINs but never locks a user PIN by itself; a vendor HSM
    does. Set the persisted CKF_USER_PIN_LOCKED flag in SoftHSM's token file so the real
    token reports a locked PIN through C_GetTokenInfo, as a locked vendor token would."""
    (path,) = glob.glob(str(tokens / "*" / "token.object"))
    data = bytearray(Path(path).read_bytes())
    marker = (0x8000534B).to_bytes(8, "big") + (2).to_bytes(8, "big")  # token flags, ulong
    at = data.index(marker) + len(marker)
    flags = int.from_bytes(data[at : at + 8], "big") | 0x00040000
    data[at : at + 8] = flags.to_bytes(8, "big")
    Path(path).write_bytes(data)
    pkcs11.lib(str(SOFTHSM_MODULE)).reinitialize()


def test_locked_pin_is_refused(hsm_config: HsmConfig, softhsm: Path) -> None:
    set_softhsm_user_pin_locked(softhsm)
    with pytest.raises(PinLockedError, match="security officer"):
        Keystore.open(hsm_config)


def test_a_mechanism_the_token_lacks_is_named(hsm_config: HsmConfig) -> None:
    # SoftHSM has every mechanism the keystore needs; the same check is run with a
    # requirement it cannot meet.
    token = pkcs11.lib(str(SOFTHSM_MODULE)).get_token(token_label=hsm_config.token_label)
    _check_mechanisms(token, {Mechanism.AES_GCM: "sealing"})
    with pytest.raises(MechanismUnsupportedError, match="RSA_X9_31 \\(test requirement\\)"):
        _check_mechanisms(token, {Mechanism.RSA_X9_31: "test requirement"})


def test_seal_and_unseal(keystore: Keystore) -> None:
    blob = keystore.seal(b"\x11" * 32, CONTEXT)
    assert b"\x11" * 32 not in blob
    assert keystore.unseal(blob, CONTEXT) == b"\x11" * 32
    assert keystore.seal(b"\x11" * 32, CONTEXT) != blob  # fresh nonce every time


def test_every_altered_byte_of_a_blob_is_detected(keystore: Keystore) -> None:
    blob = keystore.seal(bytes(range(32)), CONTEXT)
    for i in range(len(blob)):
        altered = bytearray(blob)
        altered[i] ^= 0x01
        with pytest.raises(SealedBlobError):
            keystore.unseal(bytes(altered), CONTEXT)
    with pytest.raises(TamperedBlobError):
        keystore.unseal(blob[:-20], CONTEXT)
    with pytest.raises(SealedBlobError, match="truncated"):
        keystore.unseal(blob[: len(CONTEXT.header()) + 5], CONTEXT)


def test_a_blob_relabelled_for_another_context_fails_authentication(keystore: Keystore) -> None:
    blob = keystore.seal(bytes(32), CONTEXT)
    for field, value in [("node_id", "node-2"), ("key_id", "custody/ffff"), ("purpose", "other")]:
        other = replace(CONTEXT, **{field: value})
        relabelled = other.header() + blob[len(CONTEXT.header()) :]
        with pytest.raises(SealedBlobError, match="sealed for"):
            keystore.unseal(relabelled, CONTEXT)  # names the context it was sealed for
        with pytest.raises(TamperedBlobError):
            keystore.unseal(relabelled, other)  # and its tag does not cover the new context


def test_a_blob_sealed_by_one_token_cannot_be_opened_by_another(hsm_config: HsmConfig) -> None:
    other = second_token(hsm_config)
    with Keystore.open(hsm_config) as first:
        blob = first.seal(b"\x42" * 32, CONTEXT)
    with Keystore.open(other) as second, pytest.raises(TamperedBlobError, match="another token"):
        second.unseal(blob, CONTEXT)


def test_identity_signatures_verify_from_the_public_key_alone(keystore: Keystore) -> None:
    message = b"envelope: cluster c1, ceremony 7, round 2"
    signature = keystore.sign(message)
    public = keystore.identity_public_key
    assert verify_identity_signature(public, message, signature)
    assert not verify_identity_signature(public, message + b"!", signature)
    assert not verify_identity_signature(
        public, message, signature[:-1] + bytes((signature[-1] ^ 1,))
    )
