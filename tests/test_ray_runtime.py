"""Token authentication for real: a `ray start --head` cluster that clients join through labkit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ray_head


@pytest.fixture
def token_head():
    with ray_head(num_cpus=1) as (address, _):
        yield address


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
