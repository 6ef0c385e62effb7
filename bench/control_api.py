"""Benchmark of the control API: authenticated `GET /v1/status` per second over the Unix
socket under gunicorn (session check, role check, audit record, a round trip to the engine),
and in the same run a bare Falcon app returning a constant under gunicorn with the same
settings (sync workers, same count, a Unix socket). Clients are separate processes, one
request per connection (gunicorn's sync workers close each). Writes JSON."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp

from api.mpc_operator import UnixConnection
from tools.devcluster import REPO, DevCluster

CLIENTS = 4
SECONDS = 8.0


def hammer(path: str, token: str | None, seconds: float, out: multiprocessing.Queue) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    done = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        connection = UnixConnection(path, 30)
        try:
            connection.request("GET", "/v1/status", headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                done += 1
            else:
                errors += 1
        finally:
            connection.close()
    out.put((done, errors))


def measure(path: Path, token: str | None) -> dict[str, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=hammer, args=(str(path), token, SECONDS, queue))
               for _ in range(CLIENTS)]  # fmt: skip
    started = time.perf_counter()
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    done = sum(r[0] for r in results)
    return {"requests": done, "errors": sum(r[1] for r in results),
            "requests_per_s": round(done / elapsed, 1)}  # fmt: skip


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="wire-bench-api-"))
    cluster = DevCluster(root, parties=2, threshold=2, api=True)
    cluster.create()
    cluster.start()
    try:
        node = cluster[1]
        config = json.loads(node.config_path.read_text())
        workers = config["api"].get("workers", 2)
        password = "benchmark password 1"  # noqa: S105 - a throwaway account of the run
        http = UnixConnection(str(node.api_socket), 30)
        http.request("POST", "/v1/users", body=json.dumps(
            {"username": "bench", "role": "admin", "password": password}),
            headers={"Content-Type": "application/json"})  # fmt: skip
        enrolled = json.loads(http.getresponse().read())
        http.close()
        if "otpauth_uri" not in enrolled:
            raise RuntimeError(f"enrolment failed: {enrolled}")
        secret = parse_qs(urlsplit(enrolled["otpauth_uri"]).query)["secret"][0]
        http = UnixConnection(str(node.api_socket), 30)
        http.request("POST", "/v1/session", body=json.dumps(
            {"username": "bench", "password": password, "code": pyotp.TOTP(secret).now()}),
            headers={"Content-Type": "application/json"})  # fmt: skip
        token = json.loads(http.getresponse().read())["token"]
        http.close()
        ours = measure(node.api_socket, token)
    finally:
        cluster.close()
    bare_socket = root / "bare.sock"
    bare = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"unix:{bare_socket}", "--workers",
         str(workers), "--worker-class", "sync", "--log-level", "warning",
         "bench.bare_app:application"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        wait_for(bare_socket)
        reference = measure(bare_socket, None)
    finally:
        bare.terminate()
        bare.wait(30)
    result = {
        "gunicorn": {"workers": workers, "worker_class": "sync", "clients": CLIENTS,
                     "seconds": SECONDS},
        "wire_api_status": ours,
        "bare_falcon_constant": reference,
        "ratio": round(ours["requests_per_s"] / reference["requests_per_s"], 3),
        "targets": {"ratio": 0.5, "requests_per_s": 800},
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
