"""Start Ray in this process, or attach this process to a running Ray cluster.

:func:`ensure_ray` takes ``ray.address`` from params; ``RAY_ADDRESS`` (the environment) counts
too. Which one wins is Ray's own rule (Ray 2.60, ``ray.init`` in ``ray/_private/worker.py``): a
non-empty RAY_ADDRESS replaces an address that is None or ``"auto"``, and nothing else;
then ``ray/_private/services.py`` (``canonicalize_bootstrap_address``) resolves what is left:
``None`` and ``"auto"`` look for a cluster on this machine, ``"local"`` starts a new one. So:

=====================  ===========  =====================================================
``ray.address``        RAY_ADDRESS  Ray attaches to
=====================  ===========  =====================================================
``host:port``          any          ``host:port``; RAY_ADDRESS is ignored
``ray://host:port``    any          that cluster, through Ray Client; RAY_ADDRESS ignored
``auto``               set          RAY_ADDRESS: it overrides ``auto``
``auto``               unset        the cluster last started by ``ray start`` on this
                                    machine (its address is in
                                    ``$RAY_TMPDIR/ray/ray_current_cluster``, else under
                                    ``$TMPDIR`` or ``/tmp``), else any Ray GCS process
                                    running here; none: ``ConnectionError``
``local``              any          nothing: a new Ray instance starts in this process
null                   set          RAY_ADDRESS
null                   unset        nothing: a new Ray instance starts in this process
=====================  ===========  =====================================================

The last row is this module's choice: a plain ``ray.init()`` would attach to the cluster last
started by ``ray start`` on this machine, like ``auto``. :func:`ensure_ray` passes ``"local"``
instead, so that null without RAY_ADDRESS always means Ray in this process.

A host of ``localhost``/``127.0.0.1`` is replaced by this node's IP address (Ray does the same,
``resolve_ip_for_localhost``). Before ``ray.init`` attaches to an explicit address,
:func:`ensure_ray` checks that something listens there: Ray itself retries an unreachable
address for many minutes (14 in a test here) before it gives up.

Token authentication (Ray 2.60): a new in-process instance and a ``ray start`` cluster on a
machine that has a token (``~/.ray/auth_token``, which the first in-process ``ray.init()``
writes) require one. Ray picks the token up by itself only when it finds the cluster itself
(``auto`` without RAY_ADDRESS): a driver given an explicit address (``ray.address`` or
RAY_ADDRESS) must set ``RAY_AUTH_MODE=token`` and have the cluster's token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), else ``ray.init`` fails after about 20 s.
``RAY_AUTH_MODE=disabled``, set for the cluster and the driver, turns it off.

Binding: a Ray instance that :func:`ensure_ray` starts in this process listens on 127.0.0.1
only (GCS, raylet and object manager, workers, dashboard and runtime-env agents, metrics
exporters): its node IP is loopback (:func:`_loopback_node`). Ray's default would be every
interface. A cluster named by an address is used as it was started: ``ray start`` decides.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from sdlora.errors import Failed

ENV_VAR = "RAY_ADDRESS"
PROBE_TIMEOUT_S = 5.0  # how long a TCP connect to an explicit address may take
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
# Ray Train settings for a Ray instance in this process (one node, never drained)
IN_PROCESS_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class ClusterUnreachable(Failed, ConnectionError):
    """The Ray cluster that params or RAY_ADDRESS name cannot be reached or refused this
    process; the message says which address, where it came from and what to do."""


@dataclass(frozen=True)
class RayTarget:
    """What :func:`ensure_ray` passes to ``ray.init`` and why."""

    address: str  # 'host:port', 'ray://host:port', 'auto' or 'local'
    source: str  # 'params' (ray.address), 'RAY_ADDRESS' or 'default' (neither is set)
    why: str  # one line for messages: where the address came from, what was ignored


def resolve_address(params: str | None, environ: Mapping[str, str] | None = None) -> RayTarget:
    """The address ``ray.init`` acts on for ``ray.address = params``: Ray's precedence.

    RAY_ADDRESS (when set and not empty) replaces a null or ``'auto'`` ``ray.address``; any
    other ``ray.address`` is used as given and RAY_ADDRESS is ignored. Neither: ``'local'``.
    """
    env = (os.environ if environ is None else environ).get(ENV_VAR) or None
    params = params or None
    if env is not None and params in (None, "auto"):
        given = "null" if params is None else "'auto'"
        return RayTarget(env, ENV_VAR, f"{ENV_VAR}={env!r}, which overrides ray.address {given}")
    if params is not None:
        ignored = f"; {ENV_VAR}={env!r} is ignored" if env is not None else ""
        return RayTarget(params, "params", f"ray.address {params!r} in params{ignored}")
    return RayTarget("local", "default", f"ray.address is null and {ENV_VAR} is unset")


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address, else None."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    if parts.scheme not in ("", "ray"):
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname and port else None


def _probe(host: str, port: int) -> None:
    """Raise OSError unless a TCP connection to ``host:port`` opens within PROBE_TIMEOUT_S."""
    if host in _LOOPBACK:  # where Ray will connect (services.resolve_ip_for_localhost)
        import ray.util

        host = ray.util.get_node_ip_address()
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
        pass


def _advice(target: RayTarget) -> str:
    if target.source == ENV_VAR:
        return (
            f"Start the cluster, correct {ENV_VAR}, or unset it (with ray.address null, Ray "
            "then starts in this process)."
        )
    if target.address == "auto":
        return (
            "Start one (`ray start --head`), give its address as ray.address (or in "
            f"{ENV_VAR}), or set ray.address to null to start Ray in this process."
        )
    return (
        "Start the cluster, correct ray.address, or set it to null (and unset "
        f"{ENV_VAR}) to start Ray in this process."
    )


def _auth_refused(err: BaseException) -> bool:
    """Whether ``err``, or what caused it, is the cluster refusing this process's token.

    Ray raises AuthenticationError when connecting to the GCS, but ``ray.init`` reports it as
    a ConnectionError from a RuntimeError whose message holds the AuthenticationError's
    traceback (``ray/_private/node.py``, "Last connection error").
    """
    import ray.exceptions

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ray.exceptions.AuthenticationError) or (
            "AuthenticationError" in str(seen)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While Ray starts a new instance in this process, make its node IP 127.0.0.1.

    Ray 2.60 binds its servers to all interfaces unless the node IP is loopback, and
    ``ray.init`` replaces ``_node_ip_address="127.0.0.1"`` by this machine's address
    (``services.resolve_ip_for_localhost``) unless multi-node clusters are off
    (``ray_constants.ENABLE_RAY_CLUSTER``, read only by ``services.get_node_ip_address``; off on
    macOS and Windows, which is why Ray stays on loopback there). So: off for the call. The
    processes Ray starts are handed the node IP (``--node-ip-address``) and need nothing else.
    """
    from ray._private import ray_constants

    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled


