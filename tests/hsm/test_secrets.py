"""Where PINs come from: systemd credential, then a private file, then the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm.config import SecretSource, read_secret
from hsm.errors import SecretUnavailableError


def test_credential_wins_over_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "hsm-pin").write_text("from-credential\n")
    secret_file = tmp_path / "pin"
    secret_file.write_text("from-file\n")
    secret_file.chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("PIN_FOR_TEST", "from-environment")
    source = SecretSource("hsm-pin", secret_file, "PIN_FOR_TEST")
    assert read_secret(source) == "from-credential"
    (credentials / "hsm-pin").unlink()
    assert read_secret(source) == "from-file"
    secret_file.unlink()
    assert read_secret(source) == "from-environment"


def test_a_file_readable_by_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secret_file = tmp_path / "pin"
    secret_file.write_text("1234\n")
    secret_file.chmod(0o644)
    with pytest.raises(SecretUnavailableError, match="chmod 600") as caught:
        read_secret(SecretSource("hsm-pin", secret_file))
    assert "1234" not in str(caught.value)


def test_no_source_names_every_place_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("PIN_FOR_TEST", raising=False)
    source = SecretSource("hsm-pin", Path("/nonexistent/pin"), "PIN_FOR_TEST")
    with pytest.raises(SecretUnavailableError) as caught:
        read_secret(source)
    for place in ("credential 'hsm-pin'", "/nonexistent/pin", "PIN_FOR_TEST"):
        assert place in str(caught.value)
