"""Set up, renew and test the kit's locked environment: what ``make setup``, ``make lock`` and
``make canary`` run.

    python3 -m labkit.setup_env install [--venv .venv] [--variant auto|cpu|cuda] [--installer uv|pip]
    .venv/bin/python -m labkit.setup_env lock [--upgrade | --upgrade-package NAME ...]
    python3 -m labkit.setup_env canary [--venv .venv-canary] [--torch locked|latest]
    .venv/bin/python -m labkit.setup_env tool --venv .venv-checkov --lock lock/checkov.txt
    .venv/bin/python -m labkit.setup_env drift      # installed packages that differ from the lock

``install`` runs on the machine's own Python before anything is installed, so this module uses
the standard library only. It makes the virtualenv, installs uv (pinned, hash-checked) into it,
then torch and every other package exactly as ``lock/<variant>.txt`` says (``uv pip sync``:
nothing more, nothing less), labkit itself (editable) and the Jupyter kernel.

Why a script around uv rather than a plain ``uv sync``: uv's project lock records index URLs,
so it could neither follow a mirror chosen on the day (``PIP_INDEX_URL``) nor take torch's CPU
build from another index than the rest. Exported requirements files carry only names, versions
and hashes: any mirror that serves the same files installs the same environment, and a mirror
that serves other files is refused.

uv installs with ``--compile-bytecode`` (pip compiles by default): uv otherwise leaves the
compiling to the first import, and where ``PYTHONDONTWRITEBYTECODE`` is set (this kit's CI
machines, many containers) that first import never ends: every process compiles torch,
transformers and Ray again. Medians on 2 cores (``benchmarks/bench_startup.py``): ``import torch,
transformers`` 9.0 s -> 4.6 s, a local Ray start 24 s -> 8 s, two Ray actors loading the chat
model 26 s -> 12 s. It costs about a minute once, at set-up (uv skips files already compiled).

Example (where torch's CPU build comes from when nothing is set):
    >>> torch_index_args({})
    ['--index-url', 'https://download.pytorch.org/whl/cpu']
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from labkit import lockfile

REPO = Path(__file__).resolve().parent.parent
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# torch's dependencies that only its CUDA build needs: the cpu lock leaves them out, with
# whatever only they need.
GPU_ONLY = re.compile(r"nvidia-.*|cuda-.*|triton|pytorch-triton")
LOCKED_PLATFORMS = "Linux x86_64 and macOS on Apple silicon"


class SetupError(RuntimeError):
    """A step failed; the message says what to do."""


# --- install: a virtualenv holding exactly the lock ----------------------------------------

def install(*, venv: Path, variant: str = "auto", installer: str = "uv", python: str | None = None,
            lock_folder: Path | None = None, env: dict | None = None) -> dict[str, float]:
    """Make ``venv`` hold exactly ``lock/<variant>.txt``; returns the seconds each step took."""
    env = dict(os.environ if env is None else env)
    folder = lock_folder or REPO / "lock"
    if installer not in ("uv", "pip"):
        raise SetupError(f"the installer is uv or pip, not {installer!r}")
    if not lockfile.platform_supported():
        raise SetupError(f"the lock covers {LOCKED_PLATFORMS}, not {sys.platform} {platform.machine()}: "
                         "install into your own environment with `pip install -e .` instead (pyproject's "
                         "version ranges; not what the labs are tested with)")
    variant = lockfile.auto_variant() if variant == "auto" else variant
    if not lockfile.variant_supported(variant):
        raise SetupError("the cpu lock (torch's +cpu build) is for Linux x86_64; on macOS PyPI's torch is the "
                         "only build: use TORCH=cuda (or TORCH=auto)")
    lock = lockfile.lock_path(variant, folder)
    entries = lockfile.parse(lock.read_text(encoding="utf-8"))
    steps: dict[str, float] = {}

    def step(name: str, fn, *args) -> None:
        print(f"[setup] {name} ...", flush=True)
        t0 = time.perf_counter()
        fn(*args)
        steps[name] = round(time.perf_counter() - t0, 2)

    py = venv / "bin" / "python"
    step("virtualenv", _make_venv, venv, python, env)
    if installer == "uv":
        step("uv", _bootstrap_uv, py, entries, env)
    if variant == "cpu":
        step("torch", install_torch_cpu, py, lockfile.find(entries, "torch"), installer, env)
    step("packages", _install_lock, py, lock, installer, env)
    step("labkit", _run, [*_pip(py, installer, "install"), "--no-deps", "--no-build-isolation", "-e", str(REPO)],
         env)
    step("kernel", _run, [str(py), "-m", "ipykernel", "install", "--sys-prefix", "--name", "labkit",
                          "--display-name", "Python (labkit)"], env)
    print(f"[setup] {venv} holds exactly lock/{lock.name} ({installer}): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()), flush=True)
    return steps


def install_tool(*, venv: Path, lock: Path, env: dict | None = None) -> None:
    """A virtualenv of its own holding exactly ``lock``: for tools whose dependencies clash with
    the kit's (checkov). Made with the kit's uv and Python."""
    env = dict(os.environ if env is None else env)
    uv = _uv()
    py = venv / "bin" / "python"
    if not py.exists():
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env, fail=f"could not make {venv}")
    _run([uv, "pip", "sync", "--python", str(py), "--require-hashes", "--compile-bytecode", *uv_index_args(env),
          str(lock)], env, fail=f"could not install {lock}: check the network or set PIP_INDEX_URL to a PyPI mirror")


def _make_venv(venv: Path, python: str | None, env: dict) -> None:
    py = venv / "bin" / "python"
    if py.exists():
        version = _python_version(str(py))
        if version is None or not lockfile.python_supported(version):
            raise SetupError(f"{venv} holds a Python that does not run or that the lock does not cover: remove "
                             "it (`make clean`) and run the command again")
        return
    base = pick_python(python)
    _run([base, "-m", "venv", str(venv)], env,
         fail=f"could not make a virtualenv with {base}: on Debian/Ubuntu install the python3-venv package")


def pick_python(preferred: str | None = None) -> str:
    """``preferred`` (default: this interpreter) when the lock covers it, else the newest covered
    ``python3.X`` on PATH; a clear error when there is none."""
    first = preferred or sys.executable
    tried = []
    for candidate in [first] + [f"python3.{minor}" for minor in (12, 11, 10)]:
        exe = shutil.which(candidate)
        version = _python_version(exe) if exe else None
        if version is None:  # not there, or a shim (pyenv) that does not run it here
            continue
        tried.append(f"{candidate} is {version[0]}.{version[1]}")
        if lockfile.python_supported(version):
            if candidate != first:
                print(f"[setup] using {candidate} ({'; '.join(tried)})", flush=True)
            return exe
    raise SetupError(f"the lock covers Python 3.10 to 3.12 and none was found ({'; '.join(tried) or first}): "
                     "install one (your system's python3.12 package, or `uv python install 3.12`) and run "
                     "the command again with PYTHON=python3.12")


def _python_version(exe: str) -> tuple[int, int] | None:
    out = subprocess.run([exe, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True)
    if out.returncode != 0 or len(out.stdout.split()) != 2:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def _bootstrap_uv(py: Path, entries: list[lockfile.Entry], env: dict) -> None:
    uv = lockfile.find(entries, "uv")
    if _installed_version(py, "uv") == uv.version:
        return
    with _requirement_file(uv) as req:
        _run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "-r", req], env,
             fail="could not install uv: check the network, set PIP_INDEX_URL to a PyPI mirror, "
                  "or run `make setup INSTALLER=pip`")


def install_torch_cpu(py: Path, torch: lockfile.Entry, installer: str, env: dict) -> None:
    """torch's CPU build, hash-checked: from a wheel folder if one holds it (offline), else from
    the index; with uv, lastly through pip, which also reads pip's own configuration files."""
    if _installed_version(py, "torch") == torch.version:
        return
    links = find_links(env) + env.get("TORCH_FIND_LINKS", "").split()
    with _requirement_file(torch) as req:
        base = [*_pip(py, installer, "install"), "--no-deps", "--require-hashes", "-r", req]
        attempts = []
        if links:  # a folder of wheels first, without the network: a room with bad wifi, or CI
            attempts.append([*base, "--offline" if installer == "uv" else "--no-index", *_flags("--find-links", links)])
        attempts.append([*base, *torch_index_args(env), *_flags("--find-links", links)])
        if installer == "uv":  # pip.conf (find-links, index, certificates) is pip's alone
            attempts.append([*_pip(py, "pip", "install"), "--no-deps", "--require-hashes", "-r", req,
                             *_flags("--extra-index-url", torch_index_args(env)[1:2])])
        for cmd in attempts:
            if _run(cmd, env, check=False, quiet=cmd is not attempts[-1]).returncode == 0:
                return
    source = env.get("TORCH_INDEX_URL", TORCH_CPU_INDEX) or "the find-links folders"
    raise SetupError(f"could not get torch=={torch.version} from {source}: check the network, set TORCH_INDEX_URL "
                     "to a mirror of PyTorch's CPU index (README: mirrors), or put the wheel in a folder and set "
                     "PIP_FIND_LINKS to that folder")


