"""The kit's lock files: which one fits this machine, what it pins, and what differs from it.

``make lab`` / ``make test`` install exactly what ``lock/<variant>.txt`` says (every package,
direct and transitive, pinned with hashes; exported from ``uv.lock``), so a new release of
anything cannot change the labs the night before the event. Two variants, because torch comes
in two builds on Linux:

- ``cpu``: Linux x86_64 without an NVIDIA GPU: torch's CPU build (``+cpu``, from PyTorch's CPU
  index or a wheelhouse), no CUDA libraries.
- ``cuda``: PyPI's torch: the CUDA build on Linux x86_64, the only build on Apple silicon.

Reading needs only the standard library (the installer reads the lock before anything is
installed); evaluating markers and comparing versions (``labkit doctor``'s :func:`drift`) uses
``packaging``, which the lock installs.

Example:
    >>> entry = parse("torch==2.13.0+cpu ; sys_platform == 'linux' \\\\\\n    --hash=sha256:ab\\n")[0]
    >>> entry.name, entry.version, entry.marker, entry.hashes
    ('torch', '2.13.0+cpu', "sys_platform == 'linux'", ('sha256:ab',))
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("cpu", "cuda")
# The Pythons the lock is made for (pyproject's [tool.uv] environments say the same).
SUPPORTED_PYTHONS = ((3, 10), (3, 11), (3, 12))
LOCK_DIR_ENV = "LABKIT_LOCK_DIR"

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$")
_HASH = re.compile(r"--hash=(\w+:[0-9a-fA-F]+)")


@dataclass(frozen=True)
class Entry:
    """One pinned package of a lock file."""

    name: str  # normalised (PEP 503): lower case, runs of -_. as one -
    version: str
    marker: str = ""  # "" when the entry applies everywhere
    hashes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Drift:
    """An installed version that differs from the lock (``installed`` is None when missing)."""

    name: str
    locked: str
    installed: str | None


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> list[Entry]:
    """The pinned entries of a requirements-format lock (``name==version ; marker`` + hashes)."""
    rows: list[tuple[str, str, str, list[str]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[:1].isspace() and line.startswith("--hash"):  # the hashes of the entry above
            if not rows:
                raise ValueError(f"lock line {number} ({line[:40]}...) continues no entry")
            rows[-1][3].extend(_HASH.findall(line))
            continue
        if line.startswith("-"):  # --index-url and other options are not entries
            continue
        found = _ENTRY.match(line)
        if not found:
            raise ValueError(f"lock line {number} ({line!r}) is not `name==version [; marker]`: "
                             "regenerate the lock with `make lock`")
        rows.append((normalize(found.group(1)), found.group(2), (found.group(3) or "").strip(), []))
    return [Entry(name, version, marker, tuple(hashes)) for name, version, marker, hashes in rows]


def lock_dir() -> Path | None:
    """``lock/`` of the checkout labkit runs from (or ``$LABKIT_LOCK_DIR``); None when labkit was
    installed as a package into someone's own environment, where pyproject's ranges apply."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    candidate = Path(__file__).resolve().parent.parent / "lock"
    return candidate if (candidate / "cpu.txt").is_file() else None


def lock_path(variant: str, folder: Path | None = None) -> Path:
    """``lock/<variant>.txt``; a clear error for an unknown variant or a missing lock folder."""
    if variant not in VARIANTS:
        raise ValueError(f"the lock variant is one of {', '.join(VARIANTS)}, not {variant!r}")
    folder = folder or lock_dir()
    if folder is None:
        raise FileNotFoundError("no lock/ folder beside labkit: the locks come with a clone of the kit")
    return folder / f"{variant}.txt"


def auto_variant(*, system: str | None = None, has_nvidia: bool | None = None) -> str:
    """``cuda`` on Apple silicon and where an NVIDIA driver is installed (``nvidia-smi``), else ``cpu``."""
    system = system or sys.platform
    if system == "darwin":
        return "cuda"  # PyPI's torch is the only macOS build, and the cuda lock is the one with it
    if has_nvidia is None:
        has_nvidia = shutil.which("nvidia-smi") is not None
    return "cuda" if has_nvidia else "cpu"


def installed_variant() -> str:
    """The variant the installed torch belongs to: a ``+cpu`` build is the cpu lock's."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return auto_variant()
    return "cpu" if version.endswith("+cpu") else "cuda"


def platform_supported(system: str | None = None, machine: str | None = None) -> bool:
    system, machine = system or sys.platform, machine or platform.machine()
    return (system, machine) in (("linux", "x86_64"), ("darwin", "arm64"))


def variant_supported(variant: str, system: str | None = None, machine: str | None = None) -> bool:
    """The cpu lock needs Linux x86_64 (where torch's ``+cpu`` wheels are); the cuda lock any
    platform the lock covers."""
    system, machine = system or sys.platform, machine or platform.machine()
    if variant == "cpu":
        return (system, machine) == ("linux", "x86_64")
    return platform_supported(system, machine)


def python_supported(version: tuple[int, int] | None = None) -> bool:
    return tuple(version or sys.version_info[:2]) in SUPPORTED_PYTHONS


def find(entries: list[Entry], name: str) -> Entry:
    """The entry for ``name``; when the lock pins it per Python, the one whose marker holds here."""
    matches = [e for e in entries if e.name == normalize(name)]
    if not matches:
        raise KeyError(f"{name} is not in the lock")
    return next((e for e in matches if applies(e)), matches[0]) if len(matches) > 1 else matches[0]


def applies(entry: Entry) -> bool:
    """Whether ``entry``'s environment marker holds for this interpreter."""
    if not entry.marker:
        return True
    from packaging.markers import Marker

    return Marker(entry.marker).evaluate()


def drift(path: Path) -> list[Drift]:
    """Packages of the lock at ``path`` (those whose markers hold here) installed at another
    version, or not at all. Packages installed beyond the lock are not reported."""
    out = []
    for entry in parse(path.read_text(encoding="utf-8")):
        if not applies(entry):
            continue
        try:
            installed: str | None = importlib.metadata.version(entry.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not same_version(installed, entry.version):
            out.append(Drift(entry.name, entry.version, installed))
    return out


def same_version(a: str, b: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b
