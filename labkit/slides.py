"""Decks for the talks and labs, in English and Chinese, built offline into self-contained HTML and PDF.

``slides/en/<deck>.md`` is written (Marp Markdown: ``---`` between slides, speaker notes in HTML
comments, ``<!-- minutes: N -->`` on the first slide of each section). The Chinese deck is built
from it and a catalogue, ``slides/i18n/zh/<deck>.yaml``, with one entry per slide (the whole slide,
notes included, as a translator reads it) and one for the title, the same way
:mod:`labkit.bilingual` builds the labs. ``check_parity`` refuses a Chinese deck whose slides,
minutes, figures or code differ from the English.

``build`` renders both languages with the tools ``slides/package.json`` pins (installed from npm by
``make slides``, so nothing is fetched at the venue):

* figures named ``figure:NAME`` come from :mod:`labkit.slide_figures`, inline, captioned with the
  command that made them; Mermaid diagrams are drawn from their text source;
* the Noto Sans SC web font (npm ``@fontsource/noto-sans-sc``) is split by Unicode range; each
  language's decks carry, inline, only the ranges their characters need, so a Chinese deck renders
  the same on a projector laptop with no CJK font installed;
* Marp writes one HTML file per deck (its presenter view shows the notes: press ``p``) and a PDF
  with one page per slide.

Why our own renderer around Marp rather than Marp alone: Marp does not translate, resolve the
kit's figures or bundle fonts; everything it does (layout, presenter view, PDF) is left to it.

Example:
    >>> from labkit.slides import read_deck, deck_paths
    >>> deck = read_deck(deck_paths("10_elastic_pools").en)   # doctest: +SKIP
    >>> len(deck.slides), deck.minutes()                       # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from labkit.bilingual import TranslationError, _norm, read_catalog, write_catalog
from labkit.slide_figures import figure

SLIDES = Path(__file__).resolve().parent.parent / "slides"
LANGS = ("en", "zh")
MINUTES = re.compile(r"<!--\s*minutes:\s*(\d+)\s*-->")
FIGURE_REF = re.compile(r"!\[([^\]]*)\]\(figure:([\w-]+)\)")
CODE = re.compile(r"```.*?```", re.DOTALL)
FONT_PACKAGE = "@fontsource/noto-sans-sc"


class SlidesError(RuntimeError):
    """A deck cannot be built here: what is missing, and the command that fixes it."""


@dataclass(frozen=True)
class DeckPaths:
    en: Path
    catalog: Path


@dataclass
class Deck:
    name: str
    front: dict
    slides: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return str(self.front.get("title", self.name))

    def minutes(self) -> list[int]:
        """Minutes of each section, in order (a section starts at a slide with a minutes comment)."""
        return [int(m) for s in self.slides for m in MINUTES.findall(s)]

    def figures(self) -> list[str]:
        return [name for s in self.slides for _, name in FIGURE_REF.findall(s)]


def deck_paths(name: str | Path, root: Path | None = None) -> DeckPaths:
    root = root or SLIDES
    stem = Path(name).stem
    return DeckPaths(root / "en" / f"{stem}.md", root / "i18n" / "zh" / f"{stem}.yaml")


def all_decks(root: Path | None = None) -> list[DeckPaths]:
    root = root or SLIDES
    return [deck_paths(p, root) for p in sorted((root / "en").glob("*.md"))]


def read_deck(path: Path) -> Deck:
    """Split a Marp file into its front matter and slides."""
    text = path.read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    if not match:
        raise SlidesError(f"{path}: a deck starts with front matter between two '---' lines (marp: true, title: ...)")
    front = yaml.safe_load(match.group(1)) or {}
    body = text[match.end():]
    slides = [s.strip() for s in re.split(r"^---\s*$", body, flags=re.MULTILINE)]
    return Deck(path.stem, front, [s for s in slides if s])


# --- Chinese from a catalogue -----------------------------------------------------------------------

def texts(deck: Deck) -> list[str]:
    """What a translator sees: the title, then each slide whole."""
    return [deck.title, *deck.slides]


def update_catalog(paths: DeckPaths) -> dict[str, int]:
    header = (f"# Chinese text of slides/en/{paths.en.name}: the title, then each slide whole (notes included).\n"
              "# Keep figures, code, minutes comments and the slide's layout as they are. Then: labkit slides build\n")
    return write_catalog(paths.catalog, texts(read_deck(paths.en)), header=header)


def translate(deck: Deck, catalog: Path) -> Deck:
    zh = read_catalog(catalog)
    missing = [t for t in texts(deck) if _norm(t) not in zh]
    if missing:
        lines = [ln for ln in missing[0].strip().splitlines() if ln.strip() and not ln.startswith("<!--")]
        first = (lines or [missing[0].strip()])[0][:80]
        raise TranslationError(f"{len(missing)} text(s) of slides/en/{deck.name}.md have no Chinese yet (first: "
                               f"{first!r}). Run `labkit slides update`, fill in the empty `zh` entries of "
                               f"{catalog}, then `labkit slides check`.")
    built = Deck(deck.name, {**deck.front, "title": zh[_norm(deck.title)], "lang": "zh-CN"},
                 [zh[_norm(s)] for s in deck.slides])
    problems = check_parity(deck, built)
    if problems:
        raise TranslationError(f"slides/en/{deck.name}.md: the Chinese deck is not parallel: {problems[0]}")
    return built


def check_parity(en: Deck, zh: Deck) -> list[str]:
    """Every way two decks differ other than in their prose (empty: parallel)."""
    problems = []
    if len(en.slides) != len(zh.slides):
        problems.append(f"{len(en.slides)} slides in English, {len(zh.slides)} in Chinese")
    for i, (a, b) in enumerate(zip(en.slides, zh.slides, strict=False)):
        for what, pattern in (("minutes", MINUTES), ("figures", FIGURE_REF), ("code blocks", CODE)):
            if pattern.findall(a) != pattern.findall(b):
                problems.append(f"slide {i + 1}: {what} differ ({pattern.findall(a)} vs {pattern.findall(b)})")
        if a.count("<!--") != b.count("<!--"):
            problems.append(f"slide {i + 1}: {a.count('<!--')} comments (notes, minutes) in English, "
                            f"{b.count('<!--')} in Chinese")
    return problems


def deck(name: str, lang: str = "en", root: Path | None = None) -> Deck:
    """The deck ``name`` in ``lang`` (``zh`` built from the catalogue)."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    paths = deck_paths(name, root)
    if not paths.en.is_file():
        known = ", ".join(p.en.stem for p in all_decks(root))
        raise FileNotFoundError(f"no deck {paths.en}; the decks are: {known}")
    en = read_deck(paths.en)
    return en if lang == "en" else translate(en, paths.catalog)


