"""The address a bound socket tells its peers: never the bind address itself when that is a wildcard.

A socket bound to ``0.0.0.0`` (every interface, as on a Kubernetes pod) is reachable at the pod's IP,
not at ``0.0.0.0``: a peer on another pod that connects to ``tcp://0.0.0.0:port`` connects to its own
pod and waits until its deadline. Every data-plane server (reward shards, the trajectory receiver,
the weight publisher) advertises :func:`advertised_host` instead.

Which IP: inside Ray, the address Ray itself uses for this node (the IP every other node already
reaches it at); outside Ray, the IP this host's name resolves to. A specific bind address is its own
advertised address.
"""

from __future__ import annotations

import logging
import socket

__all__ = ["WILDCARD_HOSTS", "advertised_host", "endpoint"]

log = logging.getLogger(__name__)

WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "", "::"})


def _ray_node_ip() -> str | None:
    """The node IP of the Ray worker or driver this process is (None outside Ray)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    try:
        return ray.util.get_node_ip_address()
    except Exception:  # an odd Ray state must not stop a socket from starting
        return None


def _hostname_ip() -> str:
    """What this host's name resolves to (a pod's /etc/hosts names its IP)."""
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError as e:
        raise OSError(f"cannot tell peers where a socket bound to every interface is: hostname {name!r} "
                      f"does not resolve ({e}); bind a specific address (transport.bind_host)") from e


def advertised_host(bind_host: str) -> str:
    """The host part peers should connect to for a socket bound to ``bind_host``."""
    if bind_host not in WILDCARD_HOSTS:
        return bind_host
    host = _ray_node_ip() or _hostname_ip()
    if host.startswith("127."):
        log.warning("socket bound to %r advertises %s (loopback): peers on other hosts cannot reach it",
                    bind_host, host)
    return host


def endpoint(bind_host: str, port: int) -> str:
    """``tcp://<advertised host>:<port>`` for a socket bound to ``bind_host``."""
    return f"tcp://{advertised_host(bind_host)}:{port}"