def use_in_process_env() -> None:
    """Set :data:`IN_PROCESS_ENV` in this process's environment where it is not set already."""
    for key, value in IN_PROCESS_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(address: str | None) -> None:
    """Attach to the cluster ``address`` (params ``ray.address``) or RAY_ADDRESS names, or start
    Ray in this process; nothing when Ray is already initialised here.

    Precedence (Ray's, see the module docstring): an explicit ``ray.address`` beats
    RAY_ADDRESS, RAY_ADDRESS beats null and ``'auto'``; ``'auto'`` alone finds a cluster on
    this machine; null without RAY_ADDRESS (or ``'local'``) starts Ray in this process, on
    127.0.0.1 only. The dashboard is never started here. Raises :class:`ClusterUnreachable` (a
    ConnectionError) naming the address, where it came from and what to do when the cluster
    cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return
    target = resolve_address(address)
    host_port = _host_port(target.address)
    if host_port is not None:
        try:
            _probe(*host_port)
        except OSError as err:
            raise ClusterUnreachable(
                f"cannot reach the Ray cluster at {target.address} ({target.why}): "
                f"{err.strerror or err}. {_advice(target)}"
            ) from err
    in_process = target.address == "local"
    if in_process:
        use_in_process_env()
    try:
        with _loopback_node() if in_process else contextlib.nullcontext():
            ray.init(
                address=target.address,
                include_dashboard=False,
                _node_ip_address="127.0.0.1" if in_process else None,
            )
    except (ConnectionError, ray.exceptions.AuthenticationError) as err:
        if target.source == "default":
            raise
        if _auth_refused(err):
            raise ClusterUnreachable(
                f"the Ray cluster at {target.address} ({target.why}) uses token authentication "
                "and refused this process: set RAY_AUTH_MODE=token and provide the cluster's "
                "token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Ray turns "
                "token authentication on by itself only for a cluster it finds itself "
                f"(ray.address 'auto' without {ENV_VAR})."
            ) from err
        raise ClusterUnreachable(
            f"could not attach to a Ray cluster at {target.address} ({target.why}): {err}. "
            f"{_advice(target)}"
        ) from err