def check_all(root: Path | None = None) -> dict[str, list[str]]:
    """Problems per deck: untranslated text, broken parity, unknown figures (empty lists: fine)."""
    out = {}
    for paths in all_decks(root):
        problems = []
        try:
            en = deck(paths.en.stem, "en", root)
            deck(paths.en.stem, "zh", root)
            for name in en.figures():
                figure(name)
            if not en.minutes():
                problems.append("no <!-- minutes: N --> comment: say how long each section takes")
        except (TranslationError, KeyError, SlidesError) as exc:
            problems.append(str(exc).strip("'\""))
        out[paths.en.stem] = problems
    return out


# --- rendering ----------------------------------------------------------------------------------

def tools_dir(root: Path | None = None) -> Path:
    """``slides/node_modules`` with Marp, Mermaid's CLI and the font, or an error saying how to install them."""
    modules = (root or SLIDES) / "node_modules"
    if not (modules / ".bin" / "marp").exists() or not (modules / FONT_PACKAGE).is_dir():
        raise SlidesError("the slide tools are not installed: run `make slides` (npm ci in slides/, "
                          "from the npm registry; needs Node.js 18 or newer)")
    return modules


def chromium() -> str:
    """The Chromium that renders PDFs and diagrams (Debian: apt-get install chromium)."""
    found = os.environ.get("CHROME_PATH") or shutil.which("chromium") or shutil.which("chromium-browser") \
        or shutil.which("google-chrome")
    if not found:
        raise SlidesError("no Chromium found for the PDFs and diagrams: install it (Debian/Ubuntu: "
                          "apt-get install chromium) or set CHROME_PATH")
    return found


