"""Start or join Ray the way the labs need it: token auth on, dashboard on loopback only.

Ray 2.60 turns token authentication on by default. A cluster started here writes its token to
``~/.ray/auth_token``; every client (a notebook joining with ``address="auto"``, ``ray job
submit``, the dashboard in a browser) must present it. Clients find it when ``RAY_AUTH_MODE=token``
is set, so ``init_ray`` sets that before Ray is imported, unless the user chose otherwise.

One lifecycle, three shapes of cluster. Whatever labkit starts, it ends by its own ids, never
with Ray's stop command (which ends every Ray process of the user):

- ``init_ray()`` with no address: a cluster inside this Python process (``ray.init``), gone
  with the process or ``shutdown_ray()``; what notebooks use.
- ``LocalHead``: a head in a process group of its own, owned by the caller and ended with it
  (``stop()``, or when the caller exits); what tests and ``labkit.elastic``'s autoscaling
  cluster use.
- ``start_head()``: a detached head that outlives the command that started it (``labkit serve
  up``), recorded so that ``stop_head()`` ends its processes, and only those.

The two heads start from one command line (``head_command``) and wait for the same ports.

Example:
    >>> from labkit.ray_runtime import init_ray
    >>> info = init_ray(num_cpus=2)          # doctest: +SKIP
    >>> info.dashboard_url                   # doctest: +SKIP
    'http://127.0.0.1:8265'
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

LOOPBACK = "127.0.0.1"
# which head `labkit serve up` started (address and Ray session), so it can stop just that one
_HEAD_RECORD = Path(platformdirs.user_state_dir("labkit")) / "ray_head.json"


@dataclass(frozen=True)
class RayInfo:
    """What a lab needs to know about the Ray it is connected to."""

    address: str
    dashboard_url: str | None
    resources: dict
    auth_mode: str
    token_file: Path | None
    started_here: bool


def auth_token_file() -> Path:
    """Where Ray keeps the cluster token (``$RAY_AUTH_TOKEN_PATH`` overrides ``~/.ray/auth_token``)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def configure_auth() -> str:
    """Set ``RAY_AUTH_MODE=token`` unless the user set a mode; returns the mode in force.

    Must run before ``import ray`` reads its environment in a fresh process; worker processes
    inherit it from the driver.
    """
    return os.environ.setdefault("RAY_AUTH_MODE", "token")


def ensure_auth_token() -> Path | None:
    """The cluster token, made first if token auth is on and there is none; None when auth is off.

    ``ray.init()`` makes the token itself when it starts a cluster, but ``ray start --head`` refuses
    to start without one ("no authentication token was found"): on a fresh machine, a head started
    before any ``ray.init()`` (lab 10's autoscaling cluster, ``labkit serve start``) would fail.
    Made the way Ray's CLI documents, ``ray get-auth-token --generate``.
    """
    import subprocess
    import sys

    token = auth_token_file()
    if configure_auth() != "token" or token.is_file() or os.environ.get("RAY_AUTH_TOKEN"):
        return token if configure_auth() == "token" else None
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):  # Ray's CLI only ever writes ~/.ray/auth_token
        raise RuntimeError(f"RAY_AUTH_TOKEN_PATH points at {token}, which does not exist: put the cluster's "
                           "token there, or unset it to let labkit make one in ~/.ray/auth_token")
    done = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "token"})
    if done.returncode != 0 or not token.is_file():
        raise RuntimeError(f"could not make a Ray auth token in {token} (`ray get-auth-token --generate`): "
                           f"{done.stderr[-500:]}")
    return token


# Ray reads RAY_AUTH_MODE when it is imported, so this runs as soon as any labkit Ray module is
# imported: import labkit's Ray helpers before ``import ray`` in a notebook.
configure_auth()


