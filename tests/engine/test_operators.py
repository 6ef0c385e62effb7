"""The engine's operator registry on a real SoftHSM token and a real SQLite store, with a
clock the tests move: enrolment, seeds sealed by the HSM, codes good once across logins
and proofs, the role table, and the slowing down of wrong codes that nobody without the
password can trigger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from appliance.errors import CommandError
from appliance.operators import AUTHORITY, OperatorRegistry
from appliance.store import OperatorRecords, Store
from hsm.keystore import Keystore
from hsm.sealed import SealContext
from tests.hsm.conftest import hsm_config, keystore, softhsm  # noqa: F401 (fixtures)
from tools.authenticator import seed_of

START = 1_700_000_000.0  # at the start of a 30-second step
DELAY_MAX = 8.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class CountingSealer:
    """The real keystore, counting what is unsealed."""

    def __init__(self, opened: Keystore) -> None:
        self.keystore = opened
        self.unsealed = 0

    def seal(self, secret: bytes, context: SealContext) -> bytes:
        return self.keystore.seal(secret, context)

    def unseal(self, blob: bytes, context: SealContext) -> bytes:
        self.unsealed += 1
        return self.keystore.unseal(blob, context)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "state.db")
    yield opened
    opened.close()


@pytest.fixture
def sealer(keystore: Keystore) -> CountingSealer:  # noqa: F811 (the fixture above)
    return CountingSealer(keystore)


@pytest.fixture
def registry(store: Store, sealer: CountingSealer, clock: Clock) -> OperatorRegistry:
    return OperatorRegistry(
        OperatorRecords(store),
        sealer,
        "node-1",
        "wire-mpc test/node-1",
        delay_max=DELAY_MAX,
        clock=clock,
    )


class Team:
    """Enrolled operators and their authenticators."""

    def __init__(self, registry: OperatorRegistry) -> None:
        self.registry = registry
        self.seeds: dict[str, str] = {}

    def enrol(self, username: str, role: str, by: str | None) -> None:
        self.seeds[username] = seed_of(self.registry.enrol(username, role, by).otpauth_uri)

    def code(self, username: str, at: float, offset: int = 0) -> str:
        return pyotp.TOTP(self.seeds[username]).at(at, counter_offset=offset)

    def proof(self, username: str, at: float, offset: int = 0) -> dict[str, str]:
        return {"username": username, "code": self.code(username, at, offset)}


@pytest.fixture
def team(registry: OperatorRegistry) -> Team:
    team = Team(registry)
    team.enrol("alice", "admin", None)
    team.enrol("bob", "admin", "alice")
    team.enrol("olga", "operator", "alice")
    return team


def refusal(work: object) -> CommandError:
    with pytest.raises(CommandError) as caught:
        work()  # type: ignore[operator]
    return caught.value


def test_the_first_admin_needs_no_proof_only_while_the_registry_is_empty(
    registry: OperatorRegistry,
) -> None:
    assert registry.authorize("operator-enrol", None) is None
    assert refusal(lambda: registry.enrol("olga", "operator", None)).code == "bad-request"
    enrolment = registry.enrol("alice", "admin", None)
    assert enrolment.otpauth_uri.startswith("otpauth://totp/")
    assert "alice" not in repr(enrolment).split("operator=")[0]  # the URI stays out of repr
    assert refusal(lambda: registry.enrol("mallory", "admin", None)).code == "bootstrap-closed"
    assert refusal(lambda: registry.authorize("operator-enrol", None)).code == "step-up-required"
    assert [o.username for o in registry.operators()] == ["alice"]


def test_enrolment_checks_names_roles_and_duplicates(
    registry: OperatorRegistry, team: Team
) -> None:
    assert refusal(lambda: registry.enrol("Bad Name", "operator", "alice")).code == "bad-request"
    assert refusal(lambda: registry.enrol("carol", "root", "alice")).code == "bad-request"
    assert refusal(lambda: registry.enrol("olga", "auditor", "alice")).code == "user-exists"


def test_seeds_are_sealed_by_the_hsm_never_stored_in_the_clear(
    registry: OperatorRegistry, team: Team, store: Store, tmp_path: Path
) -> None:
    store.flush()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    for seed in team.seeds.values():
        assert seed.encode() not in stored
        assert seed.encode().lower() not in stored
    # A sealed seed moved to another operator's row does not open there.
    alice = store.connection.execute(
        "SELECT totp_sealed FROM operators WHERE username = 'alice'"
    ).fetchone()[0]
    with store.transaction():
        store.connection.execute(
            "UPDATE operators SET totp_sealed = ? WHERE username = 'bob'", (alice,)
        )
    with_alices_seed = team.proof("alice", START)
    error = refusal(
        lambda: registry.authorize("set-policy", {**with_alices_seed, "username": "bob"})
    )
    assert error.code == "step-up-required"


def test_a_code_is_good_once_across_logins_and_proofs(
    registry: OperatorRegistry, team: Team, clock: Clock
) -> None:
    code = team.code("alice", START)
    assert registry.check_login("alice", code, True).accepted
    error = refusal(lambda: registry.authorize("set-policy", {"username": "alice", "code": code}))
    assert (error.code, str(error)) == (
        "step-up-required",
        "the TOTP code is wrong or was used before",
    )
    # The next step is still good, once (after the second's delay the replay earned).
    clock.now += 1
    proof = team.proof("alice", START, 1)
    assert registry.authorize("set-policy", proof).username == "alice"
    assert not registry.check_login("alice", proof["code"], True).accepted


def test_an_older_step_is_refused_after_a_newer_one(
    registry: OperatorRegistry, team: Team, clock: Clock
) -> None:
    clock.now = START + 30
    assert registry.authorize("audit-key", team.proof("alice", clock.now, 1))
    refused = refusal(lambda: registry.authorize("audit-key", team.proof("alice", START + 30)))
    assert refused.code == "step-up-required"


def test_the_window_is_one_step_each_side(
    registry: OperatorRegistry, team: Team, clock: Clock
) -> None:
    clock.now = START + 300
    for offset in (-2, 2):
        assert not registry.check_login("olga", team.code("olga", clock.now, offset), True).accepted
        clock.now += DELAY_MAX
    assert registry.check_login("olga", team.code("olga", clock.now, -1), True).accepted


def test_proofs_need_an_enabled_operator_of_the_commands_role(
    registry: OperatorRegistry, team: Team
) -> None:
    # An operator's valid code does not make an admin command, and the code stays unused.
    olga = team.proof("olga", START)
    error = refusal(lambda: registry.authorize("set-policy", olga))
    assert error.code == "forbidden"
    assert "needs the admin role" in str(error)
    assert registry.authorize("approve-burn", olga).role == "operator"
    # Nor does an admin's make an operator command.
    assert refusal(lambda: registry.authorize("key-rotation", team.proof("bob", START))).code == (
        "forbidden"
    )
    for proof in (
        None,
        {},
        {"username": "alice"},
        {"username": "alice", "code": 123456},
        {"username": "nobody", "code": "123456"},
        "alice:123456",
    ):
        assert refusal(lambda p=proof: registry.authorize("backup-key-share", p)).code == (
            "step-up-required"
        ), proof
    registry.disable("bob")
    bob = team.proof("bob", START, 1)
    assert refusal(lambda: registry.authorize("set-policy", bob)).code == "step-up-required"
    assert not registry.check_login("bob", bob["code"], True).accepted


def test_every_sensitive_command_is_in_the_role_table() -> None:
    assert {
        "backup-key-share",
        "approve-backup",
        "restore-key-share",
        "set-policy",
        "set-service",
        "bitcoind",
        "audit-key",
        "operator-enrol",
        "operator-disable",
        "key-rotation",
        "approve-burn",
        "test-consolidate-fees",
    } == set(AUTHORITY)
    admin_only = ("backup-key-share", "approve-backup", "set-service", "bitcoind")
    assert {AUTHORITY[m] for m in admin_only} == {"admin"}


def test_wrong_proofs_slow_the_next_code_down_to_a_bound(
    registry: OperatorRegistry, team: Team, clock: Clock
) -> None:
    delays = []
    for _ in range(6):
        assert refusal(
            lambda: registry.authorize("set-policy", {"username": "alice", "code": "000000"})
        ).code == ("step-up-required")
        # While the delay runs, even the right code is not looked at.
        waiting = refusal(lambda: registry.authorize("set-policy", team.proof("alice", clock.now)))
        assert waiting.code == "throttled"
        delays.append(int(str(waiting).split(" in ")[1].split(" s")[0]))
        clock.now += delays[-1]
    assert delays == [1, 2, 4, 8, 8, 8]  # doubling, never beyond DELAY_MAX
    assert registry.authorize("set-policy", team.proof("alice", clock.now)).username == "alice"
    # A success starts the count again.
    refusal(lambda: registry.authorize("set-policy", {"username": "alice", "code": "000000"}))
    assert "in 1 s" in str(
        refusal(lambda: registry.authorize("set-policy", team.proof("alice", clock.now, 1)))
    )


def test_a_wrong_password_never_slows_the_real_operator_down(
    registry: OperatorRegistry, team: Team, clock: Clock
) -> None:
    for _ in range(50):  # someone without alice's password, with or without codes
        assert registry.check_login("alice", "123456", False).reason == "password"
        assert registry.check_login("alice", team.code("alice", clock.now), False).reason == (
            "password"
        )
    check = registry.check_login("alice", team.code("alice", clock.now), True)
    assert (check.accepted, check.reason) == (True, "accepted")


def test_wrong_codes_with_the_right_password_slow_logins_not_proofs(
    registry: OperatorRegistry, team: Team, clock: Clock
) -> None:
    for _ in range(3):
        assert registry.check_login("alice", "000000", True).reason == "code"
        clock.now += registry._failures[("alice", "login")].until - clock.now
    assert registry.check_login("alice", "000000", True).reason == "code"
    throttled = registry.check_login("alice", team.code("alice", clock.now), True)
    assert (throttled.accepted, throttled.reason) == (False, "throttled")
    # Proofs of a session alice opened with a backup code are not held up by it.
    assert registry.authorize("set-policy", team.proof("alice", clock.now)).username == "alice"
    clock.now += DELAY_MAX
    assert registry.check_login("alice", team.code("alice", clock.now, 1), True).accepted


def test_every_login_check_unseals_a_seed(
    registry: OperatorRegistry, team: Team, sealer: CountingSealer
) -> None:
    """Unknown users, wrong passwords, throttled and good logins cost the same HSM work."""
    for username, password_ok in (("nobody", True), ("alice", False), ("olga", True)):
        before = sealer.unsealed
        registry.check_login(username, "123456", password_ok)
        assert sealer.unsealed == before + 1, username


def test_once_two_admins_exist_a_new_admin_needs_both(
    registry: OperatorRegistry, team: Team, clock: Clock
) -> None:
    """One admin's code (say, intercepted by a compromised API) makes no admin that could
    then stand in for the second admin of a backup."""
    assert refusal(lambda: registry.enrol("mallory", "admin", "alice")).code == (
        "second-admin-required"
    )
    # alice's own code as the second: refused before it is looked at.
    own = team.proof("alice", START)
    assert refusal(lambda: registry.enrol("mallory", "admin", "alice", own)).code == "same-admin"
    olga = team.proof("olga", START)
    assert refusal(lambda: registry.enrol("mallory", "admin", "alice", olga)).code == "forbidden"
    wrong = {"username": "bob", "code": "000000"}
    assert refusal(lambda: registry.enrol("mallory", "admin", "alice", wrong)).code == (
        "step-up-required"
    )
    assert "mallory" not in {o.username for o in registry.operators()}
    clock.now += 1  # the wrong code's delay
    enrolment = registry.enrol("carol", "admin", "alice", team.proof("bob", clock.now))
    assert enrolment.operator.created_by == "alice, bob"
    # Operators and auditors need one admin, as before.
    assert registry.enrol("aude", "auditor", "alice").operator.role == "auditor"


def test_the_last_enabled_admin_stays(registry: OperatorRegistry, team: Team) -> None:
    assert registry.disable("bob").disabled
    assert refusal(lambda: registry.disable("alice")).code == "last-admin"
    assert refusal(lambda: registry.disable("nobody")).code == "no-such-user"
    assert registry.disable("olga").role == "operator"
    assert {o.username: o.disabled for o in registry.operators()} == {
        "alice": False,
        "bob": True,
        "olga": True,
    }
