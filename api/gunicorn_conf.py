"""gunicorn settings of `wire-api`, read from the node's configuration file
(`WIRE_MPC_CONFIG`): a Unix socket only (no TCP), 0660 to the operators' group (or 0600 when
no group is configured), a few sync workers, and the Prometheus files of the workers in the
directory the engine's exporter collects."""

from __future__ import annotations

import grp
import logging
import os
from pathlib import Path
from typing import Any

from api import metrics
from api.accounts import Accounts
from appliance.config import load_config

_config = load_config(Path(os.environ.get("WIRE_MPC_CONFIG", "/etc/wire-mpc/config.json")))
assert _config.api is not None
_api = _config.api

bind = [f"unix:{_api.socket}"]
workers = _api.workers
worker_class = "sync"
umask = 0o007 if _api.socket_group else 0o077
timeout = 900  # a DKG or key rotation answers only when the ceremony ends
graceful_timeout = 30
limit_request_line = 8190
limit_request_fields = 50
proc_name = "wire-api"
accesslog = None  # every request is an audit record instead
errorlog = "-"
loglevel = "info"
wsgi_app = "api.wsgi:application"

metrics.configure(_api.metrics_dir)


def on_starting(server: Any) -> None:
    for stale in _api.metrics_dir.glob("*.db"):  # files of workers of an earlier run
        stale.unlink()
    _api.socket.parent.mkdir(parents=True, exist_ok=True)
    # Create and migrate the accounts database once, before the workers start: two workers
    # switching a new database to WAL at the same moment would find it locked.
    _api.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    Accounts(_api.database).close()


def when_ready(server: Any) -> None:
    if _api.socket_group:
        try:
            os.chown(_api.socket, -1, grp.getgrnam(_api.socket_group).gr_gid)
        except (KeyError, PermissionError) as exc:
            logging.getLogger("wire-api").error(
                "cannot give %s to group %s: %s", _api.socket, _api.socket_group, exc
            )
        os.chmod(_api.socket, 0o660)
    else:
        os.chmod(_api.socket, 0o600)


def child_exit(server: Any, worker: Any) -> None:
    metrics.worker_exit(worker.pid)
