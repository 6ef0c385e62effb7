"""The engine checks who is asking: a process on the engine's control socket (as a
compromised API would be) that claims an admin's name and role gets none of the commands
the engine authorizes itself without a fresh TOTP code of an enabled operator of the
command's role; each refusal changes nothing and is audited. Real wire-mpcd processes, a
real SoftHSM token per node, the real socket and a private journald."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.control import EngineClient, EngineError
from appliance.operators import AUTHORITY
from appliance.sealing import VERIFICATION_KEY
from tests.cluster.conftest import Journal, run_dkg
from tools.devcluster import DevCluster, DevNode, wait_until

# What a compromised API would ask for, for each command the engine authorizes itself.
FORGED: dict[str, dict[str, Any]] = {
    "backup-key-share": {"key": "custody", "passphrase": "the attacker's passphrase"},
    "approve-backup": {"export_id": "0123456789abcdef"},
    "restore-key-share": {"backup": "AAAA", "passphrase": "the attacker's passphrase"},
    "set-policy": {"policy": {"max_withdrawal_sats": 21 * 10**14}},
    "set-service": {"enabled": False, "reason": "forged"},
    "bitcoind": {"action": "stop", "reason": "forged"},
    "audit-key": {},
    "operator-enrol": {"username": "mallory", "role": "admin"},
    "operator-disable": {"username": "dev-admin-1"},
    "key-rotation": {"ceremony_id": "forged-rotation", "reason": "forged"},
    "approve-burn": {"burn_id": "forged-burn"},
    "test-consolidate-fees": {"address": "bcrt1qforged", "coordinate": False},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, journal: Journal) -> Iterator[DevCluster]:
    cluster = DevCluster(
        tmp_path_factory.mktemp("proofs"),
        parties=3,
        threshold=2,
        round_timeout=3.0,
        operators={"code_delay_max_seconds": 2},
    )
    cluster.create()
    cluster.start()
    run_dkg(cluster)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def node(cluster: DevCluster) -> DevNode:
    node = cluster[1]
    node.operator("admin")
    node.operator("operator")
    return node


def forger(node: DevNode) -> EngineClient:
    """A process on the engine's socket claiming to act for the node's admin."""
    return EngineClient(node.socket, actor="dev-admin-1", role="admin")


def mine(node: DevNode) -> dict[str, int]:
    """Journal matches for this node's engine (other test runs may share the journal)."""
    assert node.process is not None
    return {"_PID": node.process.pid}


def refused(work: Callable[[], Any]) -> EngineError:
    with pytest.raises(EngineError) as caught:
        work()
    return caught.value


def taken(call: Callable[[], Any]) -> Any:
    """`call()`'s answer once its code is taken: a wrong code of an earlier test may hold
    this operator's next code back for a few seconds (a held-back code is not spent)."""

    def attempt() -> Any:
        try:
            return call()
        except EngineError as exc:
            if exc.code != "throttled":
                raise
            return None

    return wait_until(attempt, within=10, pause=0.5, what="the code taken")


def state(node: DevNode) -> dict[str, Any]:
    """Everything the forged commands would change."""
    return {
        "policy": node.call("payouts")["policy"],
        "service": node.call("service-status"),
        "operators": node.call("operators")["operators"],
        "exports": node.call("key-exports")["exports"],
        "verification key": (node.data_dir / VERIFICATION_KEY).exists(),
        "keys": node.call("key-info")["keys"],
    }


def test_forged_requests_without_a_proof_are_refused_audited_and_change_nothing(
    node: DevNode, journal: Journal
) -> None:
    (node.data_dir / VERIFICATION_KEY).write_text("forged-test-key\n")
    before = state(node)
    assert set(FORGED) == set(AUTHORITY)
    for method, params in FORGED.items():
        error = refused(lambda m=method, p=params: forger(node).call_sync(m, p, 30))
        assert error.code == "step-up-required", (method, error)
        records = journal.wait_for(
            WIRE_EVENT="operator.proof-refused", WIRE_METHOD=method, **mine(node)
        )
        assert records, method
        assert records[-1]["WIRE_ACTOR"] == "dev-admin-1"
        assert records[-1]["WIRE_REASON"] == "step-up-required"
    assert state(node) == before
    assert not journal.records(WIRE_EVENT="key.restore", **mine(node))
    assert not journal.records(WIRE_EVENT="key.backup-requested", **mine(node))


