"""`make cluster-up`: a three-node appliance cluster to try by hand, running until
`make cluster-down`.

Runs in the network namespace `wire-mpc` (see `qemu/netns`): the regtest node (101 blocks
mined), the simulated Wire system and three VMs of the test image. When every node's API
answers, it writes `cluster.json` (API sockets, console logs, QMP sockets, the regtest
node's RPC) into the work directory, prints it, and waits for SIGTERM, which stops it all.

    python -m qemu.clusterd --image build/image-test --workdir build/cluster
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from qemu.cluster import Cluster
from qemu.vm import Image, accelerator
from tests.regtest.harness import RegtestProcess
from tests.wire.simulator import WireSimulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    image = Image(args.image.resolve())
    if image.missing():
        print(f"cluster-up: the image is incomplete: {', '.join(image.missing())}", file=sys.stderr)
        return 1
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bitcoind = RegtestProcess(workdir / "bitcoind")
    bitcoind.start()
    bitcoind.call("generatetoaddress", 101, bitcoind.call("getnewaddress"))
    wire = WireSimulator().start()
    cluster = Cluster(
        image, workdir,
        bitcoind={"rpc_url": bitcoind.rpc_url, "zmq_block": bitcoind.zmq_endpoint,
                  "rpc_user": bitcoind.rpc_user, "rpc_password": bitcoind.rpc_password},
        wire={"burn_feed_url": wire.url, "burn_authority_key": wire.authority_key.hex(),
              "paid_report_url": f"{wire.url}/paid", "feed_poll_seconds": 2},
        accel=accelerator(image.kernel),
    )  # fmt: skip
    try:
        cluster.up()
        state = json.loads((workdir / "cluster.json").read_text())
        state["bitcoind"]["rpc_password_file"] = str(workdir / "bitcoind" / "rpc-password")
        (workdir / "bitcoind" / "rpc-password").write_text(bitcoind.rpc_password + "\n")
        state["wire_simulator"] = wire.url
        (workdir / "cluster.json").write_text(json.dumps(state, indent=1) + "\n")
        print(json.dumps(state, indent=1), flush=True)
        stop.wait()
        return 0
    except (RuntimeError, OSError) as exc:
        print(f"cluster-up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        cluster.stop()
        wire.stop()
        bitcoind.stop()


if __name__ == "__main__":
    sys.exit(main())
