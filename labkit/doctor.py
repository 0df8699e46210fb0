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
from labkit.i18n import tr

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
            lines.append(f"       {'':<{width}}  {tr('fix', '修复')}: {c.fix}")
    verdict = tr("blocking problems found", "发现必须先解决的问题") if blocking(checks) else tr("ready for the labs",
                                                                                          "可以开始实验了")
    return "\n".join(lines + ["", f"labkit doctor: {verdict}"])


def _python() -> Check:
    v = sys.version_info
    detail = f"{platform.python_version()} at {sys.executable}"
    if v < (3, 10):
        return Check("python", "fail", detail, tr("install Python 3.10 to 3.12 and run `make setup` again",
                                                   "安装 Python 3.10 至 3.12，再运行 `make setup`"))
    if not lockfile.python_supported():
        return Check("python", "warn", detail + tr(" (the labs are locked and tested on 3.10 to 3.12)",
                                                  "（实验在 3.10 至 3.12 上锁定版本并测试）"),
                     tr("make the virtualenv with Python 3.12: `make clean setup PYTHON=python3.12`",
                        "用 Python 3.12 重建虚拟环境：`make clean setup PYTHON=python3.12`"))
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
        return Check("versions", "warn", tr(f"cannot read lock/{path.name}: {exc}", f"读不了 lock/{path.name}：{exc}"),
                     tr("restore it (`git checkout lock/`) and run `make sync`",
                        "恢复它（`git checkout lock/`），再运行 `make sync`"))
    if not drifted:
        return Check("versions", "ok", tr(f"exactly as lock/{path.name} pins them", f"与 lock/{path.name} 完全一致"))
    listed = "; ".join(f"{d.name} {d.installed or 'not installed'} (lock: {d.locked})" for d in drifted[:6])
    more = f"; and {len(drifted) - 6} more" if len(drifted) > 6 else ""
    return Check("versions", "warn", tr(f"{len(drifted)} package(s) differ from lock/{path.name}: {listed}{more}",
                                        f"{len(drifted)} 个包与 lock/{path.name} 不一致：{listed}{more}"),
                 tr(f"run `make sync` in {folder.parent} (installs exactly the lock again)",
                    f"在 {folder.parent} 运行 `make sync`（按锁文件重新安装）"))