def torch_index_args(env: dict) -> list[str]:
    """Where torch's CPU build comes from: ``TORCH_INDEX_URL`` (PyTorch's CPU index by default;
    empty means only the find-links folders)."""
    url = env.get("TORCH_INDEX_URL", TORCH_CPU_INDEX)
    return ["--index-url", url] if url else ["--no-index"]


def find_links(env: dict) -> list[str]:
    return (env.get("UV_FIND_LINKS") or env.get("PIP_FIND_LINKS") or "").replace(",", " ").split()


def uv_index_args(env: dict) -> list[str]:
    """pip's index settings as uv flags, unless uv's own are set (uv reads those itself)."""
    args = []
    if env.get("PIP_INDEX_URL") and not (env.get("UV_DEFAULT_INDEX") or env.get("UV_INDEX_URL")):
        args += ["--default-index", env["PIP_INDEX_URL"]]
    if env.get("PIP_EXTRA_INDEX_URL") and not (env.get("UV_INDEX") or env.get("UV_EXTRA_INDEX_URL")):
        args += _flags("--index", env["PIP_EXTRA_INDEX_URL"].split())
    if env.get("PIP_FIND_LINKS") and not env.get("UV_FIND_LINKS"):
        args += _flags("--find-links", find_links(env))
    return args


