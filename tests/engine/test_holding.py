"""What a node holds for its peers, piece by piece: the rounds each ceremony takes and how
large (the largest legitimate payload of every round fits), one conflict per round and
sender, a byte budget per peer, and counters that a flood cannot grow."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import zmq

from appliance.ceremony import requests
from appliance.ceremony.base import ENVELOPE_OVERHEAD, Arrival, Inbox, canonical
from appliance.ceremony.budget import PeerBudget, held_size
from appliance.ceremony.dkg import DkgCeremony
from appliance.ceremony.refresh import RefreshCeremony
from appliance.ceremony.requests import MAX_PAYLOADS
from appliance.ceremony.signing import SigningCoordinator, SigningParticipant
from appliance.config import NodeConfig, parse_config
from appliance.engine import REFUSAL_KEYS, Engine
from appliance.frost import ED25519_SHA512, SECP256K1_TR, trusted_dealer_keygen
from appliance.mesh.envelope import Envelope, open_envelope, seal_envelope
from appliance.store import Store

N = 15  # the largest cluster the sizes are checked for here (every party signs)
LONGEST_ID = "c" * 80  # the longest cluster or ceremony id an envelope carries


def config(parties: int = N, threshold: int = N, me: int = 1) -> NodeConfig:
    document: dict[str, Any] = {
        "cluster_id": "wire-test",
        "node_id": f"node-{me}",
        "threshold": threshold,
        "parties": [
            {
                "node_id": f"node-{i}",
                "identifier": i,
                "address": f"10.0.0.{i}:50051",
                "curve_public_key": zmq.curve_keypair()[0].decode(),
                "identity_public_key": bytes([i]).hex() * 32,
            }
            for i in range(1, parties + 1)
        ],
        "mesh": {"listen": "0.0.0.0:50051"},
        "paths": {"data_dir": "/var/lib/wire-mpc", "engine_socket": "/run/wire-mpc/e.sock"},
        "hsm": {"module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "wire-mpc"},
    }
    return parse_config(document)


def node(cfg: NodeConfig | None = None) -> Any:
    """What a ceremony's constructor uses of its node."""
    return types.SimpleNamespace(config=cfg or config())


def envelope(round_name: str, payload: bytes, sender: int = 2, ceremony: str = "c") -> Envelope:
    raw = seal_envelope(LONGEST_ID, ceremony, round_name, sender, 1, payload, lambda _: b"s" * 64)
    return open_envelope(raw)


def fits(ceremony: Any, round_name: str, payload: Any, sender: int = 2) -> int:
    """The payload's size, checked against the ceremony's limit for the round."""
    data = canonical(payload)
    assert ceremony.refusal(envelope(round_name, data, sender)) is None, round_name
    return len(data)


def test_the_largest_payload_of_every_key_ceremony_round_fits() -> None:
    dkg = DkgCeremony(node(), "dkg-1")
    round1 = {**dkg.publish(), "ephemeral": "ab" * 32}
    size1 = fits(dkg, "dkg.round1", round1)
    envelope1 = "ab" * (size1 + len(LONGEST_ID) * 2 + ENVELOPE_OVERHEAD)
    fits(dkg, "dkg.echo", {"digests": {str(i): "ab" * 32 for i in range(1, N + 1)}})
    fits(dkg, "dkg.evidence", {"envelopes": {str(i): envelope1 for i in range(1, N + 1)}})
    round2 = {"recipient": N, "ciphertext": "ab" * 80}
    fits(dkg, "dkg.round2", round2)
    round2_envelope = "ab" * (len(canonical(round2)) + len(LONGEST_ID) * 2 + ENVELOPE_OVERHEAD)
    point, proof = "ab" * 32, "ab" * 64
    complaint = {"accused": N, "envelope": round2_envelope, "point": point, "proof": proof}
    fits(dkg, "dkg.complaints", {"complaints": [complaint] * (N - 1)})
    pair = ["ab" * 33, "ab" * 33]
    fits(dkg, "dkg.verify-commit", {"commitments": {"attestation": pair, "custody": pair}})
    fits(dkg, "dkg.verify-share", {"shares": {"attestation": "ab" * 32, "custody": "ab" * 32}})
    fits(dkg, "dkg.sealed", {"fingerprints": {"attestation": "abcd-" * 8, "custody": "ab" * 20}})

    refresh = RefreshCeremony(node(), "rotation-1", "\u2028" * 500)  # escaped: 6 bytes each
    for name, suite in (("attestation", ED25519_SHA512), ("custody", SECP256K1_TR)):
        shares, _ = trusted_dealer_keygen(suite, N, N)
        refresh.old[name], refresh.epochs[name] = shares[1], 7
    fits(refresh, "refresh.round1", {**refresh.publish(), "ephemeral": "ab" * 32})
    epochs = {"attestation": 8, "custody": 8}
    confirm = {"epochs": epochs, "digests": {"attestation": "ab" * 32, "custody": "ab" * 32}}
    fits(refresh, "refresh.confirm", confirm)
    confirm_envelope = "ab" * (len(canonical(confirm)) + len(LONGEST_ID) * 2 + ENVELOPE_OVERHEAD)
    fits(refresh, "refresh.relay", {"confirmations": [confirm_envelope] * N})


