"""The files `mpc_operator` writes, the session and key-share backups: made new, 0600
whatever the umask, never written through a symbolic link planted at their path; a backup
never replaces a file, and a name that is taken is refused before the node is asked. Last,
a backup taken and test-restored through the real API after a real DKG."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.mpc_operator import Client, Failure, _create_private_file
from tests.api.conftest import Http, enroll, log_in
from tests.cluster.conftest import on_all
from tools.devcluster import DevCluster

REPO = Path(__file__).resolve().parents[2]
SESSION = {"token": "t0ken", "username": "olga", "expires_at": 1.0}
UMASKS = [0o000, 0o022, 0o277]


def mpc_operator(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.mpc_operator", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        preexec_fn=lambda: os.umask(umask),
    )


def mode(path: Path) -> int:
    status = path.lstat()
    assert stat.S_ISREG(status.st_mode), f"{path} is not a regular file"
    return status.st_mode & 0o777


def test_the_session_file_replaces_a_planted_link_without_writing_through_it(
    tmp_path: Path,
) -> None:
    precious = tmp_path / "precious"
    precious.write_text("someone's data\n")
    session = tmp_path / "session.json"
    session.symlink_to(precious)
    Client("/nonexistent.sock", session).save(SESSION)
    assert precious.read_text() == "someone's data\n"
    assert mode(session) == 0o600
    assert json.loads(session.read_text())["token"] == "t0ken"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("umask", UMASKS, ids=oct)
def test_files_are_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    earlier = os.umask(umask)
    try:
        Client("/nonexistent.sock", tmp_path / "session.json").save(SESSION)
        Client("/nonexistent.sock", tmp_path / "session.json").save(SESSION)  # a second login
        os.close(_create_private_file(tmp_path / "custody.backup"))
    finally:
        os.umask(earlier)
    assert mode(tmp_path / "session.json") == 0o600
    assert mode(tmp_path / "custody.backup") == 0o600


def test_a_private_file_is_never_made_over_a_file_or_a_link(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_text("kept\n")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "would-be-created")
    for path in (existing, dangling):
        with pytest.raises(Failure, match="exists already"):
            _create_private_file(path)
    assert existing.read_text() == "kept\n"
    assert not (tmp_path / "would-be-created").exists()


def backup_to(output: Path, socket: str = "/nonexistent.sock") -> subprocess.CompletedProcess[str]:
    """The step that writes a backup: another admin's approval of a requested one."""
    return mpc_operator(
        "--socket",
        socket,
        "--session-file",
        "/nonexistent/session.json",
        "--totp",
        "123456",
        "backup",
        "approve",
        "export-1",
        "--output",
        str(output),
    )


def test_a_backup_refuses_a_taken_name_before_asking_the_node(tmp_path: Path) -> None:
    """The node's socket does not exist: had the client asked it, it would exit 5."""
    earlier = tmp_path / "custody.backup"
    earlier.write_bytes(b"an earlier backup")
    target = tmp_path / "target"
    target.write_text("kept\n")
    planted = tmp_path / "planted.backup"
    planted.symlink_to(target)
    for output in (earlier, planted):
        run = backup_to(output)
        assert run.returncode == 2, run.stderr
        assert "exists already" in run.stderr
    assert earlier.read_bytes() == b"an earlier backup"
    assert target.read_text() == "kept\n"
    assert planted.is_symlink()


def test_a_backup_that_fails_leaves_no_file(tmp_path: Path) -> None:
    run = backup_to(tmp_path / "custody.backup")
    assert run.returncode == 5, run.stderr  # the node is unreachable
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def keyed_cluster() -> Iterator[DevCluster]:
    """Two nodes with their APIs, after a DKG of both keys."""
    if not os.environ.get("WIRE_MPC_PRIVATE_JOURNAL"):
        pytest.fail("run the API tests beside a journald: tools/with-journald (make test)")
    root = Path(tempfile.mkdtemp(prefix="wire-api-files-"))
    cluster = DevCluster(root, parties=2, threshold=2, round_timeout=3.0, api=True)
    cluster.create()
    cluster.start()
    try:
        results = on_all(list(cluster.nodes.values()), "dkg", ceremony_id="files-dkg")
        assert all(r["state"] == "completed" for r in results), results
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_backup_through_the_api_is_written_0600_and_restores(
    keyed_cluster: DevCluster, tmp_path: Path
) -> None:
    node = keyed_cluster[1]
    http = Http(node.api_socket)
    alice = log_in(http, enroll(http, "alice", "admin", None))
    bob = enroll(http, "bob", "admin", alice)
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "passphrase").write_text("a passphrase of some length\n")
    sessions = {}
    for admin in (alice, bob):
        (secrets / admin.username).write_text(admin.password + "\n")
        sessions[admin.username] = (
            "--socket",
            str(node.api_socket),
            "--session-file",
            str(tmp_path / admin.username),
        )
        run = mpc_operator(
            *sessions[admin.username],
            "login",
            "--username",
            admin.username,
            "--password-file",
            str(secrets / admin.username),
            "--code",
            admin.code(),
            umask=0,
        )
        assert run.returncode == 0, run.stderr
        assert mode(tmp_path / admin.username) == 0o600
    run = mpc_operator(
        *sessions["alice"],
        "--json",
        "--totp",
        alice.code(),
        "backup",
        "key-share",
        "--key",
        "custody",
        "--passphrase-file",
        str(secrets / "passphrase"),
    )
    assert run.returncode == 0, run.stderr
    export_id = json.loads(run.stdout)["export_id"]
    output = tmp_path / "custody.backup"
    run = mpc_operator(
        *sessions["bob"],
        "--json",
        "--totp",
        bob.code(),
        "backup",
        "approve",
        export_id,
        "--output",
        str(output),
        umask=0,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["written"] == str(output)
    assert mode(output) == 0o600
    assert output.stat().st_size > 0
    run = mpc_operator(
        *sessions["alice"],
        "--json",
        "--totp",
        alice.code(),
        "restore",
        "key-share",
        "--input",
        str(output),
        "--passphrase-file",
        str(secrets / "passphrase"),
    )
    assert run.returncode == 0, run.stderr
    restored = json.loads(run.stdout)
    keys = node.call("key-info")["keys"]["custody"]
    assert restored["fingerprint"] == keys[-1]["fingerprint"], (restored, keys)
