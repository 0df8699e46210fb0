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


@pytest.fixture
def own_ray_tmp(tmp_path):
    """Ray's temp folder and labkit's state folder for this test only (short: Ray's socket paths)."""
    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="lkt")
    yield {"RAY_TMPDIR": ray_tmp, "XDG_STATE_HOME": str(tmp_path / "state")}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_killed_heads_record_is_noticed_not_waited_on(own_ray_tmp):
    """Ray's record names a head that is gone (as after the OOM killer): status and down say so."""
    from pathlib import Path

    from conftest import free_port, run_cli

    record = Path(own_ray_tmp["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
    record.parent.mkdir(parents=True)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    record.write_text(dead)
    status = run_cli("serve", "status", env=own_ray_tmp, timeout=60)  # a hang fails the test
    assert status.returncode == 1 and f"the one recorded at {dead} does not answer" in status.stdout
    down = run_cli("serve", "down", "--stop-ray", env=own_ray_tmp, timeout=60)
    assert down.returncode == 0, down.stderr[-2000:]
    assert f"recorded at {dead} is gone" in down.stdout and "no Ray head started by labkit" in down.stdout
    assert not record.exists(), "the stale record is forgotten"


def test_stop_head_ends_the_head_it_started_and_no_other(own_ray_tmp, monkeypatch):
    from conftest import free_port, ray_head

    from labkit import ray_runtime

    for key, value in own_ray_tmp.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ray_runtime, "_HEAD_RECORD", ray_runtime.Path(own_ray_tmp["XDG_STATE_HOME"]) / "head.json")
    with ray_head(num_cpus=1) as (other, _):
        address = ray_runtime.start_head(num_cpus=1, port=free_port(), dashboard_port=free_port())
        assert ray_runtime.head_state() == ray_runtime.HeadState(address, True)
        message = ray_runtime.stop_head()
        assert f"stopped the Ray head at {address}" in message and " 0 processes" not in message
        assert ray_runtime.head_state().address is None, "stopped heads leave no record behind"
        host, port = other.rsplit(":", 1)
        import socket

        socket.create_connection((host, int(port)), timeout=5).close()  # the other head still answers


def test_every_module_that_imports_ray_sets_the_auth_mode_first():
    """Ray reads RAY_AUTH_MODE when it is imported: a module that imports ray (even inside a
    function) must import labkit.ray_runtime at its top, or a fresh process (the CLI, a benchmark)
    would start a cluster with auth off and fail to join its own GCS."""
    import ast
    from pathlib import Path

    import labkit

    missing = []
    for path in sorted(Path(labkit.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        imports_ray = any(isinstance(n, ast.Import) and any(a.name == "ray" or a.name.startswith("ray.")
                                                              for a in n.names)
                          or isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "ray"
                          for n in ast.walk(tree))
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {f"{n.module}.{a.name}" for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        if imports_ray and path.name != "ray_runtime.py" and not any(t and t.startswith("labkit.ray_runtime")
                                                                      for t in top):
            missing.append(path.name)
    assert not missing, f"import labkit.ray_runtime at the top of: {', '.join(missing)}"


def test_a_fresh_process_that_imports_finetune_has_token_auth():
    got = _client("import labkit.finetune, os\nprint(os.environ.get('RAY_AUTH_MODE'))", auth_mode=None)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip() == "token"


def test_ray_clusters_start_one_at_a_time_across_processes():
    """Held here, the start lock makes another process wait, then time out with a clear message."""
    import subprocess
    import sys

    from labkit.ray_runtime import one_start_at_a_time

    probe = ("from labkit.ray_runtime import one_start_at_a_time\n"
             "try:\n    with one_start_at_a_time(timeout_s=1): print('got it')\n"
             "except TimeoutError as e: print('waited:', e)")
    with one_start_at_a_time():
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "waited: another Ray cluster on this machine has been starting for over 1s" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "got it", out.stderr


def test_both_heads_start_from_one_command_line():
    from labkit import ray_runtime

    detached, ports = ray_runtime.head_command(port=6390, dashboard_port=8290, num_cpus=1)
    owned, owned_ports = ray_runtime.head_command(port=6391, num_cpus=0, num_gpus=0, block=True, temp_dir="lkray-test")
    for cmd in (detached, owned):
        assert cmd[1:3] == ["start", "--head"] and "--disable-usage-stats" in cmd
    assert "--block" in owned and "--block" not in detached, "only the owned head stays in the foreground"
    assert "--dashboard-host=127.0.0.1" in detached and "--include-dashboard=false" in owned
    assert "--temp-dir=lkray-test" in owned and not any(a.startswith("--temp-dir") for a in detached)
    assert ports["gcs"] == 6390 and ports["dashboard"] == 8290 and set(owned_ports) == {"gcs", "agent", "client"}
    assert f"--dashboard-agent-listen-port={ports['agent']}" in detached  # never Ray's fixed 52365
    assert len({ports["agent"], ports["client"], owned_ports["agent"], owned_ports["client"]}) == 4


def test_a_fresh_machine_gets_a_token_before_its_first_head(tmp_path, monkeypatch):
    """`ray start --head` refuses to start without a token (ray.init makes its own): labkit makes
    one first, with Ray's CLI, and leaves an existing one alone."""
    from labkit.ray_runtime import ensure_auth_token

    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    token = ensure_auth_token()
    assert token == tmp_path / ".ray" / "auth_token" and len(token.read_text().strip()) >= 32
    first = token.read_text()
    assert ensure_auth_token() == token and token.read_text() == first
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere" / "token"))
    with pytest.raises(RuntimeError, match="RAY_AUTH_TOKEN_PATH points at .*elsewhere.*unset it"):
        ensure_auth_token()
