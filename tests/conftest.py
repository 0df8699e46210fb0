"""Shared fixtures, and how the suite is spread over test workers.

The cpu-profile chat model is pulled once (a no-op when already in the store).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

# On a test worker (TEST_WORKERS > 0), one torch thread per process (this one, its CLI
# subprocesses, notebook kernels, Ray workers), set before anything imports torch: the kit's
# models are small, and on two cores a second thread made tests/test_engine.py 6% faster for 64%
# more CPU (mostly spinning), which the other worker can use better. One process keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from labkit.ray_runtime import free_port  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parent.parent

# `make test TEST_WORKERS=2` runs the suite on two pytest-xdist workers, in units (`unit_of`).
# Not the default: on this project's two-core machines Ray's starts then fail. A starting raylet
# gives its dashboard agent a fixed 15 s to report; idle, the agent took 11 s here (the whole
# cluster 37 s), so a notebook's cluster failed to start three times in a row even beside a
# worker at nice 10. With more cores it should help; that is not verified here.
# Everything that starts Ray (RAY_UNITS) runs on one worker, one test after another; the other
# worker takes the rest (estimator, engine, diffusion, manifests,
# Terraform, the labs without Ray), one torch thread each, so the two overlap. A file's tests stay
# on one worker, so module fixtures are built once; PER_TEST files have none and are spread test
# by test. Units start longest first (LONGEST_FIRST, from the suite's --durations).
_LAB = "tests/test_notebooks.py::test_each_lab_runs_end_to_end_in_smoke_mode"
RAY_UNITS = tuple(f"{_LAB}[{n}" for n in ("05", "09", "06", "08", "07", "04")) + tuple(
    f"tests/test_{name}.py" for name in ("finetune", "batch", "jobs", "serve", "ray_runtime", "sharding",
                                         "disaggregation", "baselines", "shapes"))
PER_TEST = {"tests/test_notebooks.py", "tests/test_store.py", "tests/test_llm.py"}
LONGEST_FIRST = [
    *RAY_UNITS,  # one unit: "ray"
    "tests/test_fastgen.py",
    # xdist hands each worker two units at the start, the third unit going to the Ray worker
    # behind all of Ray's tests: a short one.
    "tests/test_profiles.py",
    f"{_LAB}[01", "tests/test_engine.py", "tests/test_diffusion.py",
    "tests/test_store.py::test_verify", f"{_LAB}[03", "tests/test_estimate.py", f"{_LAB}[02", "tests/test_lock.py",
    "tests/test_llm.py", f"{_LAB}[00", "tests/test_infra.py", "tests/test_k8s_checkov.py",
]


def unit_of(nodeid: str) -> str:
    """The scheduling unit a test belongs to: "ray", its own id (PER_TEST files), else its file."""
    if nodeid.startswith(RAY_UNITS):
        return "ray"
    path = nodeid.split("::")[0]
    return nodeid if path in PER_TEST else path


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: files in their usual order

    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: a file ranked as a whole keeps its tests together and in order


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's load-scope scheduler with labkit's units (its own group marker does nothing with
    pytest 9.2, which no longer lets xdist rename a test)."""
    from xdist.scheduler import LoadScopeScheduling

    class LabkitUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return LabkitUnits(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """On a test worker, the first test that is not Ray's lowers this worker's CPU priority (and its
    children's): Ray's starts on the other worker need two idle cores to make their 15 s (a
    cluster took 37 s to start on an idle two-core machine, 44 s beside one busy core, and failed
    three times in a row beside two), and most of Ray's tests wait on processes, leaving cores for this
    worker."""
    global _YIELDS_TO_RAY
    if os.environ.get("PYTEST_XDIST_WORKER") and not _YIELDS_TO_RAY and not item.nodeid.startswith(RAY_UNITS):
        os.nice(10)
        _YIELDS_TO_RAY = True


_YIELDS_TO_RAY = False


def pytest_configure(config):
    """Ray writes its cluster token on first start; with several workers starting clusters at once,
    two could write different tokens. The controlling process makes it once, before any worker."""
    if hasattr(config, "workerinput"):
        return
    from labkit.ray_runtime import auth_token_file

    if os.environ.get("RAY_AUTH_MODE", "token") == "token" and not auth_token_file().is_file():
        subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"],
                       capture_output=True, check=True, timeout=120)


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
