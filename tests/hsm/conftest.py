"""A private SoftHSM2 token directory per test, and provisioned keystores.

SoftHSM reads `SOFTHSM2_CONF` when the PKCS#11 library is initialised, and the library is
loaded once per process; each test points the variable at its own directory and
re-initialises the library, so no test sees another's tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pkcs11
import pytest

from hsm.config import SOFTHSM_MODULE, HsmConfig
from hsm.keystore import Keystore, provision

USER_PIN = "user-pin-4821"
SO_PIN = "so-pin-9137"


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SoftHSM token directory and configuration for this test."""
    if not SOFTHSM_MODULE.is_file():
        pytest.fail(f"SoftHSM2 module {SOFTHSM_MODULE} is missing: install softhsm2")
    tokens = tmp_path / "softhsm" / "tokens"
    tokens.mkdir(parents=True)
    conf = tmp_path / "softhsm" / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv("WIRE_MPC_HSM_PIN", USER_PIN)
    monkeypatch.setenv("WIRE_MPC_HSM_SO_PIN", SO_PIN)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    pkcs11.lib(str(SOFTHSM_MODULE)).reinitialize()
    return tokens


@pytest.fixture
def hsm_config(softhsm: Path) -> HsmConfig:
    config = HsmConfig(token_label="node-1")
    provision(config)
    return config


@pytest.fixture
def keystore(hsm_config: HsmConfig) -> Iterator[Keystore]:
    with Keystore.open(hsm_config) as opened:
        yield opened


def second_token(config: HsmConfig, label: str = "node-2") -> HsmConfig:
    """Another provisioned token in the same test's directory."""
    other = replace(config, token_label=label)
    provision(other)
    return other
