"""Local clusters of real wire-mpcd processes, and reading their audit records back.

The suite runs beside a private journald (`tools/with-journald`, as `make test` does);
audit records are read back with journalctl and matched on the node's process id.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.bitcoind import BitcoinNetwork
from tools.devcluster import DevCluster, DevNode

Deadline = float


class Journal:
    """Reads the audit records of this test run's private journald."""

    def records(self, **match: str | int) -> list[dict[str, Any]]:
        arguments = ["journalctl", "-o", "json", "--no-pager", "--all"]
        arguments += [f"{k}={v}" for k, v in match.items()]
        run = subprocess.run(arguments, capture_output=True, text=True, check=False, timeout=30)
        return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]

    def wait_for(self, within: float = 10.0, **match: str | int) -> list[dict[str, Any]]:
        """Records matching `match`, polling until at least one exists (bounded)."""
        deadline = time.monotonic() + within
        while True:
            found = self.records(**match)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture(scope="session")
def journal() -> Journal:
    if (
        not os.environ.get("WIRE_MPC_PRIVATE_JOURNAL")
        or not Path("/run/systemd/journal/socket").is_socket()
    ):
        pytest.fail("run the cluster tests beside a journald: tools/with-journald (make test)")
    return Journal()


@pytest.fixture
def make_cluster(tmp_path: Path, journal: Journal) -> Iterator[Callable[..., DevCluster]]:
    made: list[DevCluster] = []

    def make(
        parties: int = 3,
        threshold: int = 2,
        round_timeout: float = 3.0,
        start: bool = True,
        faults: dict[int, str] | None = None,
        bitcoind: BitcoinNetwork | None = None,
        bitcoind_extra: dict[str, Any] | None = None,
        **options: Any,
    ) -> DevCluster:
        """A cluster of `parties` nodes; with `bitcoind`, each follows a bitcoind of its own
        in that network (its `bitcoind` section amended by `bitcoind_extra`)."""
        sections = None
        if bitcoind is not None:
            sections = bitcoind.sections(parties, **(bitcoind_extra or {}))
        cluster = DevCluster(
            tmp_path / f"cluster-{len(made)}", parties, threshold, round_timeout,
            bitcoind=sections, **options,
        )  # fmt: skip
        made.append(cluster)
        cluster.create()
        if start:
            for identifier, node in cluster.nodes.items():
                fault = (faults or {}).get(identifier)
                if fault:
                    node.start(faulty_command(fault))
                else:
                    node.start()
            deadline = time.monotonic() + 60
            for node in cluster.nodes.values():
                node.wait_ready(deadline)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def faulty_command(fault: str) -> list[str]:
    return [sys.executable, "-m", "tests.cluster.faulty_node", "--fault", fault]


def on_all(nodes: list[DevNode], method: str, **params: Any) -> list[Any]:
    """Call the same command on several nodes at once (as operators do for a DKG)."""
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        futures = [pool.submit(_call, node, method, params) for node in nodes]
        return [f.result() for f in futures]


def _call(node: DevNode, method: str, params: dict[str, Any]) -> Any:
    return node.call(method, **params)


def run_dkg(cluster: DevCluster, ceremony_id: str = "dkg-1") -> list[dict[str, Any]]:
    return on_all(list(cluster.nodes.values()), "dkg", ceremony_id=ceremony_id)