def test_the_largest_payload_of_every_signing_round_fits() -> None:
    keys = types.SimpleNamespace(group_key=lambda name: SECP256K1_TR.group.base_mul(5))
    # The largest test-signing request the API takes: 500 messages of 1024 characters,
    # both keys: MAX_PAYLOADS payloads.
    messages = [bytes([65 + i % 26]) * 1024 for i in range(500)]
    request = requests.test_signing_request(keys, messages, ["attestation", "custody"])
    assert len(request.payloads) == MAX_PAYLOADS
    participant = SigningParticipant(node(), "sign-1", 2, request)
    fits(participant, "sign.request.1", {"request": request.to_json()})
    pair = ["ab" * 33, "ab" * 33]
    commitments = {str(i): [pair] * MAX_PAYLOADS for i in range(1, N + 1)}
    package = {"signers": list(range(1, N + 1)), "commitments": commitments}
    fits(participant, "sign.package.1", package)
    fits(participant, "sign.result", {"signatures": ["ab" * 64] * MAX_PAYLOADS})
    coordinator = SigningCoordinator(node(), "sign-1", request)
    fits(coordinator, "sign.commit.1", {"commitments": [pair] * MAX_PAYLOADS})
    fits(coordinator, "sign.share.1", {"shares": ["ab" * 32] * MAX_PAYLOADS})
    fits(coordinator, "sign.decline.1", {"reason": "\u2028" * 500})


def test_each_ceremony_takes_only_its_rounds_from_its_peers() -> None:
    cfg = config(3, 2)
    keys = types.SimpleNamespace(group_key=lambda name: SECP256K1_TR.group.base_mul(5))
    request = requests.test_signing_request(keys, [b"m"], ["attestation"])

    def takes(ceremony: Any, round_name: str, sender: int) -> bool:
        return ceremony.refusal(envelope(round_name, b"{}", sender)) is None

    participant = SigningParticipant(node(cfg), "s", 2, request)  # node 1; 2 coordinates
    for attempt in (1, 3):
        assert takes(participant, f"sign.request.{attempt}", 2)
        assert takes(participant, f"sign.package.{attempt}", 2)
    assert takes(participant, "sign.result", 2)
    for round_name, sender in [
        ("sign.request.4", 2),  # beyond the last attempt (n = 3)
        ("sign.request.0", 2),
        ("sign.request.01", 2),
        ("sign.request.1", 3),  # not the coordinator
        ("sign.commit.1", 2),  # a coordinator's round
        ("sign.junk", 2),
        ("dkg.round1", 2),
    ]:
        assert not takes(participant, round_name, sender), (round_name, sender)
    coordinator = SigningCoordinator(node(cfg), "s", request)
    for round_name in ("sign.commit.2", "sign.decline.1", "sign.share.3"):
        assert takes(coordinator, round_name, 3)
    wrong = [("sign.request.1", 2), ("sign.result", 2), ("sign.share.4", 2), ("sign.commit.1", 1)]
    for round_name, sender in wrong:
        assert not takes(coordinator, round_name, sender), (round_name, sender)
    limited = SigningCoordinator(node(cfg), "s", dataclasses.replace(request, signers=(1, 2)))
    assert not takes(limited, "sign.commit.1", 3)  # not among the requested signers

    dkg = DkgCeremony(node(cfg), "d")
    assert takes(dkg, "dkg.sealed", 3)
    assert takes(dkg, "dkg.round1", 2)
    wrong = [("dkg.confirm", 2), ("refresh.round1", 2), ("dkg.junk", 2), ("dkg.round1", 1)]
    for round_name, sender in wrong:
        assert not takes(dkg, round_name, sender), (round_name, sender)
    refresh = RefreshCeremony(node(cfg), "r", "reason")
    assert takes(refresh, "refresh.relay", 2)
    assert takes(refresh, "refresh.confirm", 3)
    assert not takes(refresh, "refresh.sealed", 2)
    reason, detail = dkg.refusal(envelope("dkg.round2", b"x" * 5000, 2))  # type: ignore[misc]
    assert (reason, detail) == ("oversized", "dkg.round2 of 5000 bytes, at most 1024 taken")