def font_chunks(text: str, modules: Path, weights: tuple[int, ...] = (400, 700)) -> list[tuple[int, Path, str]]:
    """(weight, woff2 file, unicode-range) of each piece of Noto Sans SC that ``text`` needs."""
    used = {ord(ch) for ch in text}
    chunks = []
    for weight in weights:
        css = (modules / FONT_PACKAGE / f"{weight}.css").read_text(encoding="utf-8")
        for block in re.findall(r"@font-face\s*{(.*?)}", css, re.DOTALL):
            file = re.search(r"url\(\./files/([^)]+\.woff2)\)", block).group(1)
            ranges = re.search(r"unicode-range:\s*([^;]+);", block).group(1)
            if any(_in_range(cp, ranges) for cp in used):
                chunks.append((weight, modules / FONT_PACKAGE / "files" / file, ranges))
    return chunks


def font_face(weight: int, src: str, ranges: str) -> str:
    return (f"@font-face{{font-family:'Noto Sans SC';font-style:normal;font-weight:{weight};font-display:block;"
            f"src:url({src}) format('woff2');unicode-range:{ranges};}}")


def font_faces(text: str, modules: Path, weights: tuple[int, ...] = (400, 700)) -> str:
    """@font-face rules, fonts inline, for just the Unicode ranges of Noto Sans SC that ``text`` uses."""
    return "\n".join(font_face(w, "data:font/woff2;base64," + base64.b64encode(f.read_bytes()).decode(), r)
                     for w, f, r in font_chunks(text, modules, weights))


def _in_range(cp: int, ranges: str) -> bool:
    for part in ranges.split(","):
        lo, _, hi = part.strip()[2:].partition("-")
        if int(lo, 16) <= cp <= int(hi or lo, 16):
            return True
    return False


THEME_HEAD = "/* @theme labkit */\n@import 'default';\n"
# Code keeps a monospace face for Latin and falls back to the bundled Noto Sans SC for Chinese
# (Marp's code fonts have no CJK glyphs: Chinese in code showed as boxes). The site uses it too.
CODE_FONTS = "ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,'Noto Sans SC',monospace"
THEME = """section { font-family: 'Noto Sans SC', sans-serif; font-size: 26px; padding: 50px 60px; }
section code, section pre { font-family: """ + CODE_FONTS + """; }
section h1 { font-size: 44px; } section h2 { font-size: 34px; }
section table { font-size: 20px; } section pre { font-size: 18px; }
section img { max-height: 400px; }
section p.source { font-size: 13px; color: #777; margin-top: 2px; }
"""


def render(deck: Deck, lang: str, figures_dir: Path) -> str:
    """The Marp Markdown for one deck: figures inline with their source, minutes as a note."""
    def with_figure(match: re.Match) -> str:
        alt, name = match.groups()
        fig = figure(name)
        png = figures_dir / f"{name}.png"
        data = base64.b64encode(png.read_bytes()).decode()
        made_by = "图" if lang == "zh" else "figure"
        return (f"![{alt}](data:image/png;base64,{data})\n"
                f'<p class="source">{made_by}: <code>{fig.command}</code></p>')

    front = {**deck.front, "marp": True, "theme": "labkit", "lang": "zh-CN" if lang == "zh" else "en"}
    slides = []
    for s in deck.slides:
        s = MINUTES.sub(lambda m: f"<!-- ⏱ {m.group(1)} min -->", s)
        slides.append(FIGURE_REF.sub(with_figure, s))
    return "---\n" + yaml.safe_dump(front, allow_unicode=True, sort_keys=False) + "---\n\n" + \
        "\n\n---\n\n".join(slides) + "\n"


