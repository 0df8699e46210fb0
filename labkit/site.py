"""The course site: one static page tree, in Chinese and English, that works from ``file://``.

``build`` renders the kit's own documents into ``build/site``, keeping each file's path from the
repository (``docs/agenda.md`` becomes ``docs/agenda.html``), so every relative link written in
the Markdown still points at the right page:

* the front page, both languages side by side: the agenda, every deck (HTML and PDF), every lab,
  the instructor guide, the benchmarks;
* Markdown pages (markdown-it, the CommonMark parser in the lock) and every Markdown file they link
  to, followed through the repository; other files they link to (a script, a dataset's rows) are
  copied as they are, images too;
* each lab as a read-only page (nbconvert's ``basic`` template: nothing loaded from a CDN), with
  the outputs of a CI run when one left executed notebooks in ``executed`` (the notebook tests write
  them to ``build/notebooks/en``). The Chinese lab runs the same code token for token, so its page
  shows the English run's outputs beside its Chinese text, and says so;
* the decks from a slides build (``labkit slides build``);
* the Noto Sans SC pieces its pages need, in ``assets/`` (see ``_bundle_fonts``).

Example:
    >>> from labkit.site import build
    >>> build(out_dir="build/site")                       # doctest: +SKIP
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import nbformat

from labkit import slides as slide_decks
from labkit.bilingual import all_labs

REPO = Path(__file__).resolve().parent.parent
ROOT_PAGES = ["README.md", "README.zh-CN.md", "docs/agenda.md", "docs/agenda.zh-CN.md", "docs/benchmarks.md",
              "infra/README.md", "slides/README.md"]
STYLE = """body{font-family:'Noto Sans SC',system-ui,sans-serif;max-width:980px;
margin:2em auto;padding:0 1em;line-height:1.55;color:#222}
code,pre{font-family:""" + slide_decks.CODE_FONTS + """;font-size:.92em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto}table{border-collapse:collapse}td,th{border:1px solid #ddd;
padding:.3em .6em}img{max-width:100%}nav{font-size:.9em;margin-bottom:1.5em}.note{background:#fff8e1;padding:.6em}
.columns{display:flex;gap:2em;flex-wrap:wrap}.columns>section{flex:1;min-width:320px}
.jp-InputArea,.input_area{background:#f6f8fa}.jp-OutputArea pre{background:#fff}"""


class SiteError(RuntimeError):
    """The site cannot be built as asked: what is missing and the command that makes it."""


def _page(title: str, body: str, *, depth: int, lang: str = "en") -> str:
    home = "../" * depth + "index.html"
    fonts = "../" * depth + "assets/fonts.css"
    return (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f'<link rel="stylesheet" href="{fonts}"><style>{STYLE}</style></head>'
            f'<body><nav><a href="{home}">labkit · 课程主页 course home</a></nav>'
            f"{body}</body></html>\n")


def _depth(rel: Path) -> int:
    return len(rel.parts) - 1


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


class _Builder:
    def __init__(self, out: Path, executed: Path | None):
        self.out, self.executed = out, executed
        self.done: set[Path] = set()
        self.todo: list[Path] = []

    def want(self, rel: Path) -> None:
        if rel not in self.done and rel not in self.todo:
            self.todo.append(rel)

    def run(self) -> None:
        while self.todo:
            rel = self.todo.pop(0)
            self.done.add(rel)
            src = REPO / rel
            if src.suffix == ".md":
                self.markdown_page(rel)
            elif src.suffix == ".ipynb":
                self.notebook_page(rel)
            elif src.is_file():
                (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, self.out / rel)
            elif src.is_dir() and (src / "README.md").is_file():
                self.want(rel / "README.md")
            elif src.is_dir():
                self.listing(rel)

    def links(self, body: str, rel: Path) -> str:
        """Point each relative link at its page in the site, and queue what it points at."""
        def fix(match: re.Match) -> str:
            attr, target = match.group(1), html.unescape(match.group(2))
            if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^//", target):
                return match.group(0)
            path, _, frag = target.partition("#")
            dest = (rel.parent / path)
            try:
                dest = Path(*_normalise(dest.parts))
            except ValueError:
                return match.group(0)
            if not (REPO / dest).exists():
                return f'{attr}="#missing-{html.escape(path)}"'
            if dest.parts[:2] != ("slides", "en") or dest.suffix != ".md":
                self.want(dest)   # a deck's source links to the built English deck of the same name
            if (REPO / dest).is_dir():
                path = path.rstrip("/") + ("/README.md" if (REPO / dest / "README.md").is_file() else "/index.html")
            path = re.sub(r"\.(md|ipynb)$", ".html", path)
            return f'{attr}="{html.escape(path)}{"#" + frag if frag else ""}"'

        return re.sub(r'(href|src)="([^"]+)"', fix, body)

    def markdown_page(self, rel: Path) -> None:
        text = (REPO / rel).read_text(encoding="utf-8")
        lang = "zh" if "zh" in rel.name or re.search(r"[\u4e00-\u9fff]{20,}", text) else "en"
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), rel.stem)
        body = self.links(_markdown(text), rel)
        self.write(rel.with_suffix(".html"), _page(title, body, depth=_depth(rel), lang=lang))

    def notebook_page(self, rel: Path) -> None:
        from nbconvert import HTMLExporter

        nb = nbformat.read(REPO / rel, as_version=4)
        lang = rel.parts[1] if len(rel.parts) > 2 else "en"
        note = ("本页为只读版本。" if lang == "zh" else "A read-only copy. ")
        ran = self.executed and (self.executed / "en" / rel.name)
        if ran and ran.is_file():
            # by cell id: the run has cells of its own (papermill's parameters, the exercise probes)
            done = {c.get("id"): c for c in nbformat.read(ran, as_version=4).cells if c.cell_type == "code"}
            for cell in nb.cells:
                if cell.cell_type == "code" and cell.get("id") in done:
                    cell.outputs = done[cell.id].get("outputs", [])
                    cell.execution_count = done[cell.id].get("execution_count")
            if any(c.cell_type == "code" and c.get("outputs") for c in nb.cells):
                note += ("输出来自 CI 以 smoke 设置运行的英文版（代码完全相同），所以输出里的文字是英文。"
                         if lang == "zh" else "Outputs are from a CI run with smoke settings.")
        else:
            note += ("这里没有 CI 运行的输出：在 JupyterLab 里运行它即可看到。" if lang == "zh"
                     else "No CI run's outputs were available when this page was built: run the lab to see them.")
        body, _ = HTMLExporter(template_name="basic").from_notebook_node(nb)
        body = f'<p class="note">{html.escape(note)} <a href="{rel.name}">.ipynb</a></p>' + self.links(body, rel)
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, self.out / rel)
        self.write(rel.with_suffix(".html"), _page(rel.stem, body, depth=_depth(rel), lang=lang))

    def listing(self, rel: Path) -> None:
        """A folder with no README: a page listing its files (each copied or rendered)."""
        items = []
        for child in sorted((REPO / rel).iterdir()):
            if child.name.startswith(".") or child.is_dir():
                continue
            self.want(rel / child.name)
            items.append(f'<li><a href="{html.escape(re.sub(r"[.](md|ipynb)$", ".html", child.name))}">'
                         f"{html.escape(child.name)}</a></li>")
        self.write(rel / "index.html", _page(str(rel), f"<h1>{html.escape(str(rel))}/</h1><ul>{''.join(items)}</ul>",
                                             depth=len(rel.parts)))

    def write(self, rel: Path, text: str) -> None:
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.out / rel).write_text(text, encoding="utf-8")


