"""The lock: what it pins, that it matches uv.lock and the environment, that the doctor sees drift,
and the installer's pieces that `make setup` on a clean clone does not already exercise."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, free_port

from labkit import lockfile, setup_env

LOCK = REPO / "lock"
UV = str(Path(sys.executable).parent / "uv")


def entries(name: str) -> list[lockfile.Entry]:
    return lockfile.parse((LOCK / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["cpu.txt", "cuda.txt", "checkov.txt"])
def test_every_package_is_pinned_with_a_hash(name):
    pinned = entries(name)
    assert len(pinned) > 50
    assert all(e.hashes and all(h.startswith("sha256:") for h in e.hashes) for e in pinned), \
        [e.name for e in pinned if not e.hashes]


def test_cpu_lock_is_the_cuda_lock_with_torchs_cpu_build():
    cpu = {(e.name, e.version, e.marker) for e in entries("cpu.txt")}
    cuda = {(e.name, e.version, e.marker) for e in entries("cuda.txt")}
    (torch_cpu,) = [e for e in cpu if e[0] == "torch"]
    (torch_pypi,) = [e for e in cuda if e[0] == "torch"]
    assert torch_cpu[1] == torch_pypi[1] + "+cpu" == "2.13.0+cpu"
    only_cuda = {e[0] for e in cuda - cpu} - {"torch"}
    assert only_cuda and all(setup_env.GPU_ONLY.fullmatch(n) for n in only_cuda), only_cuda
    assert cpu - {torch_cpu} <= cuda, "every other package at the same version in both locks"


def test_exports_are_what_uv_lock_says_and_uv_lock_fits_pyproject():
    check = subprocess.run([UV, "lock", "--check", "--offline"], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, f"uv.lock does not match pyproject.toml: run `make lock-refresh`\n{check.stderr}"
    exported = subprocess.run([UV, "export", "--frozen", "--offline", "--extra", "dev", "--no-emit-project",
                               "--no-header"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert lockfile.parse(exported) == entries("cuda.txt"), "lock/cuda.txt is stale: run `make lock-refresh`"


def test_the_environment_is_compiled_to_bytecode():
    """`make setup` compiles site-packages once; without it, where PYTHONDONTWRITEBYTECODE is set,
    every Ray worker and kernel compiles torch, transformers and Ray again (seconds each)."""
    import importlib.util

    import ray
    import torch
    import transformers

    missing = [m.__name__ for m in (torch, transformers, ray)
               if not Path(importlib.util.cache_from_source(m.__file__)).is_file()]
    assert not missing, f"no bytecode for {missing}: run `make sync` (uv pip sync --compile-bytecode)"


@pytest.mark.skipif(bool(os.environ.get("LABKIT_CANARY")), reason="the canary runs newer versions on purpose")
def test_this_environment_is_exactly_the_lock():
    path = lockfile.lock_path(lockfile.installed_variant())
    assert lockfile.drift(path) == [], "run `make sync`"


def test_doctor_names_the_drifted_package_and_the_fix(tmp_path):
    """A scratch virtualenv that sees this one's packages, with another version of one small
    dependency installed over it: the doctor must name it, both versions and `make sync`."""
    locked = lockfile.find(entries(lockfile.installed_variant() + ".txt"), "webencodings").version
    other = "0.5.1" if locked != "0.5.1" else "0.5"
    scratch = tmp_path / "scratch"
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, str(scratch)], check=True)
    site = next((scratch / "lib").glob("python3.*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    (site / "labkit-parent.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    subprocess.run([UV, "pip", "install", "--quiet", "--python", str(scratch / "bin" / "python"), "--no-deps",
                    f"webencodings=={other}"], check=True)
    out = subprocess.run([str(scratch / "bin" / "python"), "-m", "labkit", "doctor", "--json", "--profile", "cpu"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    versions = next(c for c in json.loads(out.stdout) if c["name"] == "versions")
    assert versions["status"] == "warn"
    assert f"webencodings {other} (lock: {locked})" in versions["detail"]
    assert versions["detail"].startswith("1 package(s) differ")
    assert "make sync" in versions["fix"]


def test_pip_index_settings_become_uv_flags_unless_uv_has_its_own():
    env = {"PIP_INDEX_URL": "https://mirror.example/simple", "PIP_FIND_LINKS": "/wheels /more"}
    assert setup_env.uv_index_args(env) == ["--default-index", "https://mirror.example/simple",
                                            "--find-links", "/wheels", "--find-links", "/more"]
    assert setup_env.uv_index_args({**env, "UV_DEFAULT_INDEX": "https://other/simple", "UV_FIND_LINKS": "/w"}) == []
    assert setup_env.torch_index_args({"TORCH_INDEX_URL": "https://mirror.example/whl/cpu"}) == \
        ["--index-url", "https://mirror.example/whl/cpu"]
    assert setup_env.torch_index_args({"TORCH_INDEX_URL": ""}) == ["--no-index"]


@pytest.fixture
def index_server(tmp_path):
    """A real HTTP server with a PyTorch-style simple index page for torch."""
    (tmp_path / "torch").mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path / "torch" / "index.html", f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_cpu_wheel_hashes_come_from_the_index_page(index_server, tmp_path):
    page, url = index_server
    def digest(v: str, arch: str) -> str:
        return (v + ("a" if arch == "x86_64" else "b")).ljust(64, "0")

    links = [f"torch-2.99.0%2Bcpu-cp{v}-cp{v}-manylinux_2_28_{arch}.whl#sha256={digest(v, arch)}"
             for v in ("310", "311", "312", "313") for arch in ("x86_64", "aarch64")]
    page.write_text("".join(f'<a href="/whl/cpu/{link}">x</a>\n' for link in links))
    record = tmp_path / "torch-cpu.txt"
    entry = setup_env.torch_cpu_entry("2.99.0", url, record=record)
    (pinned,) = lockfile.parse(entry)
    assert pinned.version == "2.99.0+cpu" and "platform_machine == 'x86_64'" in pinned.marker
    assert pinned.hashes == tuple(f"sha256:{digest(v, 'x86_64')}" for v in ("310", "311", "312"))
    assert lockfile.parse(record.read_text()) == [pinned]  # recorded for renewals without the index
    assert "torch-2.99.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl" in record.read_text()


def test_unreachable_index_without_a_record_says_what_to_do(tmp_path):
    record = tmp_path / "torch-cpu.txt"
    record.write_text("torch==2.13.0+cpu \\\n    --hash=sha256:" + "a" * 64 + "\n")
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(setup_env.SetupError, match="records no torch 2.99.0.*make lock.*TORCH_INDEX_URL"):
        setup_env.torch_cpu_entry("2.99.0", closed, record=record)
    assert setup_env.torch_cpu_entry("2.13.0", closed, record=record).startswith("torch==2.13.0+cpu ;")


def test_torch_that_is_nowhere_fails_with_the_settings_to_change(tmp_path):
    scratch = tmp_path / "scratch"
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, str(scratch)], check=True)
    (scratch / "bin" / "uv").symlink_to(UV)  # where set-up puts the locked uv
    (tmp_path / "wheels").mkdir()
    env = {**os.environ, "PIP_FIND_LINKS": str(tmp_path / "wheels"), "TORCH_INDEX_URL": f"http://127.0.0.1:{free_port()}",
           "PIP_CONFIG_FILE": os.devnull}
    env.pop("UV_FIND_LINKS", None)
    torch = lockfile.find(entries("cpu.txt"), "torch")
    with pytest.raises(setup_env.SetupError, match="TORCH_INDEX_URL.*PIP_FIND_LINKS"):
        setup_env.install_torch_cpu(scratch / "bin" / "python", torch, "uv", env)


def test_a_python_the_lock_does_not_cover_is_refused_with_what_to_do(tmp_path, monkeypatch):
    fake = tmp_path / "python3.13"
    fake.write_text("#!/bin/sh\necho 3 13\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(setup_env.SetupError, match=r"3\.10 to 3\.12.*python3\.13 is 3\.13.*PYTHON=python3\.12"):
        setup_env.pick_python("python3.13")


def test_which_lock_fits_which_machine():
    assert lockfile.auto_variant(system="linux", has_nvidia=False) == "cpu"
    assert lockfile.auto_variant(system="linux", has_nvidia=True) == "cuda"
    assert lockfile.auto_variant(system="darwin") == "cuda"  # PyPI's torch is macOS's only build
    assert lockfile.variant_supported("cpu", "linux", "x86_64")
    assert not lockfile.variant_supported("cpu", "darwin", "arm64")
    assert lockfile.variant_supported("cuda", "darwin", "arm64")
    assert not lockfile.variant_supported("cuda", "linux", "aarch64")
    assert not lockfile.variant_supported("cuda", "win32", "AMD64")


def test_lock_lines_that_are_not_pins_are_refused():
    with pytest.raises(ValueError, match="line 2 .*make lock"):
        lockfile.parse("ok==1.0\nrequests>=2\n")


def test_make_lab_starts_jupyterlab_even_as_root():
    port, token = free_port(), "labkit-test"
    lab = subprocess.Popen(["make", "--no-print-directory", "lab",
                            f"LAB_ARGS=--no-browser --ServerApp.port={port} --IdentityProvider.token={token}"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        deadline, status = time.monotonic() + 180, None
        while time.monotonic() < deadline and lab.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(1)
        assert status == 200, f"JupyterLab did not answer (make exited {lab.poll()})"
    finally:
        os.killpg(lab.pid, signal.SIGTERM)  # the process group this test started: make and jupyter
        try:
            output = lab.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            output = lab.communicate()[0]
    if os.getuid() == 0:
        assert "running as root, so JupyterLab gets --allow-root" in output
        assert re.search(r"jupyter lab .*--allow-root", output, re.S)
