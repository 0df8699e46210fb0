"""Token authentication for real: a `ray start --head` cluster that clients join through labkit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")



@pytest.fixture
def token_head():
    """A separate head node, in its own process group so only it is stopped afterwards."""
    # A short temp dir: Ray's unix socket paths live under it and must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="lkray")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"  # Ray resolves loopback to this node's address, where the GCS listens
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _client(code: str, auth_mode: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    if auth_mode:
        env["RAY_AUTH_MODE"] = auth_mode
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_a_client_joins_a_token_protected_cluster_through_labkit(token_head):
    # No RAY_AUTH_MODE in the client's environment: importing labkit's helper sets it.
    ok = _client(
        "from labkit.ray_runtime import init_ray\n"
        "import ray\n"
        f"info = init_ray(address={token_head!r})\n"
        "print('auth', info.auth_mode, 'started_here', info.started_here)\n"
        "print('answer', ray.get(ray.remote(lambda: 41 + 1).remote()))\n", auth_mode=None)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "auth token started_here False" in ok.stdout and "answer 42" in ok.stdout

    # The same client with authentication turned off is refused: the token really is required.
    refused = _client(f"import ray\nray.init(address={token_head!r})\n", auth_mode="disabled")
    assert refused.returncode != 0
    assert "token" in refused.stderr.lower()