def test_an_operators_valid_code_makes_no_admin_command(node: DevNode) -> None:
    before = state(node)
    proof = node.authenticator.proof("dev-operator-1")
    for method in [m for m, role in AUTHORITY.items() if role == "admin"]:
        error = refused(lambda m=method: forger(node).call_sync(m, FORGED[m], 30, proof))
        assert error.code == "forbidden", (method, error)
        assert "needs the admin role; dev-operator-1 is operator" in str(error)
    assert state(node) == before
    # The role is refused before the code is looked at: the same code still proves an
    # operator command (which then fails on its own: there is no such burn).
    error = refused(lambda: forger(node).call_sync("approve-burn", {"burn_id": "none"}, 30, proof))
    assert error.code not in ("step-up-required", "forbidden", "throttled"), error


def test_a_proven_command_runs_as_the_proven_operator_once(node: DevNode, journal: Journal) -> None:
    proof = node.authenticator.proof("dev-admin-1")
    change = {"policy": {"max_batch": 7}}
    # The caller claims to be someone else: the engine records the operator it proved.
    claimant = EngineClient(node.socket, actor="somebody-else", role="auditor")
    assert claimant.call_sync("set-policy", change, 30, proof)["max_batch"] == 7
    received = journal.wait_for(
        WIRE_EVENT="control.request", WIRE_METHOD="set-policy", **mine(node)
    )
    assert received[-1]["WIRE_ACTOR"] == "dev-admin-1"
    assert received[-1]["WIRE_ROLE"] == "admin"
    changed = journal.wait_for(WIRE_EVENT="policy.changed", **mine(node))
    assert changed[-1]["WIRE_ACTOR"] == "dev-admin-1"
    # The same code again: a replay, refused and audited; the policy stays.
    replay = {"policy": {"max_batch": 9}}
    error = refused(lambda: claimant.call_sync("set-policy", replay, 30, proof))
    assert error.code == "step-up-required"
    assert "used before" in str(error)
    assert node.call("payouts")["policy"]["max_batch"] == 7
    assert wait_until(
        lambda: any(
            r.get("WIRE_REASON") == "step-up-required" and r.get("WIRE_PROOF_USER") == "dev-admin-1"
            for r in journal.records(
                WIRE_EVENT="operator.proof-refused", WIRE_METHOD="set-policy", **mine(node)
            )
        ),
        within=10,
        what="the replay's refusal in the journal",
    )


def test_the_first_admin_only_enrols_into_an_empty_registry(node: DevNode) -> None:
    # The node's registry holds dev-admin-1: nobody can bootstrap another admin now.
    error = refused(
        lambda: forger(node).call_sync("operator-enrol", {"username": "eve", "role": "admin"}, 30)
    )
    assert error.code == "step-up-required"
    assert "eve" not in {o["username"] for o in node.call("operators")["operators"]}


def test_one_admins_code_makes_no_second_admin(node: DevNode, journal: Journal) -> None:
    """A compromised API holding one admin's valid code cannot enrol an admin of its own
    (who could then approve its backups) once the node has two admins."""
    proof = node.authenticator.proof("dev-admin-1")
    second = taken(
        lambda: forger(node).call_sync(
            "operator-enrol", {"username": "second-admin", "role": "admin"}, 30, proof
        )
    )
    node.know("second-admin", "admin", second["otpauth_uri"])
    proof = node.authenticator.proof("dev-admin-1")
    error = refused(
        lambda: forger(node).call_sync(
            "operator-enrol", {"username": "mallory", "role": "admin"}, 30, proof
        )
    )
    assert error.code == "second-admin-required"
    assert "mallory" not in {o["username"] for o in node.call("operators")["operators"]}
    records = journal.wait_for(
        WIRE_EVENT="operator.proof-refused", WIRE_REASON="second-admin-required", **mine(node)
    )
    assert records[-1]["WIRE_ACTOR"] == "dev-admin-1"
    # With the other admin's fresh code too, the new admin is enrolled, by both. (The first
    # code may wait for a fresh step: the second is taken after it, so it is still fresh.)
    first = node.authenticator.proof("dev-admin-1")
    params = {
        "username": "carol",
        "role": "admin",
        "second_proof": node.authenticator.proof("second-admin"),
    }
    both = forger(node).call_sync("operator-enrol", params, 30, first)
    assert both["created_by"] == "dev-admin-1, second-admin"


def test_seeds_never_reach_the_engines_database_or_log(node: DevNode, journal: Journal) -> None:
    stored = b"".join(p.read_bytes() for p in Path(node.data_dir).glob("state.db*"))
    logged = node.log_path.read_bytes()
    audited = str(journal.records(SYSLOG_IDENTIFIER="wire-mpc", **mine(node))).encode()
    for seed in node.authenticator.seeds.values():
        for where in (stored, logged, audited):
            assert seed.encode() not in where