def test_an_inbox_keeps_one_conflict_per_round_and_sender() -> None:
    inbox = Inbox()
    first = envelope("dkg.round1", b"first")
    assert inbox.put(first) is Arrival.STORED
    assert inbox.put(envelope("dkg.round1", b"first")) is Arrival.REPEATED  # same bytes
    assert inbox.put(envelope("dkg.round1", b"second")) is Arrival.CONFLICT
    for i in range(100):
        assert inbox.put(envelope("dkg.round1", b"more %d" % i)) is Arrival.DROPPED
    assert inbox.put(envelope("dkg.round1", b"other", sender=3)) is Arrival.STORED
    assert inbox.get("dkg.round1")[2] == first
    assert list(inbox.conflicts) == [("dkg.round1", 2)]
    assert inbox.conflicts["dkg.round1", 2][1].payload == b"second"


def test_a_peers_budget_counts_every_holder_and_frees_what_ends() -> None:
    budget = PeerBudget(1000)
    assert budget.take("a", 2, 600)
    assert not budget.take("b", 2, 401)  # 1001 for peer 2
    assert budget.take("b", 3, 1000)  # peers are apart
    assert budget.take("b", 2, 400)
    assert budget.held(2) == 1000
    budget.give_back("b", 2, 400)
    assert budget.held(2) == 600
    budget.release("a")
    assert budget.held(2) == 0
    assert budget.held(3) == 1000
    budget.release("b")
    assert budget.held(3) == 0
    assert budget._by_holder == {}
    assert budget._by_peer == {}
    held = envelope("sign.request.1", b"x" * 100)
    assert held_size(held) > len(held.raw) + len(held.payload)


def test_refusal_counters_stay_bounded_under_a_flood_of_addresses() -> None:
    audited: list[dict[str, Any]] = []
    engine: Any = types.SimpleNamespace(
        _refusals={}, audit=lambda event, outcome, message, **fields: audited.append(fields)
    )
    for port in range(20_000):
        fields = {"address": f"192.0.2.1:{port}", "curve_key": "none"}
        Engine.refuse(engine, "mesh.connection-refused", "unknown-curve-key", fields)
    assert len(engine._refusals) <= REFUSAL_KEYS + 1
    assert len(audited) <= REFUSAL_KEYS + 5


def test_accepted_sequences_wait_in_memory_once_per_peer(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    for sequence in range(1, 50_001):
        store.remember_sequence(2, sequence)
        store.remember_sequence(3, 2 * sequence)
    assert store._deferred == []
    assert store._sequences == {2: 50_000, 3: 100_000}
    assert store.peer_sequences() == {2: 50_000, 3: 100_000}
    store.close()
    assert Store(tmp_path / "state.db").peer_sequences() == {2: 50_000, 3: 100_000}