def _normalise(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if not out:
                raise ValueError("outside the repository")
            out.pop()
        elif part not in (".", ""):
            out.append(part)
    return out


def _front_page(decks: list[str], labs: list[str]) -> str:
    def column(lang: str) -> str:
        zh = lang == "zh"
        deck_rows = "".join(
            f'<li><a href="slides/{lang}/{d}.html">{html.escape(slide_decks.deck(d, lang).title)}</a> '
            f'(<a href="slides/{lang}/{d}.pdf">PDF</a>)</li>' for d in decks)
        lab_rows = "".join(f'<li><a href="notebooks/{lang}/{n}.html">{n}</a></li>' for n in labs)
        agenda = "docs/agenda.zh-CN.html" if zh else "docs/agenda.html"
        readme = "README.zh-CN.html" if zh else "README.html"
        return (f'<section lang="{"zh" if zh else "en"}"><h2>{"中文" if zh else "English"}</h2><ul>'
                f'<li><a href="{agenda}">{"日程" if zh else "The day: agenda"}</a></li>'
                f'<li><a href="{readme}">{"快速开始" if zh else "Quick start"}</a></li>'
                f'<li><a href="infra/README.html">{"讲师指南（英文）" if zh else "Instructor guide"}</a></li>'
                f'<li><a href="docs/benchmarks.html">{"基准测试（英文）" if zh else "Benchmarks"}</a></li></ul>'
                f'<h3>{"讲稿" if zh else "Decks"}</h3><ul>{deck_rows}</ul>'
                f'<h3>{"实验（只读）" if zh else "Labs (read-only)"}</h3><ul>{lab_rows}</ul></section>')

    body = ("<h1>labkit: AIGC 工作坊 · workshop</h1><p>云原生与大数据构建 AIGC 引擎：讲稿、实验与日程。"
            "Decks, labs and the day's agenda.</p>" f'<div class="columns">{column("zh")}{column("en")}</div>')
    return _page("labkit", body, depth=0, lang="zh")


def build(*, out_dir: str | Path = "build/site", slides_dir: str | Path = "build/slides",
          executed: str | Path | None = "build/notebooks") -> Path:
    """Write the site into ``out_dir`` and return its front page. ``slides_dir`` is a finished
    ``labkit slides build``; ``executed`` a folder with ``en/<lab>.ipynb`` run by CI (optional)."""
    out, slides_dir = Path(out_dir), Path(slides_dir)
    decks = [p.en.stem for p in slide_decks.all_decks()]
    missing = [f"{lang}/{d}.{ext}" for lang in slide_decks.LANGS for d in decks for ext in ("html", "pdf")
               if not (slides_dir / lang / f"{d}.{ext}").is_file()]
    if missing:
        raise SiteError(f"{slides_dir} lacks {len(missing)} built deck file(s) (first: {missing[0]}): "
                        f"run `make slides` (or `labkit slides build --out {slides_dir}`) first")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for lang in slide_decks.LANGS:
        (out / "slides" / lang).mkdir(parents=True)
        for d in decks:
            for ext in ("html", "pdf"):
                shutil.copyfile(slides_dir / lang / f"{d}.{ext}", out / "slides" / lang / f"{d}.{ext}")
    builder = _Builder(out, Path(executed) if executed else None)
    labs = [lab.en.stem for lab in all_labs()]
    for page in ROOT_PAGES:
        builder.want(Path(page))
    for lab in labs:
        for lang in ("en", "zh"):
            builder.want(Path("notebooks") / lang / f"{lab}.ipynb")
    builder.run()
    (out / "index.html").write_text(_front_page(decks, labs), encoding="utf-8")
    _bundle_fonts(out)
    return out / "index.html"


def _bundle_fonts(out: Path) -> None:
    """The Noto Sans SC pieces the site's pages use, as files beside them (``assets/``), so Chinese
    shows on a machine with no CJK font. Files, not inline data as in the decks: one copy serves
    every page. Chromium (tested) and Firefox ESR 153 (looked at once) load them from ``file://``
    pages in sub-folders as well as from a static host."""
    pages = [p.read_text(encoding="utf-8") for p in out.rglob("*.html") if p.parts[len(out.parts)] != "slides"]
    chunks = slide_decks.font_chunks("".join(pages), slide_decks.tools_dir())
    (out / "assets" / "fonts").mkdir(parents=True)
    rules = []
    for weight, file, ranges in chunks:
        shutil.copyfile(file, out / "assets" / "fonts" / file.name)
        rules.append(slide_decks.font_face(weight, f"fonts/{file.name}", ranges))
    (out / "assets" / "fonts.css").write_text("\n".join(rules) + "\n", encoding="utf-8")
