"""sdlora.ops.ray_session: which Ray cluster ``ensure_ray`` attaches to, against the real
``ray.init``.

The slow tests start real local clusters with ``ray start --head`` (in their own session, in a
private RAY_TMPDIR, so that nothing here sees or touches another Ray on the machine) and end
them by killing that session's processes: ``ray stop`` would stop every Ray on the machine.
Run them inside a loopback-only network namespace (see .ci/run and NOTES-ENV). The binding test
starts in-process Ray in a child process, in a namespace of its own where Ray sees a non-loopback
address (as on a host), and lists the sockets that process and its descendants listen on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdlora.ops.ray_session import (
    ENV_VAR,
    IN_PROCESS_ENV,
    ensure_ray,
    resolve_address,
    use_in_process_env,
)

from .sockets import listening, loopback

RAY = Path(sys.executable).with_name("ray")  # the venv's ray CLI
WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


# ---- the precedence, without Ray -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "env", "address", "source"),
    [
        ("10.0.0.5:6379", None, "10.0.0.5:6379", "params"),
        ("10.0.0.5:6379", "10.0.0.9:6379", "10.0.0.5:6379", "params"),  # explicit params win
        ("ray://10.0.0.5:10001", "10.0.0.9:6379", "ray://10.0.0.5:10001", "params"),
        ("auto", "10.0.0.9:6379", "10.0.0.9:6379", "RAY_ADDRESS"),  # RAY_ADDRESS beats 'auto'
        ("auto", None, "auto", "params"),
        ("local", "10.0.0.9:6379", "local", "params"),
        (None, "10.0.0.9:6379", "10.0.0.9:6379", "RAY_ADDRESS"),
        (None, "", "local", "default"),  # an empty RAY_ADDRESS is unset (Ray ignores it too)
        (None, None, "local", "default"),  # not None: ray.init() would attach to `ray start`'s
    ],
)
def test_resolution_follows_ray_init(
    params: str | None, env: str | None, address: str, source: str
) -> None:
    target = resolve_address(params, {} if env is None else {ENV_VAR: env})
    assert (target.address, target.source) == (address, source)
    if source == "params" and env:
        assert "ignored" in target.why


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on return: nothing listens there


def test_an_unreachable_address_fails_fast_and_says_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    ray.shutdown()
    port = _dead_port()
    monkeypatch.setenv(ENV_VAR, f"127.0.0.1:{_dead_port()}")
    start = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        ensure_ray(f"127.0.0.1:{port}")  # without the check Ray retries for ~14 minutes
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "in params" in message
    assert f"{ENV_VAR}=" in message and "ignored" in message and "set it to null" in message
    monkeypatch.setenv(ENV_VAR, f"localhost:{port}")
    with pytest.raises(ConnectionError, match=f"{ENV_VAR}=.*overrides ray.address 'auto'"):
        ensure_ray("auto")
    assert time.monotonic() - start < 10
    assert not ray.is_initialized()


# ---- real clusters ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A local cluster started by ``ray start --head``; ``marker`` is a custom resource it has."""

    port: int
    marker: str
    session: int  # the session id of its processes

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _start(name: str, env: dict[str, str]) -> Cluster:
    port = _free_port()
    cmd = [
        str(RAY), "start", "--head", f"--port={port}", "--num-cpus=1", "--disable-usage-stats",
        "--include-dashboard=false", f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--resources={json.dumps({name: 1})}",
    ]  # fmt: skip
    # a new session: every process of the cluster (GCS, raylet, agents, workers) stays in it
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    cluster = Cluster(port, name, proc.pid)
    try:
        out, _ = proc.communicate(timeout=120)  # `ray start` returns once the cluster is up
    except subprocess.TimeoutExpired:
        _stop(cluster)  # `ray start` included: it is in the session too
        proc.wait()
        raise
    if proc.returncode:
        _stop(cluster)
        raise RuntimeError(f"ray start failed:\n{out.decode()[-3000:]}")
    return cluster


def _stop(cluster: Cluster) -> None:
    """End the cluster's processes (and only those: its session's), by their ids."""
    _end_session(cluster.session)


