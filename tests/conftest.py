"""Shared fixtures. The cpu-profile chat model is pulled once (a no-op when already in the store)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def chat_model_path() -> Path:
    from labkit import store

    return store.pull("smollm2-135m-instruct", progress=False)[0]


@pytest.fixture(scope="session")
def lm_fp32(chat_model_path):
    """fp32: the precision where batched and one-by-one greedy decoding agree bit for bit."""
    from labkit.llm import ChatModel

    return ChatModel.from_pretrained(chat_model_path, device="cpu", dtype="float32")


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """An empty LABKIT_HOME and HF cache, offline: nothing from the developer's own caches leaks in."""
    home = tmp_path / "labkit-home"
    monkeypatch.setenv("LABKIT_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m labkit ...`` as a user would, capturing its output."""
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def ray_cluster(chat_model_path):
    """One local Ray cluster (token auth on, no dashboard) for every test that needs Ray."""
    from labkit.ray_runtime import init_ray, shutdown_ray

    info = init_ray(num_cpus=2, dashboard=False)
    yield info
    shutdown_ray()


def shared_dir() -> Path:
    """The workplace's shared/ folder: ``$LABKIT_SHARED``, default ``../shared`` beside the repo."""
    return Path(os.environ.get("LABKIT_SHARED") or REPO.parent / "shared")


@pytest.fixture(scope="session")
def kuberay_crds():
    """KubeRay v1.7.0's CRD schemas from shared/; skipped (with the reason) where shared/ is absent."""
    from labkit.k8s.schema import load_crds

    folder = shared_dir() / "kuberay-crds" / "v1.7.0"
    if not folder.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {folder}: set LABKIT_SHARED to a folder with kuberay-crds/v1.7.0/")
    return load_crds(folder)


@contextlib.contextmanager
def ray_head(*, num_cpus: int = 1, dashboard: bool = False):
    """A `ray start --head --block` node with token auth, in its own process group so only it is stopped.

    Yields (GCS address, dashboard URL or None).
    """
    import shutil
    import signal
    import socket
    import tempfile
    import time

    # A short temp dir: Ray's unix socket paths live under it and must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="lkray")
    port, dashboard_port = free_port(), free_port()
    args = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
            f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    args += ([f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
             if dashboard else ["--include-dashboard=false"])
    head = subprocess.Popen(args, env={**os.environ, "RAY_AUTH_MODE": "token"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for = dashboard_port if dashboard else port
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", wait_for), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    try:
        # Ray resolves loopback to this node's address, where the GCS listens.
        yield f"127.0.0.1:{port}", (f"http://127.0.0.1:{dashboard_port}" if dashboard else None)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