def _torch() -> tuple[Check, bool]:
    try:
        import torch
    except ImportError:
        return Check("torch", "fail", tr("not installed", "未安装"),
                     tr("run `make setup` (CPU) or see README: GPU machines",
                        "运行 `make setup`（CPU），或见 README 的 GPU 机器一节")), False
    return Check("torch", "ok", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"), True


def _device() -> Check:
    try:
        p = profiles.pick_device_dtype()
    except ValueError as exc:
        return Check("device", "fail", str(exc), tr("unset LABKIT_DEVICE / LABKIT_DTYPE or fix their values",
                                                  "取消 LABKIT_DEVICE / LABKIT_DTYPE，或改正它们的值"))
    dtype = str(p.dtype).removeprefix("torch.")
    return Check("device", "ok", f"{p.device} / {dtype} ({p.reason})")


def _gpus(profile: str) -> Check:
    import torch

    if not torch.cuda.is_available():
        if profile == "gpu":
            return Check("gpus", "fail", tr("profile gpu but torch sees no CUDA device",
                                            "配置为 gpu，但 torch 看不到 CUDA 设备"),
                         tr("install the CUDA build of torch (README: GPU machines) or use --profile cpu",
                            "安装 CUDA 版 torch（见 README 的 GPU 机器一节），或改用 --profile cpu"))
        return Check("gpus", "ok", tr("none (the cpu profile needs none)", "无（cpu 配置不需要 GPU）"))
    names = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        names.append(f"{i}: {props.name} {free / GiB:.1f}/{total / GiB:.1f} GiB free")
    return Check("gpus", "ok", "; ".join(names))


def _ram() -> Check:
    import psutil

    vm = psutil.virtual_memory()
    detail = tr(f"{vm.available / GiB:.1f} GiB available of {vm.total / GiB:.1f} GiB",
                f"共 {vm.total / GiB:.1f} GiB，可用 {vm.available / GiB:.1f} GiB")
    if vm.available < 2 * GiB:
        return Check("ram", "fail", detail, tr("close other programs: the labs need about 2 GiB free",
                                               "关掉其他程序：实验需要约 2 GiB 空闲内存"))
    if vm.available < 4 * GiB:
        return Check("ram", "warn", detail, tr("Ray labs want 4 GiB free; close browser tabs or other kernels",
                                               "Ray 的实验需要 4 GiB 空闲内存；关掉浏览器标签页或其他内核"))
    return Check("ram", "ok", detail)


def _disk() -> Check:
    home = store.labkit_home()
    probe = home if home.exists() else Path.home()
    free = shutil.disk_usage(probe).free
    detail = tr(f"{free / GiB:.1f} GiB free for LABKIT_HOME={home}", f"LABKIT_HOME={home} 剩余 {free / GiB:.1f} GiB")
    if free < 1 * GiB:
        return Check("disk", "fail", detail, tr("free space or point LABKIT_HOME at a bigger disk",
                                                "清理空间，或把 LABKIT_HOME 指向更大的磁盘"))
    if free < 5 * GiB:
        return Check("disk", "warn", detail, tr("the gpu profile models need ~5 GiB; free space or move LABKIT_HOME",
                                                "gpu 配置的模型需要约 5 GiB；清理空间或移动 LABKIT_HOME"))
    return Check("disk", "ok", detail)


def _shm() -> Check:
    shm = Path("/dev/shm")
    if not shm.exists():
        return Check("/dev/shm", "ok", tr("not present (macOS/Windows: Ray uses its own store)",
                                          "不存在（macOS/Windows：Ray 用自己的对象存储）"))
    size = shutil.disk_usage(shm).total
    detail = f"{size / GiB:.1f} GiB"
    if size < 1 * GiB:
        return Check("/dev/shm", "warn", detail + tr(" (Ray's object store falls back to slow disk)",
                                                     "（Ray 的对象存储会退回到较慢的磁盘）"),
                     tr("in Docker add --shm-size=2g; on Kubernetes mount an emptyDir with medium: Memory",
                        "Docker 中加 --shm-size=2g；Kubernetes 中挂载 medium: Memory 的 emptyDir"))
    return Check("/dev/shm", "ok", detail)


def _package(dist: str, label: str) -> Check:
    try:
        return Check(label.lower(), "ok", importlib.metadata.version(dist))
    except importlib.metadata.PackageNotFoundError:
        return Check(label.lower(), "warn", tr("not installed (needed from lab 04 on)", "未安装（实验 04 起需要）"),
                     tr("run `make setup`", "运行 `make setup`"))


def _kernel() -> Check:
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
    except ImportError:
        return Check("jupyter kernel", "warn", tr("jupyter_client not installed", "未安装 jupyter_client"),
                     tr("run `make setup`", "运行 `make setup`"))
    if "labkit" in specs:
        return Check("jupyter kernel", "ok", f"'labkit' at {specs['labkit']}")
    return Check("jupyter kernel", "warn", tr("no kernel named 'labkit'", "没有名为 'labkit' 的内核"),
                 tr("run `make setup` (or: python -m ipykernel install --sys-prefix --name labkit)",
                    "运行 `make setup`（或：python -m ipykernel install --sys-prefix --name labkit）"))


def _models(profile: str) -> list[Check]:
    out = []
    for row in store.list_models(profile):
        if row["pulled"]:
            out.append(Check(f"model {row['name']}", "ok", tr(f"{row['size_mb']} MB from {row['source']}",
                                                              f"{row['size_mb']} MB，来自 {row['source']}")))
        else:
            out.append(Check(f"model {row['name']}", "fail", tr(f"not pulled (profile {profile})",
                                                                f"尚未下载（配置 {profile}）"),
                             tr(f"run `labkit models pull --profile {profile}`",
                                f"运行 `labkit models pull --profile {profile}`")))
    return out


def _hub(reachable: bool, profile: str) -> Check:
    endpoint = store.hub_endpoint()
    if store.hub_offline():
        return Check("hub", "ok", tr("offline mode (HF_HUB_OFFLINE=1): the store's models are used as they are",
                                     "离线模式（HF_HUB_OFFLINE=1）：直接使用本地模型库中的模型"))
    if reachable:
        return Check("hub", "ok", tr(f"{endpoint} reachable", f"{endpoint} 可以访问"))
    status = "warn" if profile == "gpu" else "ok"
    offline_ok = tr(" (fine: the cpu profile works offline)", "（没关系：cpu 配置可以离线使用）")
    return Check("hub", status, tr(f"{endpoint} not reachable", f"{endpoint} 无法访问")
                 + (offline_ok if profile == "cpu" else ""),
                 tr("set HF_ENDPOINT to a mirror (e.g. https://hf-mirror.com) or pull models before the event",
                    "把 HF_ENDPOINT 设为镜像（如 https://hf-mirror.com），或在活动前先下载好模型"))