@contextlib.contextmanager
def one_start_at_a_time(timeout_s: float = 600):
    """Start Ray clusters on this machine one after another, not at the same moment.

    A starting raylet gives the dashboard agent (a Python process with many imports) a fixed 15 s
    to report its port, and aborts the node otherwise. Three clusters starting together on two
    cores (the test suite tried on three workers) all missed it. One at a time, starts no longer
    compete with each other (other heavy work still can: see ``_start_local``). Ray has no
    setting for this wait, hence this lock (a file lock, so it holds between processes; the
    system releases it if the holder dies).
    """
    import fcntl
    import tempfile
    import time

    path = Path(tempfile.gettempdir()) / f"labkit-ray-start-{os.getuid()}.lock"
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another Ray cluster on this machine has been starting for over "
                                       f"{timeout_s:.0f}s (lock {path}); is a `ray start` stuck?") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def init_ray(*, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
             dashboard: bool = True, quiet: bool = True) -> RayInfo:
    """Join a running Ray cluster (``address``, e.g. ``"auto"``, or ``$RAY_ADDRESS``) or start a local one.

    A local cluster binds its dashboard to 127.0.0.1 only: on a shared workshop network a
    dashboard on 0.0.0.0 would let anyone on the wifi submit jobs. Calling it again returns the
    running cluster's info (cells can be re-run).
    """
    mode = configure_auth()
    import ray

    started_here = False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        kwargs: dict = dict(ignore_reinit_error=True, log_to_driver=not quiet, logging_level="WARNING")
        if address:
            kwargs["address"] = address
        else:
            # "local": a cluster of our own, even if a `ray start` head runs on this machine
            # (plain ray.init() would silently join that one instead).
            kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
                          dashboard_host=LOOPBACK)
            started_here = True
        try:
            if started_here:
                _start_local(ray, kwargs)
            else:
                ray.init(**kwargs)
        except ConnectionError as exc:
            raise RuntimeError(
                f"could not join the Ray cluster at {address!r}: {exc}. Is `ray start --head` running, "
                f"and is RAY_AUTH_MODE=token set with the cluster's token in {auth_token_file()}?"
            ) from None
    ctx = ray.get_runtime_context()
    url = _dashboard_url()
    token = auth_token_file()
    return RayInfo(address=ctx.gcs_address, dashboard_url=url, resources=ray.cluster_resources(),
                   auth_mode=mode, token_file=token if token.is_file() else None, started_here=started_here)


def _start_local(ray, kwargs: dict) -> None:
    """``ray.init`` of a cluster of our own, one start at a time, with Ray's start-up timeout
    explained: on a busy machine the dashboard agent misses the raylet's 15 s (trying again
    beside the same load failed the same way here, so there is no retry)."""
    with one_start_at_a_time():
        try:
            ray.init(**kwargs)
        except Exception as exc:
            if "timed out during startup" not in str(exc):
                raise
            raise RuntimeError(
                "Ray's node did not come up: its dashboard agent must report within 15 s of the raylet "
                "starting, and this machine was too busy (it starts several Python processes at once). "
                "Let other heavy work (another notebook's model, a compile, a test run) finish, then run "
                "this again.") from exc


def start_head(*, num_cpus: int | None = None, num_gpus: int | None = None, port: int | None = None,
               dashboard_port: int | None = None, timeout_s: float = 120) -> str:
    """Start a detached local head (``ray start --head``) on loopback, so that apps deployed to it
    outlive the command that deployed them; returns its GCS address (``host:port``).

    ``port`` and ``dashboard_port`` default to Ray's (6379 and 8265, where ``ray job submit``
    looks); the job agent and client server get free ports, since a notebook's own cluster may
    hold their fixed defaults. labkit records the head's Ray session, so ``stop_head`` ends this
    head and nothing else.
    """
    import subprocess
    import time

    deadline = time.monotonic() + timeout_s
    cmd, ports = head_command(port=port, dashboard_port=dashboard_port, num_cpus=num_cpus, num_gpus=num_gpus)
    try:
        with one_start_at_a_time():
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "RAY_AUTH_MODE": configure_auth()})
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`ray start --head` did not finish in {timeout_s:.0f}s; `labkit doctor` checks Ray "
                           "on this machine") from None
    if proc.returncode != 0:
        raise RuntimeError(f"`ray start --head` failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    state = head_state()
    if not state.alive or not _wait_until_listening([ports["agent"], ports["client"]], deadline=deadline):
        raise RuntimeError(f"`ray start --head` finished but the head at {state.address} did not come up; "
                           "`labkit doctor` checks Ray on this machine")
    session = _latest_session()
    _HEAD_RECORD.parent.mkdir(parents=True, exist_ok=True)
    _HEAD_RECORD.write_text(json.dumps({"address": state.address, "session": session}))
    return str(state.address)


def _wait_until_listening(ports: list[int], *, deadline: float, still_starting=lambda: True) -> bool:
    """Whether every port listens (on loopback or this node's address) before ``deadline``.

    A head's GCS answers in seconds, but its raylet starts the agents (and binds their ports) up to
    half a minute later on a busy laptop; a head started in between could take those ports and
    crash this one's raylet, so a head counts as up only when all the ports it was given listen.
    """
    import socket
    import time

    from ray.util import get_node_ip_address

    hosts = dict.fromkeys([LOOPBACK, get_node_ip_address()])
    waiting_for = list(ports)
    while waiting_for:
        for host in hosts:
            try:
                socket.create_connection((host, waiting_for[0]), timeout=1).close()
                waiting_for.pop(0)
                break
            except OSError:
                continue
        else:
            if not still_starting() or time.monotonic() > deadline:
                return False
            time.sleep(0.5)
    return True


def _log_tails(folder: Path, names: tuple[str, ...], lines: int = 15) -> str:
    """The last lines of some of a head's logs, for an error message ("" when there are none)."""
    out = []
    for name in names:
        path = folder / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"\n--- {name} (last {len(tail)} lines) ---\n" + "\n".join(tail))
    return "".join(out)


