"""The Ray connection of the teach job: a local Ray on the loopback interface, or a cluster by
address, with one-line refusals naming what to set."""

import contextlib
import logging
import os
import socket

import ray

from kdcache.errors import RayUnavailable
from kdcache.pipeline.teach.worker import one_line


def start_ray(address: str | None) -> None:
    """Connect to the cluster at ``address`` (``auto``: the one this node belongs to), or, with
    none, start a local Ray of this machine's CPUs that listens on the loopback interface only.
    A cluster is used only when asked for: ``RAY_ADDRESS`` and clusters started on this machine
    with ``ray start`` are ignored without an address.

    The local Ray's workers run at this process's priority: Ray's default puts them 15 nice
    levels below it, which on a busy machine hands their CPU to anything else running."""
    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.WARNING)
    options = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address is None:
        notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
        notices.addFilter(_not_the_default_token_notice)
        try:
            with _loopback_node():
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                         _system_config={"worker_niceness": 0}, **options)  # fmt: skip
        finally:
            notices.removeFilter(_not_the_default_token_notice)
        return
    loopback = contextlib.nullcontext()
    if address != "auto" and "://" not in address:
        check_reachable(address)
        if address.rpartition(":")[0] in LOOPBACK_HOSTS:  # e.g. another kdcache's local Ray
            loopback = _loopback_node()
    try:
        with loopback:
            ray.init(address=address, **options)
    except ConnectionError as error:
        raise RayUnavailable(_refused(address, error)) from None


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _not_the_default_token_notice(record: logging.LogRecord) -> bool:
    """False for Ray's warning that a new local Ray enables token authentication by default
    (as README says; it went to stderr on every local teach, ``--quiet`` too), so that the
    command's own lines are all it prints; Ray's other authentication warnings pass."""
    return not record.getMessage().startswith("Token authentication is enabled for this Ray")


@contextlib.contextmanager
def _loopback_node():
    """Make the node Ray starts here take 127.0.0.1 as its address, so that its GCS, raylet,
    object manager, agents and workers bind to the loopback interface alone (Ray binds every
    interface for any other node address; its ``_node_ip_address`` maps 127.0.0.1 back to the
    machine's address unless multi-node clusters are switched off, which is what this does; a
    driver joining a loopback cluster needs the same, or it dials the machine's address)."""
    constants = ray._private.ray_constants
    enabled = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = enabled


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming ``address``, when nothing accepts connections there (Ray itself keeps
    retrying an unreachable cluster for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise RayUnavailable(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start its head "
            "with `ray start --head` and give the address it prints, or none for a local Ray"
        ) from None


def _refused(address: str, error: ConnectionError) -> str:
    """Why connecting to ``address`` failed, in one line naming what to set."""
    cause = f"{error} {error.__cause__ or ''}"
    if "Could not find any running Ray" in cause:
        return (
            "Ray address auto: no Ray cluster runs on this node (start one with "
            "`ray start --head`, or give the head's HOST:PORT)"
        )
    if "Unauthenticated" in cause or "AuthToken" in cause:
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            return (
                f"the Ray cluster at {address} requires token authentication: set "
                "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, a file named by "
                "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) in this environment"
            )
        return (
            f"the Ray cluster at {address} refused this client's token: RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token must hold the cluster's token"
        )
    return f"could not connect to the Ray cluster at {address}: {one_line(error)}"


def stop_ray() -> None:
    """Disconnect from Ray (and stop a local Ray this process started), freeing its CPUs."""
    ray.shutdown()
