"""Ray for ``--actors=ray``, checked before anything compiles: the import (an
optional extra) and ``--ray_address``."""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile

from dqnx.errors import ConfigError

EXTRA = "pip install 'dqnx[ray]'"


def import_ray(local: bool = False):
    """Imports Ray; ``local``: first sets what a local instance of this run needs
    in the environment (read once, when Ray is imported): usage statistics off,
    token authentication on with a token kept in this environment only."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        if os.environ["RAY_AUTH_MODE"] == "token":  # no file under ~/.ray
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--actors=ray needs Ray: {EXTRA}") from None
    return ray


def check_address(address: str, timeout: float = 3.0) -> None:
    """Raises ConfigError (one line) if ``--ray_address`` names no reachable cluster.

    ``""`` (a local instance) always passes; ``auto`` needs a cluster started on
    this machine (``ray start``: RAY_ADDRESS or Ray's current-cluster file);
    ``HOST:PORT`` must accept a TCP connection within ``timeout`` seconds.
    """
    if not address:
        return
    if address == "auto":
        current = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
        if os.environ.get("RAY_ADDRESS") or os.path.exists(current):
            return
        raise ConfigError("--ray_address=auto: no Ray cluster runs on this machine (ray start)")
    host, _, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise ConfigError("--ray_address: Ray Client (ray://) is not supported; use HOST:PORT")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray_address={address} must be empty, auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(
            f"--ray_address={address}: no Ray cluster answers there ({e.strerror or e})"
        ) from None
