"""A Ray session for a sweep: embedded local Ray by default, an existing cluster by address.

Local Ray is started small (``num_cpus`` = the sweep's workers, no dashboard, workers' output not
copied to this terminal) and shut down afterwards. An address is checked with a plain TCP
connection first: ``ray.init`` itself retries an unreachable address for minutes, the check
answers in seconds. A Ray session this process already holds (``ray.init`` called by the user)
is used as it is and left running.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from steadygrad.core.checks import positive_int

CONNECT_TIMEOUT_S = 3.0


class RayClusterUnreachable(ConnectionError):
    """``address`` names a Ray cluster that does not answer."""


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address, or None for ``"auto"`` (Ray finds the local cluster).

    Accepts ``host:port`` (the head node's GCS port, 6379 unless changed) and
    ``ray://host:port`` (Ray Client, 10001 unless changed).

    Example:
        >>> parse_address("ray://head.example:10001")
        ('head.example', 10001)
        >>> parse_address("auto") is None
        True
    """
    if not isinstance(address, str):
        raise TypeError(f"address must be a str, got {type(address).__name__}")
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port_text = rest.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal is written [::1]:6379
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(
            f"address must be 'host:port', 'ray://host:port' or 'auto', got {address!r}"
        )
    return host, int(port_text)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`RayClusterUnreachable` unless something accepts connections at ``address``.

    Example:
        >>> check_reachable("127.0.0.1:1")  # doctest: +SKIP
        Traceback (most recent call last):
        RayClusterUnreachable: address '127.0.0.1:1': no Ray cluster answers there ...
    """
    target = parse_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayClusterUnreachable(
            f"address {address!r}: no Ray cluster answers there ({reason}). Start one with "
            "'ray start --head' and pass the address it prints, or leave the address out to "
            "run the sweep on local Ray."
        ) from None


@contextmanager
def ray_session(address: str | None = None, workers: int = 1) -> Iterator[None]:
    """Use Ray inside the block: a running session, a cluster at ``address``, or local Ray.

    Example:
        >>> with ray_session(workers=2):  # doctest: +SKIP
        ...     ray.cluster_resources()["CPU"]
        2.0
    """
    try:
        import ray
    except ImportError:
        raise ImportError(
            "sweeps run on Ray Tune, which is not installed: pip install 'steadygrad[ray]'"
        ) from None

    workers = positive_int("workers", workers)
    if address is not None:
        check_reachable(address)
    if ray.is_initialized():
        if address is not None:
            raise ValueError(
                "address was given but this process already holds a Ray session; "
                "call ray.shutdown() first or leave address out to use that session"
            )
        yield
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        with _python_path_for_workers():
            ray.init(address="local", num_cpus=workers, **quiet)
    else:
        del quiet["include_dashboard"]  # a setting of the cluster's head, not of a driver
        ray.init(address=address, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _python_path_for_workers() -> Iterator[None]:
    """Let local Ray's workers import what this process imports (they inherit the environment
    at start-up), e.g. a sweep function in a module found through ``sys.path``."""
    before = os.environ.get("PYTHONPATH")
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if before:
        paths.append(before)
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
