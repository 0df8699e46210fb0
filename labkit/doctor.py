"""``labkit doctor``: is this machine ready for the labs, and if not, what fixes it.

Every check returns ok / warn / fail with a one-line fix. Only ``fail`` is blocking (non-zero
exit). The hub probe runs in a thread while torch imports, so the whole run stays under ~3 s.

Example:
    >>> from labkit.doctor import run_checks
    >>> [c.name for c in run_checks()][:2]   # doctest: +SKIP
    ['python', 'torch']
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit import lockfile, profiles, store

GiB = 1024**3


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    fix: str = ""


def run_checks(profile: str | None = None) -> list[Check]:
    """Run every check for ``profile`` (the default profile when ``None``)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        hub = pool.submit(store.hub_reachable, 2.0)
        checks = [_python()]
        torch_check, torch_ok = _torch()
        checks.append(torch_check)
        profile = profiles.check_profile(profile) if torch_ok else (profile or "cpu")
        if torch_ok:
            checks += [_device(), _gpus(profile)]
        checks += [_versions(), _ram(), _disk(), _shm(), _package("ray", "Ray"), _kernel()]
        checks += _models(profile)
        checks.append(_hub(hub.result(), profile))
    return checks


def blocking(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def format_table(checks: list[Check]) -> str:
    mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{mark[c.status]}] {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"       {'':<{width}}  fix: {c.fix}")
    verdict = "blocking problems found" if blocking(checks) else "ready for the labs"
    return "\n".join(lines + ["", f"labkit doctor: {verdict}"])


def _python() -> Check:
    v = sys.version_info
    detail = f"{platform.python_version()} at {sys.executable}"
    if v < (3, 10):
        return Check("python", "fail", detail, "install Python 3.10 to 3.12 and run `make setup` again")
    if not lockfile.python_supported():
        return Check("python", "warn", detail + " (the labs are locked and tested on 3.10 to 3.12)",
                     "make the virtualenv with Python 3.12: `make clean setup PYTHON=python3.12`")
    return Check("python", "ok", detail)


def _versions() -> Check:
    """Installed versions against the lock `make setup` installed (when labkit runs from a clone)."""
    folder = lockfile.lock_dir()
    if folder is None:
        return Check("versions", "ok", "labkit installed as a package: pyproject's version ranges apply")
    path = lockfile.lock_path(lockfile.installed_variant(), folder)
    try:
        drifted = lockfile.drift(path)
    except (OSError, ValueError) as exc:
        return Check("versions", "warn", f"cannot read lock/{path.name}: {exc}",
                     "restore it (`git checkout lock/`) and run `make sync`")
    if not drifted:
        return Check("versions", "ok", f"exactly as lock/{path.name} pins them")
    listed = "; ".join(f"{d.name} {d.installed or 'not installed'} (lock: {d.locked})" for d in drifted[:6])
    more = f"; and {len(drifted) - 6} more" if len(drifted) > 6 else ""
    return Check("versions", "warn", f"{len(drifted)} package(s) differ from lock/{path.name}: {listed}{more}",
                 f"run `make sync` in {folder.parent} (installs exactly the lock again)")


def _torch() -> tuple[Check, bool]:
    try:
        import torch
    except ImportError:
        return Check("torch", "fail", "not installed", "run `make setup` (CPU) or see README: GPU machines"), False
    return Check("torch", "ok", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"), True


def _device() -> Check:
    try:
        p = profiles.pick_device_dtype()
    except ValueError as exc:
        return Check("device", "fail", str(exc), "unset LABKIT_DEVICE / LABKIT_DTYPE or fix their values")
    dtype = str(p.dtype).removeprefix("torch.")
    return Check("device", "ok", f"{p.device} / {dtype} ({p.reason})")


def _gpus(profile: str) -> Check:
    import torch

    if not torch.cuda.is_available():
        if profile == "gpu":
            return Check("gpus", "fail", "profile gpu but torch sees no CUDA device",
                         "install the CUDA build of torch (README: GPU machines) or use --profile cpu")
        return Check("gpus", "ok", "none (the cpu profile needs none)")
    names = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        names.append(f"{i}: {props.name} {free / GiB:.1f}/{total / GiB:.1f} GiB free")
    return Check("gpus", "ok", "; ".join(names))


def _ram() -> Check:
    import psutil

    vm = psutil.virtual_memory()
    detail = f"{vm.available / GiB:.1f} GiB available of {vm.total / GiB:.1f} GiB"
    if vm.available < 2 * GiB:
        return Check("ram", "fail", detail, "close other programs: the labs need about 2 GiB free")
    if vm.available < 4 * GiB:
        return Check("ram", "warn", detail, "Ray labs want 4 GiB free; close browsers tabs or other kernels")
    return Check("ram", "ok", detail)


def _disk() -> Check:
    home = store.labkit_home()
    probe = home if home.exists() else Path.home()
    free = shutil.disk_usage(probe).free
    detail = f"{free / GiB:.1f} GiB free for LABKIT_HOME={home}"
    if free < 1 * GiB:
        return Check("disk", "fail", detail, "free space or point LABKIT_HOME at a bigger disk")
    if free < 5 * GiB:
        return Check("disk", "warn", detail, "the gpu profile models need ~5 GiB; free space or move LABKIT_HOME")
    return Check("disk", "ok", detail)


def _shm() -> Check:
    shm = Path("/dev/shm")
    if not shm.exists():
        return Check("/dev/shm", "ok", "not present (macOS/Windows: Ray uses its own store)")
    size = shutil.disk_usage(shm).total
    detail = f"{size / GiB:.1f} GiB"
    if size < 1 * GiB:
        return Check("/dev/shm", "warn", detail + " (Ray's object store falls back to slow disk)",
                     "in Docker add --shm-size=2g; on Kubernetes mount an emptyDir with medium: Memory")
    return Check("/dev/shm", "ok", detail)


def _package(dist: str, label: str) -> Check:
    try:
        return Check(label.lower(), "ok", importlib.metadata.version(dist))
    except importlib.metadata.PackageNotFoundError:
        return Check(label.lower(), "warn", "not installed (needed from lab 04 on)", "run `make setup`")


def _kernel() -> Check:
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
    except ImportError:
        return Check("jupyter kernel", "warn", "jupyter_client not installed", "run `make setup`")
    if "labkit" in specs:
        return Check("jupyter kernel", "ok", f"'labkit' at {specs['labkit']}")
    return Check("jupyter kernel", "warn", "no kernel named 'labkit'",
                 "run `make setup` (or: python -m ipykernel install --sys-prefix --name labkit)")


def _models(profile: str) -> list[Check]:
    out = []
    for row in store.list_models(profile):
        if row["pulled"]:
            out.append(Check(f"model {row['name']}", "ok", f"{row['size_mb']} MB from {row['source']}"))
        else:
            out.append(Check(f"model {row['name']}", "fail", f"not pulled (profile {profile})",
                             f"run `labkit models pull --profile {profile}`"))
    return out


def _hub(reachable: bool, profile: str) -> Check:
    endpoint = store.hub_endpoint()
    if store.hub_offline():
        return Check("hub", "ok", "offline mode (HF_HUB_OFFLINE=1): the store's models are used as they are")
    if reachable:
        return Check("hub", "ok", f"{endpoint} reachable")
    status = "warn" if profile == "gpu" else "ok"
    return Check("hub", status, f"{endpoint} not reachable" + (" (fine: the cpu profile works offline)"
                                                              if profile == "cpu" else ""),
                 "set HF_ENDPOINT to a mirror (e.g. https://hf-mirror.com) or pull models before the event")
