"""The configuration file is read strictly: every error names its field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import zmq

from appliance.config import ConfigError, load_config, parse_config


def sample() -> dict:
    parties = []
    for i in (1, 2, 3):
        public, _ = zmq.curve_keypair()
        parties.append(
            {
                "node_id": f"node-{i}",
                "identifier": i,
                "address": f"10.0.0.{i}:50051",
                "curve_public_key": public.decode(),
                "identity_public_key": bytes([i]).hex() * 32,
            }
        )
    return {
        "cluster_id": "wire-mainnet",
        "node_id": "node-2",
        "threshold": 2,
        "parties": parties,
        "mesh": {"listen": "0.0.0.0:50051"},
        "paths": {"data_dir": "/var/lib/wire-mpc", "engine_socket": "/run/wire-mpc/engine.sock"},
        "hsm": {"module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "wire-mpc"},
    }


def test_a_good_configuration() -> None:
    config = parse_config(sample())
    assert config.me.identifier == 2
    assert [p.node_id for p in config.peers] == ["node-1", "node-3"]
    assert config.round_timeout == 10.0
    assert config.max_message_bytes == 4 << 20
    assert (config.policy.approvals_required, config.policy.max_batch) == (2, 100)
    assert (config.fee_reservoir.consolidation_threshold, config.fee_reservoir.min_fee_amount) == (
        10,
        1000,
    )
    assert config.wire.burn_feed_url is None
    assert config.metrics_listen == ("127.0.0.1", 9101)  # the default, parsed like a given one


def test_operator_and_audit_settings() -> None:
    config = parse_config(sample())
    # The image's values, when the configuration says nothing.
    assert (config.operators.code_delay_max_seconds, config.operators.export_approval_seconds) == (
        300.0,
        900.0,
    )
    assert config.api is not None
    assert [(w.user, w.units) for w in config.api.audit_writers] == [
        ("wire-mpc", None),
        ("wire-api", ("wire-api.service",)),
        ("root", None),
    ]
    document = sample()
    document["operators"] = {"code_delay_max_seconds": 60, "export_approval_seconds": 120}
    document["api"] = {"audit_writers": [{"user": "root", "units": ["wire-mpcd.service"]}]}
    config = parse_config(document)
    assert config.operators.code_delay_max_seconds == 60.0
    assert config.api is not None
    assert [(w.user, w.units) for w in config.api.audit_writers] == [
        ("root", ("wire-mpcd.service",))
    ]


def test_payout_settings() -> None:
    document = sample()
    document["wire"] = {
        "burn_feed_url": "https://wire.example/feed",
        "burn_authority_key": "ab" * 32,
        "proof_verifier": ["/usr/bin/wire-proof", "--strict"],
        "paid_report_url": "https://wire.example/paid",
    }
    document["policy"] = {"max_withdrawal_sats": 50_000_000, "approvals_required": 3}
    config = parse_config(document)
    assert config.wire.burn_authority_key == bytes.fromhex("ab" * 32)
    assert config.wire.proof_verifier == ("/usr/bin/wire-proof", "--strict")
    assert (config.policy.max_withdrawal_sats, config.policy.approvals_required) == (
        50_000_000,
        3,
    )
    assert config.policy.daily_outflow_sats == 5_000_000_000  # the default


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.pop("threshold"), "threshold: missing"),
        (lambda c: c.update(colour="blue"), "colour: unknown field"),
        (lambda c: c["mesh"].update(port=1), "mesh.port: unknown field"),
        (
            lambda c: c["parties"][1].pop("curve_public_key"),
            r"parties\[1\].curve_public_key: missing",
        ),
        (
            lambda c: c["parties"][0].update(curve_public_key="short"),
            r"parties\[0\].curve_public_key",
        ),
        (
            lambda c: c["parties"][2].update(identity_public_key="zz"),
            r"parties\[2\].identity_public_key",
        ),
        (lambda c: c["parties"][2].update(identifier=1), "identifier repeated: 1"),
        (lambda c: c["parties"][0].update(address="nowhere"), r"parties\[0\].address"),
        (lambda c: c.update(threshold=1), "threshold: 1 must be between 2 and 3"),
        (lambda c: c.update(threshold=True), "threshold: must be an integer"),
        (lambda c: c.update(node_id="node-9"), "node_id: 'node-9' is not one of the parties"),
        (lambda c: c["paths"].update(data_dir="relative/dir"), "paths.data_dir"),
        (lambda c: c["hsm"].update(pin="1234"), "hsm.pin: unknown field"),
        (lambda c: c.update(policy={"max_batch": 0}), "policy.max_batch"),
        (lambda c: c.update(policy={"cap": 1}), "policy.cap: unknown field"),
        (lambda c: c.update(policy={"approvals_required": 4}), "approvals_required: 4 exceeds"),
        (
            lambda c: c.update(policy={"max_withdrawal_sats": 10**10}),
            "max_withdrawal_sats: must not exceed daily_outflow_sats",
        ),
        (
            lambda c: c.update(wire={"burn_feed_url": "http://wire.example/feed"}),
            "wire.burn_authority_key: required",
        ),
        (lambda c: c.update(wire={"paid_report_url": "ftp://x"}), "wire.paid_report_url"),
        (lambda c: c.update(wire={"proof_verifier": ["verify"]}), "wire.proof_verifier"),
        (
            lambda c: c.update(fee_reservoir={"consolidation_address": "bcrt1qnotanaddress"}),
            "fee_reservoir.consolidation_address",
        ),
        (lambda c: c.update(api={"audit_writers": []}), "api.audit_writers: must name"),
        (
            lambda c: c.update(api={"audit_writers": [{"user": "wire-api", "units": ["x"]}]}),
            r"api.audit_writers\[0\].units: 'x' must be a systemd service",
        ),
        (
            lambda c: c.update(api={"audit_writers": [{"user": "wire-api", "units": []}]}),
            r"api.audit_writers\[0\].units: give at least one unit",
        ),
        (
            lambda c: c.update(api={"audit_writers": [{"uid": 0}]}),
            r"api.audit_writers\[0\].user: missing",
        ),
        (
            lambda c: c.update(operators={"code_delay_max_seconds": 0.5}),
            "operators.code_delay_max_seconds: must be between 1 and 3600",
        ),
        (
            lambda c: c.update(operators={"lockout": 5}),
            "operators.lockout: unknown field",
        ),
    ],
)
def test_errors_name_the_field(change, field: str) -> None:
    document = copy.deepcopy(sample())
    change(document)
    with pytest.raises(ConfigError, match=field):
        parse_config(document)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.json")
    broken = tmp_path / "config.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(broken)
    broken.write_text(json.dumps({**sample(), "extra": 1}))
    with pytest.raises(ConfigError, match=f"{broken}: extra: unknown field"):
        load_config(broken)


def test_the_curve_secret_must_match_the_configured_public_key(monkeypatch) -> None:
    config = parse_config(sample())
    _, other_secret = zmq.curve_keypair()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("WIRE_MPC_CURVE_SECRET_KEY", other_secret.decode())
    with pytest.raises(ConfigError, match="does not match this node's curve_public_key"):
        config.curve_secret_key()
