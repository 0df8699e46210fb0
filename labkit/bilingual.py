"""One source for the labs in two languages: ``notebooks/en`` is written, ``notebooks/zh`` is built.

The English notebook is the source. Its Chinese text lives in a catalogue per lab,
``notebooks/i18n/zh/<lab>.yaml``: one entry per markdown cell and per code comment, each the
English text (``en``) beside its translation (``zh``), in the order they appear. ``build`` writes
``notebooks/zh/<lab>.ipynb`` from the two: every markdown cell and comment replaced, the
parameters cell's ``lang`` set to ``"zh"``, and nothing else touched, so the code that runs is the
same token for token. When the English changes, its entry no longer matches and ``update`` adds
the new text with an empty translation; ``build`` refuses to write a lab with text untranslated.

``check_parity`` is what the tests run: same cells, same sections and exercises, same parameters,
and code identical except comments and ``lang``. Because the code is identical, CI executes each
lab once (in English) and the Chinese build once for the first lab, where language matters.

Why a YAML catalogue and not gettext ``.po`` files: a translator reads a markdown cell whole, in
an editor, next to its English; YAML's block scalars keep both readable and diffs small.

Example:
    >>> from labkit.bilingual import build, lab_paths
    >>> paths = lab_paths("00_setup_check")          # doctest: +SKIP
    >>> build(paths.en, write=True)                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

LANG_LINE = re.compile(r'^lang\s*=\s*"(en|zh)"', re.MULTILINE)


@dataclass(frozen=True)
class LabPaths:
    en: Path
    zh: Path
    catalog: Path


def notebooks_root() -> Path:
    return Path(__file__).resolve().parent.parent / "notebooks"


def lab_paths(name_or_path: str | Path, root: Path | None = None) -> LabPaths:
    """The English source, the Chinese build and the catalogue of one lab (``"09_training_at_scale"``)."""
    root = root or notebooks_root()
    stem = Path(name_or_path).stem
    return LabPaths(root / "en" / f"{stem}.ipynb", root / "zh" / f"{stem}.ipynb",
                    root / "i18n" / "zh" / f"{stem}.yaml")


def all_labs(root: Path | None = None) -> list[LabPaths]:
    root = root or notebooks_root()
    return [lab_paths(p, root) for p in sorted((root / "en").glob("[0-9][0-9]*_*.ipynb"))]


class TranslationError(ValueError):
    """A Chinese lab cannot be built as it stands: what is missing, and how to fix it."""


# --- what needs translating ---------------------------------------------------------------------

def comments(source: str) -> list[tuple[int, int, str]]:
    """(line index, column, text) of each ``#`` comment in a code cell; IPython magics are skipped."""
    lines = source.splitlines(keepends=True)
    python = "".join("\n" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(python).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise TranslationError(f"a code cell does not tokenize ({exc}):\n{source[:200]}") from None
    return [(t.start[0] - 1, t.start[1], t.string) for t in tokens if t.type == tokenize.COMMENT]


def texts(nb: nbformat.NotebookNode) -> list[str]:
    """Every piece of English a translator sees, in notebook order: markdown cells, then comments."""
    out: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            out.append(cell.source)
        elif cell.cell_type == "code":
            out += [text for _, _, text in comments(cell.source)]
    return list(dict.fromkeys(out))  # a repeated comment is translated once


# --- the catalogue --------------------------------------------------------------------------------

class _Literal(str):
    pass


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


yaml.SafeDumper.add_representer(_Literal, _literal)


def read_catalog(path: Path) -> dict[str, str]:
    """English -> Chinese from a catalogue file (entries with no translation yet are left out)."""
    if not path.is_file():
        return {}
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    bad = [i for i, e in enumerate(entries) if not (isinstance(e, dict) and "en" in e)]
    if bad:
        raise TranslationError(f"{path}: entry {bad[0] + 1} is not a mapping with an 'en' key")
    return {_norm(e["en"]): e["zh"].rstrip("\n") if isinstance(e.get("zh"), str) else e.get("zh")
            for e in entries if e.get("zh")}


def update_catalog(en_path: Path, catalog: Path) -> dict[str, int]:
    """Rewrite ``catalog`` to hold exactly this notebook's texts, keeping every translation that
    still matches its English; returns counts of ``translated``, ``missing`` and ``dropped``."""
    header = (f"# Chinese text of notebooks/en/{en_path.name}. Fill in each empty `zh`; keep the English\n"
              "# term beside the Chinese one on first use (批处理 batch). Then: labkit translate build\n")
    return write_catalog(catalog, texts(nbformat.read(en_path, as_version=4)), header=header)


def write_catalog(catalog: Path, wanted: list[str], *, header: str) -> dict[str, int]:
    """Rewrite ``catalog`` to hold exactly the texts ``wanted``, in order, keeping each translation
    that still matches its English (the slides' catalogues use it too)."""
    known = read_catalog(catalog)
    entries = [{"en": _Literal(t), "zh": _Literal(known[_norm(t)]) if _norm(t) in known else None} for t in wanted]
    catalog.parent.mkdir(parents=True, exist_ok=True)
    catalog.write_text(header + yaml.safe_dump(entries, allow_unicode=True, sort_keys=False, width=110),
                       encoding="utf-8")
    kept = {_norm(t) for t in wanted}
    return {"translated": sum(e["zh"] is not None for e in entries),
            "missing": sum(e["zh"] is None for e in entries),
            "dropped": sum(k not in kept for k in known)}


def _norm(text: str) -> str:
    return text.strip()


# --- building and checking ----------------------------------------------------------------------

def build(en_path: Path, catalog: Path | None = None, *, write: bool = False,
          out: Path | None = None) -> nbformat.NotebookNode:
    """The Chinese notebook for ``en_path``; with ``write=True`` also saved (to ``out`` or notebooks/zh)."""
    paths = lab_paths(en_path, en_path.parent.parent)
    catalog = catalog or paths.catalog
    zh = read_catalog(catalog)
    nb = nbformat.read(en_path, as_version=4)
    missing = [t for t in texts(nb) if _norm(t) not in zh]
    if missing:
        first = missing[0].strip().splitlines()[0][:80]
        raise TranslationError(f"{len(missing)} text(s) of {en_path.name} have no Chinese yet (first: {first!r}). "
                               f"Run `labkit translate update`, fill in the empty `zh` entries of {catalog}, "
                               "then `labkit translate build`.")
    built = copy.deepcopy(nb)
    for cell in built.cells:
        if cell.cell_type == "markdown":
            cell.source = zh[_norm(cell.source)]
        elif cell.cell_type == "code":
            cell.source = _translate_comments(cell.source, zh)
            if "parameters" in cell.metadata.get("tags", []):
                cell.source = LANG_LINE.sub('lang = "zh"', cell.source, count=1)
    built.metadata["language_info_human"] = "zh"
    problems = check_parity(nb, built)
    if problems:
        raise TranslationError(f"{en_path.name}: the build is not parallel to the source: {problems[0]}")
    if write:
        target = out or paths.zh
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(built, target)
    return built


def _translate_comments(source: str, zh: dict[str, str]) -> str:
    lines = source.splitlines(keepends=True)
    for row, col, text in reversed(comments(source)):
        new = zh[_norm(text)]
        if "\n" in new or not new.startswith("#"):
            raise TranslationError(f"the translation of the comment {text!r} must be one line starting with '#'")
        end = "\n" if lines[row].endswith("\n") else ""
        lines[row] = lines[row][:col] + new + end
    return "".join(lines)


@dataclass
class Outline:
    """What must match between the two languages."""
    cell_types: list[str] = field(default_factory=list)
    headings: list[int] = field(default_factory=list)   # the level of each heading, in order
    exercises: list[str] = field(default_factory=list)  # the names given to check(...)
    parameters: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)       # each code cell without comments or its lang value