def _end_session(session: int) -> None:
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _sid(int(p)) == session]
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3  # gcs_server does not exit on SIGTERM: it gets SIGKILL
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _running(pid):
            _kill(pid, signal.SIGKILL)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _running(pid: int) -> bool:
    """Alive and not a zombie (this container's init may never reap the cluster's processes)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def tmp_root() -> Iterator[str]:
    """A short private RAY_TMPDIR (Unix socket paths must stay under ~100 characters)."""
    root = tempfile.mkdtemp(prefix="sdlr", dir="/tmp")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _cluster_env(tmp_root: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    env.update(
        RAY_TMPDIR=tmp_root, RAY_USAGE_STATS_ENABLED="0", HOME=tmp_root, RAY_AUTH_MODE="disabled"
    )
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def clusters(tmp_root: str) -> Iterator[tuple[Cluster, Cluster]]:
    """Two clusters, A then B: B is the one `ray start` recorded last (ray_current_cluster)."""
    started: list[Cluster] = []
    try:
        for name in ("cluster_a", "cluster_b"):
            started.append(_start(name, _cluster_env(tmp_root)))
        recorded = Path(tmp_root, "ray", "ray_current_cluster").read_text().strip()
        assert recorded.endswith(f":{started[1].port}")
        yield started[0], started[1]
    finally:
        for cluster in started:
            _stop(cluster)


@pytest.fixture
def driver(clusters: tuple[Cluster, Cluster], tmp_root: str, monkeypatch: pytest.MonkeyPatch):
    """This process as a driver that sees the clusters' RAY_TMPDIR; Ray shut down around it."""
    import ray

    ray.shutdown()
    monkeypatch.setenv("RAY_TMPDIR", tmp_root)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the clusters run without token auth
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv(ENV_VAR, raising=False)
    yield clusters
    ray.shutdown()


def _attached(*clusters: Cluster) -> str:
    """Which cluster this process is attached to (a cluster's marker, or 'fresh'); then detach."""
    import ray

    port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    resources = ray.cluster_resources()
    ray.shutdown()
    for cluster in clusters:
        if cluster.port == port:
            assert resources.get(cluster.marker) == 1
            return cluster.marker
    assert not any(c.marker in resources for c in clusters)
    return "fresh"


@pytest.mark.slow
def test_params_address_attaches(driver: tuple[Cluster, Cluster]) -> None:
    a, b = driver
    ensure_ray(a.address)
    assert _attached(a, b) == "cluster_a"
    ensure_ray(f"localhost:{a.port}")  # Ray maps localhost to this node's address
    assert _attached(a, b) == "cluster_a"