def make_figures(names: set[str], out: Path, modules: Path) -> None:
    """Draw each figure not yet in ``out`` (kit figures by their code, diagrams by Mermaid)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        fig, png = figure(name), out / f"{name}.png"
        if png.exists():
            continue
        if fig.kind == "kit":
            fig.make(png)
        elif fig.kind == "benchmark":
            if not fig.source.is_file():
                raise SlidesError(f"figure {name}: {fig.source} is missing; make it with {fig.command}")
            shutil.copyfile(fig.source, png)
        else:
            _mermaid(fig.source, png, modules)


def _mermaid(source: Path, png: Path, modules: Path) -> None:
    work = png.parent / f".{png.stem}"
    work.mkdir(exist_ok=True)
    (work / "puppeteer.json").write_text(json.dumps(
        {"executablePath": chromium(), "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]}))
    # The system's sans-serif, not the bundled web font: Mermaid sizes each box before a web font
    # has loaded, so with one its labels came out clipped. The diagrams' labels are English, in
    # both languages' decks (the same figures).
    (work / "config.json").write_text(json.dumps({"theme": "neutral", "themeVariables": {"fontFamily": "sans-serif"}}))
    _run([str(modules / ".bin" / "mmdc"), "-q", "-i", str(source), "-o", str(png), "-s", "2", "-b", "white",
          "-p", str(work / "puppeteer.json"), "-c", str(work / "config.json")], f"drawing {source.name}")


def _run(cmd: list[str], what: str) -> None:
    env = {**os.environ, "CHROME_PATH": chromium(), "PUPPETEER_SKIP_DOWNLOAD": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SlidesError(f"{what} failed ({' '.join(cmd[:2])} ...):\n{done.stderr[-2000:]}")


def build(names: list[str] | None = None, *, langs: tuple[str, ...] = LANGS, out_dir: Path = Path("build/slides"),
          pdf: bool = True, root: Path | None = None) -> list[Path]:
    """Build decks (all by default) into ``out_dir/<lang>/<deck>.html`` (and ``.pdf``); returns the files."""
    modules = tools_dir(root)
    names = names or [p.en.stem for p in all_decks(root)]
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir / "figures", ignore_errors=True)   # drawn afresh each build, shared by both languages
    built: list[Path] = []
    for lang in langs:
        decks = [deck(n, lang, root) for n in names]
        src = out_dir / lang / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        all_text = "\n".join(t for d in decks for t in texts(d))
        fonts = font_faces(all_text + "0123456789 figure图:", modules)
        figures_dir = out_dir / "figures"
        make_figures({f for d in decks for f in d.figures()}, figures_dir, modules)
        theme = src / "labkit.css"
        theme.write_text(THEME_HEAD + fonts + "\n" + THEME, encoding="utf-8")
        for d in decks:
            (src / f"{d.name}.md").write_text(render(d, lang, figures_dir), encoding="utf-8")
        marp = [str(modules / ".bin" / "marp"), "--no-config-file", "--html", "--allow-local-files",
                "--theme-set", str(theme), "--input-dir", str(src), "--output", str(out_dir / lang)]
        _run([*marp, "--template", "bespoke"], f"Marp (HTML, {lang})")
        if pdf:
            _run([*marp, "--pdf", "--pdf-notes"], f"Marp (PDF, {lang})")
        built += [out_dir / lang / f"{n}.{ext}" for n in names for ext in (("html", "pdf") if pdf else ("html",))]
    missing = [str(p) for p in built if not p.is_file()]
    if missing:
        raise SlidesError(f"Marp ran but did not write: {', '.join(missing)}")
    return built