_PORTS_HANDED_OUT: set[int] = set()


def head_command(*, port: int | None = None, dashboard_port: int | None = None, num_cpus: int | None = None,
                 num_gpus: int | None = None, block: bool = False, temp_dir: str | None = None,
                 ) -> tuple[list[str], dict[str, int]]:
    """The ``ray start --head`` command line of both labkit heads, and its ports by name (``gcs``,
    ``agent``, ``client``, ``dashboard``; those given or chosen here) to wait for.

    The dashboard listens on loopback only (``dashboard_port`` None with ``block``: no dashboard;
    without ``block``: Ray's default port). Ports with fixed defaults get free ones: another Ray
    on this machine (a notebook's ``ray.init()``, the test suite's cluster) may hold 52365 (the
    job agent) and 10001 (the client server). ``port`` None: Ray's default (6379)."""
    import sys

    ensure_auth_token()  # `ray start --head` refuses to start without one
    agent_port, client_port = free_port(), free_port()
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--disable-usage-stats",
           f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}"]
    if block:
        cmd.append("--block")
    if temp_dir is not None:
        cmd.append(f"--temp-dir={temp_dir}")
    if port is not None:
        cmd.append(f"--port={port}")
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    if block and dashboard_port is None:
        cmd.append("--include-dashboard=false")
    else:
        cmd += [f"--dashboard-host={LOOPBACK}"] + ([f"--dashboard-port={dashboard_port}", "--include-dashboard=true"]
                                                   if dashboard_port is not None else [])
    named = {"gcs": port, "agent": agent_port, "client": client_port, "dashboard": dashboard_port}
    return cmd, {name: p for name, p in named.items() if p is not None}


def free_port() -> int:
    """A TCP port nothing listens on right now on loopback (the OS picks it), and one this process
    has not handed out before: a head binds the ports it was given seconds after it starts, and the
    OS would happily offer the same port again in between."""
    import socket

    while True:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port


