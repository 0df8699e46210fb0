"""Shared fixtures. The cpu-profile chat model is pulled once (a no-op when already in the store)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.ray_runtime import free_port  # noqa: F401  (tests import it from here)

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


# An example workshop image in the tag scheme labkit checks (Ray 2.60.0, Python 3.11).
EXAMPLE_IMAGE = "registry.example.com/labkit/workshop:0.1.0-ray2.60.0-py311"


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
def closed_port():
    """A loopback port nobody listens on, for as long as the block runs.

    The socket stays bound but never listens: connections are refused at once, and no other
    process (a Ray worker choosing a random port, say) can take the port in the meantime. CI once
    saw a Ray agent answer on a port that had been bound and released a moment before.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextlib.contextmanager
def ray_head(*, num_cpus: int = 1, dashboard: bool = False):
    """A `ray start --head` node with token auth that stops without touching other clusters.

    Yields (GCS address, dashboard URL or None).
    """
    from labkit.ray_runtime import LocalHead

    with LocalHead(num_cpus=num_cpus, dashboard=dashboard) as head:
        yield head.address, head.dashboard_url


@pytest.fixture(scope="session")
def z2jh_chart():
    """(values schema, default values) of the zero-to-jupyterhub chart 4.4.0, from shared/."""
    import yaml

    folder = shared_dir() / "z2jh-schema" / "4.4.0"
    if not folder.is_dir():
        pytest.skip(f"JupyterHub chart schema not found at {folder}: "
                    "set LABKIT_SHARED to a folder with z2jh-schema/4.4.0/")
    return (yaml.safe_load((folder / "values.schema.yaml").read_text()),
            yaml.safe_load((folder / "values.yaml").read_text()))