def _install_lock(py: Path, lock: Path, installer: str, env: dict) -> None:
    fail = (f"could not install lock/{lock.name}: check the network or set PIP_INDEX_URL to a PyPI mirror "
            "(README: mirrors); a hash mismatch means the mirror serves other files than PyPI")
    if installer == "uv":  # sync: exactly the lock, removing anything it does not list
        _run([*_pip(py, "uv", "sync"), "--require-hashes", "--compile-bytecode", *uv_index_args(env), str(lock)], env,
             fail=fail)
    else:  # pip has no sync: exact in a fresh virtualenv, which is what the benchmark compares
        _run([*_pip(py, "pip", "install"), "--no-deps", "--require-hashes", "-r", str(lock)], env, fail=fail)


def _pip(py: Path, installer: str, action: str) -> list[str]:
    if installer == "uv":
        return [str(py.parent / "uv"), "pip", action, "--python", str(py)]
    return [str(py), "-m", "pip", action, "--disable-pip-version-check"]


def _installed_version(py: Path, name: str) -> str | None:
    out = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


@contextlib.contextmanager
def _requirement_file(entry: lockfile.Entry):
    """A temporary requirements file pinning one lock entry with its hashes."""
    hashes = "".join(f" \\\n    --hash={h}" for h in entry.hashes)
    with tempfile.TemporaryDirectory(prefix="labkit-setup-") as folder:
        path = Path(folder) / "requirement.txt"
        path.write_text(f"{entry.name}=={entry.version}{hashes}\n")
        yield str(path)