class LocalHead:
    """A real Ray head (``ray start --head --block``) with the jobs API on loopback, owned by us.

    It runs in its own process group and ``stop()`` ends only that group, unlike Ray's own stop command,
    which ends every Ray process of the user (a notebook's cluster included). Token auth is on.

    Example:
        >>> with LocalHead(num_cpus=2) as head:                  # doctest: +SKIP
        ...     print(head.dashboard_url)
        http://127.0.0.1:40123
    """

    def __init__(self, *, num_cpus: int = 1, num_gpus: int = 0, dashboard: bool = True, timeout_s: float = 180,
                 port: int | None = None, autoscaling_config: str | os.PathLike | None = None):
        import shutil
        import subprocess
        import tempfile
        import time

        # A short temp dir: Ray's unix socket paths live under it and must stay under ~107 characters.
        self._temp_dir = tempfile.mkdtemp(prefix="lkray")
        port, dashboard_port = port or free_port(), free_port() if dashboard else None
        cmd, ports = head_command(port=port, dashboard_port=dashboard_port, num_cpus=num_cpus, num_gpus=num_gpus,
                                  block=True, temp_dir=self._temp_dir)
        # Ray resolves loopback to this node's address, where the GCS listens.
        self.address = f"{LOOPBACK}:{port}"
        self.dashboard_url = f"http://{LOOPBACK}:{dashboard_port}" if dashboard else None
        env = {**os.environ, "RAY_AUTH_MODE": configure_auth()}
        if autoscaling_config is not None:  # Ray's autoscaler with its one-machine node provider (labkit.elastic)
            cmd.append(f"--autoscaling-config={autoscaling_config}")
            env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        with one_start_at_a_time():
            self._proc = subprocess.Popen(cmd, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
            # Its own session means it would outlive us: a notebook cell that fails before
            # `head.stop()` must not leave a head running, so stop it when this process exits.
            import atexit

            atexit.register(self.stop)
            up = _wait_until_listening(list(ports.values()), deadline=time.monotonic() + timeout_s,
                                       still_starting=lambda: self._proc.poll() is None)
        if not up:
            exited = self._proc.poll()
            logs = _log_tails(self.log_dir, ("raylet.out", "gcs_server.out"))
            self.stop()
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            what = f"exited with code {exited}" if exited is not None else f"did not come up in {timeout_s:.0f}s"
            raise RuntimeError(f"`ray start --head` {what}; `labkit doctor` checks Ray on this machine{logs}")

    @property
    def temp_dir(self) -> Path:
        """This head's own Ray temp folder: every process of the cluster names it in its command line."""
        return Path(self._temp_dir)

    @property
    def log_dir(self) -> Path:
        """Where this head's Ray writes its logs (``raylet.out``, ``monitor.log``, ...)."""
        return self.temp_dir / "session_latest" / "logs"

    def stop(self) -> None:
        """End this head and everything it started; other Ray clusters keep running."""
        import shutil
        import signal
        import subprocess

        if self._proc.returncode is not None and not os.path.exists(self._temp_dir):
            return  # already stopped
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (raylet, GCS, workers) goes now: a clean shutdown of an
        # idle head can take half a minute, and nothing in it needs saving. (One second of grace,
        # not five: the five were always spent; with one, no process of the head's temp dir was
        # left after a head that had run tasks was stopped.)
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        shutil.rmtree(self._temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalHead:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class HeadState:
    """The ``ray start`` head recorded on this machine: its address (``None``: none recorded) and
    whether it answers. ``stale`` is a record of a head that is gone (killed, crashed)."""

    address: str | None
    alive: bool

    @property
    def stale(self) -> bool:
        return self.address is not None and not self.alive


def head_state(*, timeout_s: float = 2.0) -> HeadState:
    """Which ``ray start`` head Ray would join (``address="auto"``), and whether it answers.

    Ray trusts its record of the last head (``ray_current_cluster`` in its temp folder). After a
    head is killed without a clean stop (the OOM killer, a crash) the record stays, and joining it
    retries the dead address for many minutes. A TCP connection to the head's port tells a live
    head from a stale record in at most ``timeout_s``.
    """
    import socket

    from ray._private.services import find_bootstrap_address

    address = find_bootstrap_address(None)
    if not address:
        return HeadState(None, False)
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        return HeadState(address, False)
    return HeadState(address, True)


def head_running() -> bool:
    """Whether a ``ray start`` cluster runs and answers on this machine (a notebook's own cluster
    does not count)."""
    return head_state().alive


def forget_stale_head() -> str | None:
    """Remove Ray's record of a head that no longer answers (what a clean stop would have done);
    returns the dead address, or ``None`` when the record was fine or absent."""
    state = head_state()
    if not state.stale:
        return None
    from ray._common.utils import reset_ray_address

    reset_ray_address()
    if _HEAD_RECORD.is_file() and json.loads(_HEAD_RECORD.read_text()).get("address") == state.address:
        _HEAD_RECORD.unlink()
    return state.address


def stop_head(*, timeout_s: float = 15.0) -> str:
    """Stop the head that ``start_head`` (``labkit serve up``) started, by its Ray session: its
    processes get SIGTERM, then SIGKILL after ``timeout_s``. Other Ray clusters of the user (a
    notebook's, a head started by hand) keep running, unlike with Ray's own stop command. Returns what it did.
    """
    import psutil

    if not _HEAD_RECORD.is_file():
        return "no Ray head started by labkit is recorded; nothing stopped"
    record = json.loads(_HEAD_RECORD.read_text())
    session = record.get("session")
    procs = processes_naming(session) if session else []
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:  # an idle head has nothing to save; do not wait on a slow shutdown
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    _HEAD_RECORD.unlink(missing_ok=True)
    forget_stale_head()
    return f"stopped the Ray head at {record.get('address')} ({len(procs)} processes of {session})"


def processes_naming(text: str) -> list:
    """This machine's processes (``psutil.Process``) with ``text`` in their command line: a Ray
    session's name or a head's temp folder picks out one cluster's processes and no other's."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _latest_session() -> str | None:
    """The session name (``session_<date>_<pid>``) of the newest head in Ray's temp folder."""
    from ray._common.utils import get_default_ray_temp_dir

    latest = Path(get_default_ray_temp_dir()) / "session_latest"
    return latest.resolve().name if latest.exists() else None


def shutdown_ray() -> None:
    """Stop the local cluster (or disconnect from a remote one)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _dashboard_url() -> str | None:
    import ray

    try:
        url = ray.get_runtime_context().dashboard_url  # type: ignore[attr-defined]
    except AttributeError:
        url = ray._private.worker.global_worker.node.address_info.get("webui_url")
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"
