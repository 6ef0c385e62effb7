"""`make cluster-up`: a three-node appliance cluster to try by hand, running until
`make cluster-down`.

Runs in the network namespace `wire-mpc` (see `qemu/netns`): the miner (Bitcoin Core on
regtest with a wallet, 101 blocks mined), the simulated Wire system and three VMs of the
image, each running its own bitcoind peered with the miner. When every node's API answers,
it writes `cluster.json` (API sockets, console logs, QMP sockets, the miner's RPC and
cookie) into the work directory, prints it, and waits for SIGTERM, which stops it all.

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
from tests.wire.simulator import WireSimulator
from tools.bitcoind import Bitcoind


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
    miner = Bitcoind(workdir / "miner", wallet=True, extra_args=["-txindex"])
    miner.start()
    miner.call("generatetoaddress", 101, miner.call("getnewaddress"))
    wire = WireSimulator().start()
    cluster = Cluster(
        image, workdir, miner=miner.p2p_address,
        wire={"burn_feed_url": wire.url, "burn_authority_key": wire.authority_key.hex(),
              "paid_report_url": f"{wire.url}/paid", "feed_poll_seconds": 2},
        accel=accelerator(image.kernel),
    )  # fmt: skip
    try:
        cluster.up()
        state = json.loads((workdir / "cluster.json").read_text())
        state["miner"] = {"rpc_url": miner.rpc_url, "cookie_file": str(miner.cookie_path),
                          "wallet": "miner"}  # fmt: skip
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
        miner.stop()


if __name__ == "__main__":
    sys.exit(main())