def _flags(flag: str, values) -> list[str]:
    return [part for value in values for part in (flag, value)]


def _run(cmd: list[str], env: dict, *, fail: str | None = None, check: bool = True, quiet: bool = False,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL if quiet else None,
                         stderr=subprocess.DEVNULL if quiet else None)
    if check and out.returncode != 0:
        raise SetupError(f"{fail or 'this failed'} (`{' '.join(cmd[:4])} ...` exited {out.returncode})")
    return out


# --- lock: renew uv.lock and its exports ---------------------------------------------------

def renew(*, upgrade: bool = False, upgrade_packages: tuple[str, ...] = (), env: dict | None = None) -> None:
    """``uv lock`` (newest allowed versions with ``upgrade``), then lock/cuda.txt, lock/cpu.txt
    and lock/checkov.txt from it."""
    env = dict(os.environ if env is None else env)
    uv = _uv()
    _run([uv, "lock", *(["--upgrade"] if upgrade else []), *_flags("--upgrade-package", upgrade_packages)], env,
         cwd=REPO, fail="uv lock failed: read its message above (a conflict names the ranges in pyproject.toml)")
    export = [uv, "export", "--frozen", "--extra", "dev", "--no-emit-project", "--no-header"]
    torch, gpu_only = _torch_in_uv_lock(REPO / "uv.lock")
    header = ("# Generated by `make lock` (labkit/setup_env.py) from uv.lock: {what}.\n"
              "# Do not edit: change pyproject.toml and run `make lock`. Installed by `make setup`.\n")
    cuda = _run_text([*export], env)
    (REPO / "lock" / "cuda.txt").write_text(
        header.format(what="`uv export --extra dev`; torch is PyPI's (CUDA on Linux)") + cuda)
    cpu = _run_text([*export, *_flags("--prune", gpu_only), "--no-emit-package", "torch"], env)
    torch_cpu = torch_cpu_entry(torch, env.get("TORCH_INDEX_URL") or TORCH_CPU_INDEX)
    (REPO / "lock" / "cpu.txt").write_text(
        header.format(what="the same export without torch's CUDA-only packages "
                           f"({', '.join(gpu_only)}), and torch's CPU build from lock/torch-cpu.txt") + cpu + torch_cpu)
    # checkov conflicts with the kit's own dependencies, so it has a virtualenv and a lock of its own.
    _run([uv, "pip", "compile", "lock/checkov.in", "--universal", "--python-version", "3.10", "--generate-hashes",
          "--quiet", "--output-file", "lock/checkov.txt", *(["--upgrade"] if upgrade else [])],
         env, cwd=REPO, fail="could not lock checkov")
    print(f"lock renewed: uv.lock, lock/cuda.txt, lock/cpu.txt (torch {torch}+cpu), lock/checkov.txt")


def _uv() -> str:
    here = Path(sys.executable).parent / "uv"
    found = str(here) if here.exists() else shutil.which("uv")
    if not found:
        raise SetupError("uv not found: run `make setup` first (it installs the locked uv into .venv)")
    return found


def _run_text(cmd: list[str], env: dict) -> str:
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SetupError(f"`{' '.join(cmd[:3])}` failed: {out.stderr.strip()}")
    return out.stdout