@pytest.mark.slow
def test_ray_address_attaches_when_params_is_null(
    driver: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = driver
    monkeypatch.setenv(ENV_VAR, a.address)
    ensure_ray(None)
    assert _attached(a, b) == "cluster_a"


@pytest.mark.slow
def test_both_set_explicit_params_win_but_ray_address_beats_auto(
    driver: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    a, b = driver
    monkeypatch.setenv(ENV_VAR, a.address)
    ensure_ray(b.address)
    assert _attached(a, b) == "cluster_b"  # params name a cluster: RAY_ADDRESS ignored
    ensure_ray("auto")
    assert _attached(a, b) == "cluster_a"  # RAY_ADDRESS, not the last `ray start` (B)
    # and that is what ray.init itself does with the same arguments
    ray.init(address=b.address, include_dashboard=False)
    assert _attached(a, b) == "cluster_b"
    ray.init(address="auto", include_dashboard=False)
    assert _attached(a, b) == "cluster_a"


@pytest.mark.slow
def test_auto_alone_finds_the_last_ray_start(driver: tuple[Cluster, Cluster]) -> None:
    a, b = driver
    ensure_ray("auto")
    assert _attached(a, b) == "cluster_b"


@pytest.mark.slow
def test_neither_set_starts_ray_in_process(
    driver: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    monkeypatch.delenv(WATCHER, raising=False)
    a, b = driver
    ray.init(include_dashboard=False)  # plain ray.init() attaches to the last `ray start`...
    assert _attached(a, b) == "cluster_b"
    ensure_ray(None)  # ...ensure_ray(None) does not: a fresh Ray in this process
    assert ray._private.worker.global_worker.node.head  # this process started the head node
    assert _attached(a, b) == "fresh"
    assert os.environ[WATCHER] == "0"  # one node of this process's own: nothing to preempt


def test_the_in_process_settings_yield_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WATCHER, "1")  # a user who wants Ray Train's watcher keeps it
    use_in_process_env()
    assert os.environ[WATCHER] == "1"
    monkeypatch.delenv(WATCHER)
    use_in_process_env()
    assert os.environ[WATCHER] == IN_PROCESS_ENV[WATCHER] == "0"


@pytest.mark.slow
def test_a_token_cluster_needs_ray_auth_mode_token() -> None:
    """Token auth: an explicit address attaches only with RAY_AUTH_MODE=token and the token."""
    token = secrets.token_hex(32)
    home = tempfile.mkdtemp(prefix="sdlt", dir="/tmp")
    env = _cluster_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    cluster = _start("cluster_t", env)
    script = textwrap.dedent(f"""
        import ray
        from sdlora.ops.ray_session import ensure_ray
        try:
            ensure_ray({cluster.address!r})
        except ConnectionError as err:
            print("ERROR", err)
        else:
            print("ATTACHED", ray.cluster_resources().get("cluster_t"))
    """)
    try:
        runs = {}
        for mode in ("unset", "token"):
            run_env = _cluster_env(home, RAY_AUTH_TOKEN=token)
            if mode == "unset":
                del run_env["RAY_AUTH_MODE"]
            else:
                run_env["RAY_AUTH_MODE"] = "token"
            out = subprocess.run(
                [sys.executable, "-c", script], env=run_env, capture_output=True, text=True,
                timeout=180, cwd=Path(__file__).resolve().parents[2],
            )  # fmt: skip
            runs[mode] = out.stdout
    finally:
        _stop(cluster)
        shutil.rmtree(home, ignore_errors=True)
    assert runs["unset"].startswith(f"ERROR the Ray cluster at {cluster.address}"), runs
    assert "uses token authentication" in runs["unset"] and "RAY_AUTH_MODE=token" in runs["unset"]
    assert "ATTACHED 1.0" in runs["token"], runs


# ---- where in-process Ray listens ---------------------------------------------------------------

# A namespace whose only device is loopback, with a second, non-loopback address on it and a
# default route from it: Ray takes that address for the machine's own (as it takes eth0's on a
# host), but no packet can leave. Without the namespace the test runs on the host's network.
_FAKE_HOST = (
    "ip link set lo up && ip addr add 198.18.0.2/32 dev lo && "
    "ip route add default dev lo src 198.18.0.2"
)
_STARTS_RAY = textwrap.dedent("""
    import sys, ray
    from sdlora.ops.ray_session import ensure_ray
    ensure_ray(None)
    ray.get(ray.remote(lambda: 0).remote())  # a worker, with its own server, is up
    print(ray.util.get_node_ip_address(), ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()  # until the test closes stdin
    ray.shutdown()
""")
# Ray 2.60's servers, by process name (comm, at most 15 characters): GCS, raylet (node and object
# manager), a worker's core-worker server, the dashboard and runtime-env agents; "python" is this
# driver's core-worker server and the metrics exporters of the autoscaler monitor and the
# dashboard head (which runs even without the dashboard)
_COMPONENTS = {
    "gcs_server", "raylet", "python", "ray::IDLE", "ray::DashboardA", "ray::RuntimeEnv",
}  # fmt: skip


def _fake_host_prefix() -> list[str]:
    """``unshare -n sh -c ...`` that runs a command in a private namespace (see _FAKE_HOST)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return []
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        return []
    return ["unshare", "-n", "sh", "-c", f'{_FAKE_HOST} && exec "$0" "$@"']


@pytest.mark.slow
def test_in_process_ray_listens_on_loopback_only(tmp_root: str) -> None:
    """Every server of the Ray that ensure_ray(None) starts listens on 127.0.0.1 (Ray's default
    is every interface), on a host that has a non-loopback address."""
    cmd = [*_fake_host_prefix(), sys.executable, "-c", _STARTS_RAY]
    proc = subprocess.Popen(
        cmd, env=_cluster_env(tmp_root), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, start_new_session=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    seen: set[tuple[str, int, str]] = set()
    try:
        started = proc.stdout.readline().split()  # node IP and GCS address: Ray is up
        assert started, "Ray did not start (its output is above)"
        deadline, stable = time.monotonic() + 60, 0
        while time.monotonic() < deadline and stable < 4:  # the agents start beside the raylet
            before = len(seen)
            seen |= listening(proc.pid)
            up = {name for _, _, name in seen} >= _COMPONENTS
            stable = stable + 1 if up and len(seen) == before else 0
            time.sleep(0.5)
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        _end_session(proc.pid)
    listed = "\n".join(f"{name} {address} {port}" for address, port, name in sorted(seen))
    assert {name for _, _, name in seen} >= _COMPONENTS, f"not all of Ray was up:\n{listed}"
    exposed = sorted(s for s in seen if not loopback(s[0]))
    assert not exposed, f"listening beyond loopback: {exposed}\nall:\n{listed}"
    node_ip, gcs = started
    assert (node_ip, gcs.rsplit(":", 1)[0]) == ("127.0.0.1", "127.0.0.1")
