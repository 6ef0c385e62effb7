"""`wire-mpcd`: run one node from its configuration file (wiring only).

Opens the HSM, the vault and the store, starts the engine (mesh and ceremonies) and its
control socket, and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from appliance.config import ConfigError, NodeConfig, load_config
from appliance.control import ControlServer
from appliance.engine import Engine
from appliance.exports import KeyExports
from appliance.operators import OperatorRegistry
from appliance.store import OperatorRecords, Store
from hsm.errors import HsmError
from hsm.keystore import Keystore
from hsm.vault import ShareVault

log = logging.getLogger("wire-mpcd")


async def serve(config: NodeConfig, keystore: Keystore) -> None:
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store(config.database)
    engine = Engine(
        config, keystore, store, ShareVault(config.vault_dir), config.curve_secret_key()
    )
    operators = OperatorRegistry(
        OperatorRecords(store),
        keystore,
        config.node_id,
        f"wire-mpc {config.cluster_id}/{config.node_id}",
        delay_max=config.operators.code_delay_max_seconds,
    )
    exports = KeyExports(
        engine.backup_key_share,
        lambda key: None if (row := store.active_key(key)) is None else row.epoch,
        engine.audit,
        config.operators.export_approval_seconds,
    )
    control = ControlServer(engine, config.engine_socket, config.engine_clients, operators, exports)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await engine.start()
    await control.start()
    log.info("node %s of cluster %s is up", config.node_id, config.cluster_id)
    try:
        await stop.wait()
    finally:
        await control.close()
        await engine.stop()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wire-mpcd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("/etc/wire-mpc/config.json"))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = load_config(args.config)
        keystore = Keystore.open(config.hsm)
    except (ConfigError, HsmError) as exc:
        print(f"wire-mpcd: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(config, keystore))
    except ConfigError as exc:
        print(f"wire-mpcd: {exc}", file=sys.stderr)
        return 1
    finally:
        keystore.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
