"""Start or join Ray the way the labs need it: token auth on, dashboard on loopback only.

Ray 2.60 turns token authentication on by default. A cluster started here writes its token to
``~/.ray/auth_token``; every client (a notebook joining with ``address="auto"``, ``ray job
submit``, the dashboard in a browser) must present it. Clients find it when ``RAY_AUTH_MODE=token``
is set, so ``init_ray`` sets that before Ray is imported, unless the user chose otherwise.

Example:
    >>> from labkit.ray_runtime import init_ray
    >>> info = init_ray(num_cpus=2)          # doctest: +SKIP
    >>> info.dashboard_url                   # doctest: +SKIP
    'http://127.0.0.1:8265'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


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


# Ray reads RAY_AUTH_MODE when it is imported, so this runs as soon as any labkit Ray module is
# imported: import labkit's Ray helpers before ``import ray`` in a notebook.
configure_auth()


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


def start_head(*, num_cpus: int | None = None, num_gpus: int | None = None) -> str:
    """Start a detached local head (``ray start --head``) on loopback, so that apps deployed to it
    outlive the command that deployed them; returns its address. Stop it with ``stop_head``.
    """
    import subprocess
    import sys

    ray_cli = str(Path(sys.executable).parent / "ray")
    cmd = [ray_cli, "start", "--head", f"--dashboard-host={LOOPBACK}",
           "--disable-usage-stats"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": configure_auth()})
    if proc.returncode != 0:
        raise RuntimeError(f"`ray start --head` failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return "auto"


def free_port() -> int:
    """A TCP port nothing listens on right now on loopback (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class LocalHead:
    """A real Ray head (``ray start --head --block``) with the jobs API on loopback, owned by us.

    It runs in its own process group and ``stop()`` ends only that group, unlike ``ray stop``,
    which ends every Ray process of the user (a notebook's cluster included). Token auth is on.

    Example:
        >>> with LocalHead(num_cpus=2) as head:                  # doctest: +SKIP
        ...     print(head.dashboard_url)
        http://127.0.0.1:40123
    """

    def __init__(self, *, num_cpus: int = 1, dashboard: bool = True, timeout_s: float = 120):
        import shutil
        import socket
        import subprocess
        import sys
        import tempfile
        import time

        # A short temp dir: Ray's unix socket paths live under it and must stay under ~107 characters.
        self._temp_dir = tempfile.mkdtemp(prefix="lkray")
        port, dashboard_port = free_port(), free_port()
        # Ports with fixed defaults get free ones: another Ray on this machine (a notebook's
        # ray.init(), the test suite's cluster) already holds 52365 (the job agent) and 10001.
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
               f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={self._temp_dir}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"]
        cmd += ([f"--dashboard-port={dashboard_port}", f"--dashboard-host={LOOPBACK}", "--include-dashboard=true"]
                if dashboard else ["--include-dashboard=false"])
        self._proc = subprocess.Popen(cmd, env={**os.environ, "RAY_AUTH_MODE": configure_auth()},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # Its own session means it would outlive us: a notebook cell that fails before
        # `head.stop()` must not leave a head running, so stop it when this process exits.
        import atexit

        atexit.register(self.stop)
        # Ray resolves loopback to this node's address, where the GCS listens.
        self.address = f"{LOOPBACK}:{port}"
        self.dashboard_url = f"http://{LOOPBACK}:{dashboard_port}" if dashboard else None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((LOOPBACK, dashboard_port if dashboard else port), timeout=1).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    shutil.rmtree(self._temp_dir, ignore_errors=True)
                    raise RuntimeError(f"`ray start --head` did not come up in {timeout_s:.0f}s; "
                                       "`labkit doctor` checks Ray on this machine") from None
                time.sleep(0.5)

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
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (raylet, GCS, workers) goes now: a clean shutdown of an
        # idle head can take half a minute, and nothing in it needs saving.
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


def head_running() -> bool:
    """Whether a ``ray start`` cluster is running on this machine (a notebook's own cluster does not count)."""
    from ray._private.services import find_bootstrap_address

    return bool(find_bootstrap_address(None))


def stop_head() -> None:
    """``ray stop``: stops every Ray process of this user on this machine."""
    import subprocess
    import sys

    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop"], capture_output=True, text=True)


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