def outline(nb: nbformat.NotebookNode) -> Outline:
    o = Outline()
    for cell in nb.cells:
        o.cell_types.append(cell.cell_type)
        if cell.cell_type == "markdown":
            body = re.sub(r"```.*?```", "", cell.source, flags=re.DOTALL)
            o.headings += [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) ", body, re.MULTILINE)]
        elif cell.cell_type == "code":
            code = _without_comments(cell.source)
            if "parameters" in cell.metadata.get("tags", []):
                o.parameters = re.findall(r"^(\w+)\s*=", code, re.MULTILINE)
                code = LANG_LINE.sub('lang = "?"', code)
            o.exercises += re.findall(r"""check\(\s*["']([^"']+)["']""", code)
            o.code.append(code)
    return o


def _without_comments(source: str) -> str:
    lines = source.splitlines()
    for row, col, _ in reversed(comments(source)):
        lines[row] = lines[row][:col].rstrip()
    return "\n".join(lines)


def check_parity(en: nbformat.NotebookNode, zh: nbformat.NotebookNode) -> list[str]:
    """Every way the two notebooks differ other than in their prose and comments (empty: parallel)."""
    a, b = outline(en), outline(zh)
    problems = []
    for what in ("cell_types", "headings", "exercises", "parameters"):
        if getattr(a, what) != getattr(b, what):
            problems.append(f"{what} differ: en {getattr(a, what)} vs zh {getattr(b, what)}")
    for i, (x, y) in enumerate(zip(a.code, b.code, strict=False)):  # a count mismatch is reported above
        if x != y:
            problems.append(f"code cell {i + 1} differs:\n--- en\n{x}\n--- zh\n{y}")
    if "lang" not in a.parameters:
        problems.append('the parameters cell has no `lang = "en"` line')
    return problems


def check_lab(lab: LabPaths) -> list[str]:
    """Why the committed Chinese lab is not what ``build`` makes from the source (empty: it is)."""
    if not lab.zh.is_file():
        return [f"{lab.zh} is missing: run `labkit translate build`"]
    try:
        want = build(lab.en, lab.catalog)
    except TranslationError as exc:
        return [str(exc)]
    have = nbformat.read(lab.zh, as_version=4)
    problems = check_parity(nbformat.read(lab.en, as_version=4), have)
    if [c.source for c in have.cells] != [c.source for c in want.cells]:
        problems.append(f"{lab.zh} is out of date with its source or catalogue: run `labkit translate build`")
    return problems