def _torch_in_uv_lock(path: Path) -> tuple[str, list[str]]:
    """torch's locked version and its CUDA-only dependencies, read from uv.lock."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    packages = tomllib.loads(path.read_text(encoding="utf-8"))["package"]
    torch = [p for p in packages if p["name"] == "torch"]
    if len(torch) != 1:
        raise SetupError(f"uv.lock holds {len(torch)} torch versions; pyproject's constraint-dependencies "
                         "should pin exactly one")
    gpu_only = sorted({d["name"] for d in torch[0].get("dependencies", []) if GPU_ONLY.fullmatch(d["name"])})
    return torch[0]["version"], gpu_only


def torch_cpu_entry(version: str, index: str, record: Path = REPO / "lock" / "torch-cpu.txt") -> str:
    """The cpu lock's torch entry: ``torch==<version>+cpu`` with the hashes of its Linux x86_64
    wheels for the covered Pythons, read from the CPU index (and recorded in lock/torch-cpu.txt),
    or from that record when the index cannot be reached."""
    marker = "sys_platform == 'linux' and platform_machine == 'x86_64'"
    try:
        wheels = cpu_wheels_from_index(version, index)
        hashes = [digest for _, digest in wheels]
        lines = [f"# torch's CPU build: the sha256 of its Linux x86_64 wheels, as {index}/torch/ lists them",
                 *(f"#   {name}" for name, _ in wheels)]
    except (urllib.error.URLError, OSError) as exc:
        recorded = [e for e in lockfile.parse(record.read_text(encoding="utf-8")) if e.name == "torch"]
        if not recorded or recorded[0].version != f"{version}+cpu":
            raise SetupError(f"{index} cannot be reached ({exc}) and lock/torch-cpu.txt records no "
                             f"torch {version}+cpu: run `make lock` where PyTorch's CPU index is reachable "
                             "(or set TORCH_INDEX_URL to a mirror of it)") from exc
        print(f"[lock] {index} not reachable: torch {version}+cpu hashes from lock/torch-cpu.txt", flush=True)
        text = record.read_text(encoding="utf-8")
        lines, hashes = [ln for ln in text.splitlines() if ln.startswith("#")], \
            [h.split(":", 1)[1] for h in recorded[0].hashes]
    entry = f"torch=={version}+cpu ; {marker}" + "".join(f" \\\n    --hash=sha256:{h}" for h in hashes) + "\n"
    record.write_text("\n".join(lines) + "\n" + entry)
    return entry


def cpu_wheels_from_index(version: str, index: str) -> list[tuple[str, str]]:
    """(file name, sha256) of torch ``<version>+cpu``'s manylinux x86_64 wheels for Python 3.10-3.12."""
    with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=30) as response:
        page = response.read().decode()
    wanted = {f"cp{major}{minor}" for major, minor in lockfile.SUPPORTED_PYTHONS}
    wheel = rf"torch-{re.escape(version)}(?:%2B|\+)cpu-(?P<tag>cp3\d+)-(?P=tag)-manylinux[\w.]*_x86_64\.whl"
    found = re.finditer(rf"(?P<name>{wheel})#sha256=(?P<sha>[0-9a-f]{{64}})", page)
    wheels = sorted({(m["name"].replace("%2B", "+"), m["sha"]) for m in found if m["tag"] in wanted})
    if not wheels:
        raise SetupError(f"{index}/torch/ lists no torch {version}+cpu wheel for Linux x86_64: is {version} "
                         "released as a CPU build, and is TORCH_INDEX_URL a mirror of PyTorch's CPU index?")
    return wheels


# --- canary: the newest versions the ranges allow ------------------------------------------

