"""``labkit run-notebooks``: execute the labs headless with papermill and write a report.

Each notebook runs on the ``labkit`` Jupyter kernel with ``profile`` and ``smoke`` injected into
its cell tagged ``parameters``. Executed copies, ``summary.json`` and ``summary.md`` land in the
output folder. Tests, CI and the GPU workflow all call this.

Example:
    >>> from labkit.notebooks import run_notebooks
    >>> summary = run_notebooks(smoke=True)      # doctest: +SKIP
    >>> summary.ok                               # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

KERNEL = "labkit"


def notebooks_dir(lang: str = "en") -> Path:
    """The repo's ``notebooks/<lang>/`` (labkit is installed editable from the repo)."""
    from labkit.i18n import check_language

    return Path(__file__).resolve().parent.parent / "notebooks" / check_language(lang)


def find_notebooks(folder: Path | None = None) -> list[Path]:
    folder = folder or notebooks_dir()
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("_"))


@dataclass
class NotebookResult:
    notebook: str
    status: str  # "ok" or "failed"
    seconds: float
    output: str
    error: str = ""


@dataclass
class RunSummary:
    profile: str
    smoke: bool
    results: list[NotebookResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)

    def to_markdown(self) -> str:
        lines = [f"# Notebook run: profile `{self.profile}`, smoke={self.smoke}", "",
                 "| notebook | status | wall time (s) | error |", "|---|---|---:|---|"]
        for r in self.results:
            err = r.error.splitlines()[-1][:120].replace("|", "\\|") if r.error else ""
            lines.append(f"| {r.notebook} | {r.status} | {r.seconds:.1f} | {err} |")
        passed = sum(r.status == "ok" for r in self.results)
        lines += ["", f"{passed} passed, {len(self.results) - passed} failed"]
        return "\n".join(lines) + "\n"


def run_notebooks(paths: list[Path] | None = None, *, lang: str = "en", profile: str | None = None,
                  smoke: bool = False,
                  output_dir: Path = Path("runs/notebooks"), kernel: str = KERNEL,
                  timeout: int = 1800, progress: bool = True, probe_exercises: bool = False) -> RunSummary:
    """Execute notebooks in order (all of ``notebooks/<lang>/`` by default); never stops at the first failure.

    ``probe_exercises=True`` also feeds each exercise's recorded wrong answers to its check after
    the solution cell (see ``labkit.exercises``), in the same execution.
    """
    import papermill
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from labkit.profiles import check_profile

    profile = check_profile(profile)
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise RuntimeError(f"no Jupyter kernel named {kernel!r}: run `make setup`, or "
                           f"`python -m ipykernel install --sys-prefix --name {kernel}`") from None
    paths = [Path(p) for p in paths] if paths else find_notebooks(notebooks_dir(lang))
    if not paths:
        raise FileNotFoundError(f"no notebooks found under {notebooks_dir(lang)}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"notebook(s) not found: {', '.join(missing)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    summary = RunSummary(profile=profile, smoke=smoke)
    for nb in paths:
        out = output_dir / nb.name
        print(f"--- {nb.name} (profile={profile}, smoke={smoke})", flush=True)
        t0 = time.perf_counter()
        error = ""
        try:
            source = str(nb)
            if probe_exercises:
                source = str(output_dir / f".probed-{nb.name}")
                nbformat.write(with_probes(nbformat.read(nb, as_version=4)), source)
            papermill.execute_notebook(
                source, str(out), parameters={"profile": profile, "smoke": smoke}, kernel_name=kernel,
                cwd=str(nb.parent), progress_bar=progress, execution_timeout=timeout,
                # A cell past its time is interrupted, so its traceback (where it hung) is in the report.
                interrupt_on_timeout=True,
            )
        except Exception as exc:  # a failed notebook is recorded; the others still run
            error = f"{type(exc).__name__}: {exc}"
        summary.results.append(NotebookResult(nb.name, "failed" if error else "ok",
                                              round(time.perf_counter() - t0, 2), str(out), error))
        print(f"    {'ok' if not error else 'FAILED'} in {summary.results[-1].seconds:.1f}s", flush=True)

    (output_dir / "summary.json").write_text(json.dumps(
        {"profile": profile, "smoke": smoke, "ok": summary.ok, "results": [asdict(r) for r in summary.results]},
        indent=2))
    (output_dir / "summary.md").write_text(summary.to_markdown())
    return summary


def with_probes(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` with a cell after each solution that calls ``must_fail`` on its recorded wrong answers.

    Raises ValueError for a solution cell that records no wrong answer or names no exercise.
    """
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type != "code" or "solution" not in cell.metadata.get("tags", []):
            continue
        names = re.findall(r"""check\(\s*["']([^"']+)["']""", cell.source)
        wrong = cell.metadata.get("labkit", {}).get("wrong_answers", [])
        if len(set(names)) != 1 or not wrong:
            raise ValueError(f"a solution cell must check exactly one exercise and record wrong answers in its "
                             f"metadata (labkit.wrong_answers); found exercises {names} and {len(wrong)} wrong "
                             f"answers:\n{cell.source[:300]}")
        probe = nbformat.v4.new_code_cell("from labkit.exercises import must_fail\n\n" + "\n".join(
            f"must_fail({names[0]!r}, {answer})" for answer in wrong))
        probe.metadata["tags"] = ["probe"]
        cells.append(probe)
    out = nbformat.from_dict(nb)
    out.cells = cells
    return out