def canary(*, venv: Path, torch: str = "locked", env: dict | None = None) -> None:
    """A fresh ``venv`` with the newest releases pyproject's ranges allow (torch at the lock's
    version with ``torch="locked"``): what a new lock would hold. Prints what differs from the lock."""
    env = dict(os.environ if env is None else env)
    if torch not in ("locked", "latest"):
        raise SetupError(f"--torch is locked or latest, not {torch!r}")
    if venv.exists():
        if not (venv / "pyvenv.cfg").exists():
            raise SetupError(f"{venv} exists and is not a virtualenv: choose another --venv")
        shutil.rmtree(venv)
    variant = lockfile.auto_variant()
    entries = lockfile.parse(lockfile.lock_path(variant, REPO / "lock").read_text(encoding="utf-8"))
    py = venv / "bin" / "python"
    _make_venv(venv, None, env)
    _bootstrap_uv(py, entries, env)
    extra: list[str] = []
    if torch == "locked":
        locked = lockfile.find(entries, "torch")
        if variant == "cpu":
            install_torch_cpu(py, locked, "uv", env)
        constraints = venv / "torch-constraint.txt"
        constraints.write_text(f"torch=={locked.version}\n")
        extra = ["--constraint", str(constraints)]
    elif variant == "cpu":
        extra = ["--torch-backend", "cpu"]
    _run([*_pip(py, "uv", "install"), "--upgrade", "--resolution", "highest", "--compile-bytecode",
          *uv_index_args(env), *extra, "-e", f"{REPO}[dev]"], env,
         fail="the newest allowed versions do not install together: read uv's message")
    _run([str(py), "-m", "ipykernel", "install", "--sys-prefix", "--name", "labkit"], env)
    _run([str(py), "-m", "labkit.setup_env", "drift", "--variant", variant], env, check=False)


def report_drift(variant: str) -> int:
    """Print the installed packages whose versions differ from the lock; exit status 0 either way."""
    path = lockfile.lock_path(variant, REPO / "lock")
    drifted = lockfile.drift(path)
    print(f"{len(drifted)} package(s) differ from lock/{path.name}" + (":" if drifted else ""))
    for d in drifted:
        print(f"  {d.name:<28} lock {d.locked:<16} here {d.installed or '(not installed)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.setup_env", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("install", help="a virtualenv holding exactly the lock")
    i.add_argument("--venv", type=Path, default=REPO / ".venv")
    i.add_argument("--variant", choices=["auto", *lockfile.VARIANTS], default="auto")
    i.add_argument("--installer", choices=["uv", "pip"], default="uv")
    i.add_argument("--python", help="the Python to make the virtualenv with (default: the newest 3.10-3.12)")
    i.add_argument("--timings", type=Path, help="write the seconds per step here (JSON)")
    r = sub.add_parser("lock", help="renew uv.lock and lock/*.txt")
    r.add_argument("--upgrade", action="store_true", help="move everything to the newest allowed version")
    r.add_argument("--upgrade-package", action="append", default=[], metavar="NAME")
    c = sub.add_parser("canary", help="a virtualenv with the newest versions the ranges allow")
    c.add_argument("--venv", type=Path, default=REPO / ".venv-canary")
    c.add_argument("--torch", choices=["locked", "latest"], default="locked")
    t = sub.add_parser("tool", help="a tool's own virtualenv holding exactly its lock (checkov)")
    t.add_argument("--venv", type=Path, required=True)
    t.add_argument("--lock", type=Path, required=True)
    d = sub.add_parser("drift", help="installed packages that differ from the lock")
    d.add_argument("--variant", choices=lockfile.VARIANTS, default=None)
    args = p.parse_args(argv)
    try:
        if args.command == "install":
            steps = install(venv=args.venv, variant=args.variant, installer=args.installer, python=args.python)
            if args.timings:
                args.timings.write_text(json.dumps(steps, indent=2))
        elif args.command == "lock":
            renew(upgrade=args.upgrade, upgrade_packages=tuple(args.upgrade_package))
        elif args.command == "canary":
            canary(venv=args.venv, torch=args.torch)
        elif args.command == "tool":
            install_tool(venv=args.venv, lock=args.lock)
        else:
            return report_drift(args.variant or lockfile.installed_variant())
    except (SetupError, ValueError, FileNotFoundError) as exc:
        print(f"setup: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
