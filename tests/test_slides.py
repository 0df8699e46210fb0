"""The decks and the course site: parallel in both languages, built by the real tools, opened in a
real browser (the site is built from the same decks, so it shares their build).

The build needs the npm tools (`make slides` installs them into slides/node_modules) and Debian's
Chromium; the browser checks need chromedriver too. Each missing piece skips with the command
that installs it. Screenshots of every deck's first slide go to build/slides/screenshots for review.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from labkit import slides
from labkit.bilingual import TranslationError
from labkit.slide_figures import FIGURES

REPO = Path(__file__).resolve().parent.parent
DECKS = [p.en.stem for p in slides.all_decks()]


def test_every_deck_is_translated_parallel_and_timed():
    problems = slides.check_all()
    assert set(problems) == set(DECKS)
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    for name in DECKS:
        en, zh = slides.deck(name, "en"), slides.deck(name, "zh")
        assert len(en.slides) == len(zh.slides) and en.figures() == zh.figures()
        assert sum(en.minutes()) >= 5, f"{name}: its sections add up to {sum(en.minutes())} minutes"
        assert re.search(r"[\u4e00-\u9fff]", zh.title), f"{name}: the Chinese title has no Chinese"


def test_parity_refuses_a_dropped_slide_a_moved_figure_and_changed_minutes(tmp_path):
    en = slides.deck("10_elastic_pools", "en")
    zh = slides.deck("10_elastic_pools", "zh")
    assert slides.check_parity(en, zh) == []
    fewer = slides.Deck(zh.name, zh.front, zh.slides[:-1])
    assert "slides in English" in slides.check_parity(en, fewer)[0]
    fig = next(i for i, s in enumerate(zh.slides) if "figure:" in s)
    moved = slides.Deck(zh.name, zh.front, [s.replace("figure:pool_day", "figure:scheduling") for s in zh.slides])
    assert any(f"slide {fig + 1}: figures differ" in p for p in slides.check_parity(en, moved))
    retimed = slides.Deck(zh.name, zh.front, [re.sub(r"minutes: \d+", "minutes: 9", s) for s in zh.slides])
    assert any("minutes differ" in p for p in slides.check_parity(en, retimed))


def test_an_untranslated_slide_is_named_with_the_command_that_fixes_it(tmp_path):
    root = tmp_path / "slides"
    (root / "en").mkdir(parents=True)
    (root / "i18n" / "zh").mkdir(parents=True)
    shutil.copy(slides.deck_paths("06_ray_serve").en, root / "en")
    shutil.copy(slides.deck_paths("06_ray_serve").catalog, root / "i18n" / "zh")
    text = (root / "en" / "06_ray_serve.md").read_text(encoding="utf-8")
    (root / "en" / "06_ray_serve.md").write_text(text.replace("## Dynamic batching", "## Batching, dynamically"),
                                                 encoding="utf-8")
    with pytest.raises(TranslationError, match=r"1 text\(s\).*Batching, dynamically.*labkit slides update"):
        slides.deck("06_ray_serve", "zh", root)
    counts = slides.update_catalog(slides.deck_paths("06_ray_serve", root))
    assert counts["missing"] == 1 and counts["dropped"] == 1


def test_every_figure_a_deck_names_exists_and_says_what_made_it():
    used = {f for name in DECKS for f in slides.deck(name).figures()}
    assert used <= set(FIGURES)
    for name in used:
        fig = FIGURES[name]
        assert fig.command
        assert fig.make is not None if fig.kind == "kit" else fig.source.is_file(), name
    with pytest.raises(KeyError, match="the decks can use"):
        slides.figure("no_such_figure")


def test_the_font_rules_cover_the_characters_and_nothing_far_from_them():
    modules = _tools()
    latin = slides.font_faces("Ray", modules, weights=(400,))
    chinese = slides.font_faces("Ray 弹性资源池", modules, weights=(400,))
    assert latin.count("@font-face") >= 1
    assert chinese.count("@font-face") > latin.count("@font-face")
    assert "data:font/woff2;base64," in chinese and "url(./" not in chinese and "http" not in chinese


# --- the real build and the real browser ------------------------------------------------------------

def _tools() -> Path:
    try:
        return slides.tools_dir()
    except slides.SlidesError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    _tools()
    try:
        slides.chromium()
    except slides.SlidesError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("slides")
    slides.build(out_dir=out)
    return out


def test_each_pdf_has_one_page_per_slide(built):
    from pypdf import PdfReader

    for lang in slides.LANGS:
        for name in DECKS:
            pages = len(PdfReader(built / lang / f"{name}.pdf").pages)
            assert pages == len(slides.deck(name, lang).slides), f"{lang}/{name}.pdf: {pages} pages"


def test_each_deck_html_is_self_contained(built):
    for lang in slides.LANGS:
        for name in DECKS:
            html = (built / lang / f"{name}.html").read_text(encoding="utf-8")
            fetched = re.findall(r"""(?:src|href)=["'](https?:[^"']+)""", html)
            fetched += re.findall(r"""url\(["']?(https?:[^)"']+)""", html)
            assert not fetched, f"{lang}/{name}.html loads {fetched[:3]}"


@pytest.fixture(scope="module")
def browser():
    chromedriver = shutil.which("chromedriver")
    if not chromedriver:
        pytest.skip("no chromedriver: apt-get install chromium-driver (Debian/Ubuntu)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = slides.chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-default-apps", "--disable-sync",
                 "--no-first-run", "--window-size=1280,720"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


GLYPH_CHECK = """
const done = arguments[arguments.length - 1];
document.fonts.ready.then(async () => {
  const chars = arguments[0];
  const faces = await document.fonts.load('32px "Noto Sans SC"', chars);
  const canvas = document.createElement('canvas').getContext('2d');
  canvas.font = '32px "Noto Sans SC", labkit-no-fallback';
  // Chinese inside code (inline or a block's comments) is drawn with the code's own font stack
  const code = [...document.querySelectorAll('section code')].find(e => /[\u4e00-\u9fff]/.test(e.textContent));
  const anyCode = document.querySelector('section code');
  let codeWidths = [];
  if (code) {
    const family = getComputedStyle(code).fontFamily;
    const codeChars = code.textContent.match(/[\u4e00-\u9fff]/g).slice(0, 4).join('');
    await document.fonts.load('32px ' + family, codeChars);
    canvas.font = '32px ' + family;
    codeWidths = [...codeChars].map(c => canvas.measureText(c).width);
  }
  done({faces: faces.length, widths: [...chars].map(c => canvas.measureText(c).width), codeWidths,
        codeFamily: anyCode ? getComputedStyle(anyCode).fontFamily : null,
        checked: document.fonts.check('32px "Noto Sans SC"', chars),
        slides: document.querySelectorAll('svg[data-marpit-svg] > foreignObject > section').length});
});
"""


def test_each_deck_opens_in_chromium_with_its_slides_no_requests_out_no_errors_and_real_cjk_glyphs(built, browser):
    shots = REPO / "build" / "slides" / "screenshots"
    for lang in slides.LANGS:
        (shots / lang).mkdir(parents=True, exist_ok=True)
        for name in DECKS:
            deck = slides.deck(name, lang)
            browser.get_log("performance")   # forget the previous page's traffic
            browser.get((built / lang / f"{name}.html").as_uri())
            sample = "".join(dict.fromkeys(re.findall(r"[\u4e00-\u9fff]", deck.title)))[:4] or "Ray"
            found = browser.execute_async_script(GLYPH_CHECK, sample)
            assert found["slides"] == len(deck.slides), f"{lang}/{name}: {found['slides']} slides in the page"
            assert found["faces"] >= 1 and found["checked"], f"{lang}/{name}: the bundled font did not load"
            # a CJK glyph of Noto Sans SC is a full em wide (32 px at 32 px); with no CJK font the
            # browser drew a fallback about 12 px wide here
            least = 28 if lang == "zh" else 1
            assert all(w >= least for w in found["widths"]), f"{lang}/{name}: glyphs of {sample!r}: {found['widths']}"
            # code falls back to the bundled font for Chinese (Marp's code fonts have none: boxes)
            assert found["codeFamily"] is None or "Noto Sans SC" in found["codeFamily"], found["codeFamily"]
            assert all(w >= 28 for w in found["codeWidths"]), f"{lang}/{name}: Chinese in code: {found['codeWidths']}"
            requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
            urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
            outside = [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))]
            assert not outside, f"{lang}/{name} asked the network for {outside[:3]}"
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, f"{lang}/{name}: console errors {errors[:3]}"
            browser.save_screenshot(str(shots / lang / f"{name}.png"))
            assert (shots / lang / f"{name}.png").stat().st_size > 5000


def test_a_chinese_glyph_in_the_bundled_font_has_width():
    """The font file itself, read with fontTools: the glyph for 池 exists and is not empty."""
    from fontTools.ttLib import TTFont

    modules = _tools()
    rule = slides.font_faces("池", modules, weights=(400,)).split("@font-face")[-1]
    ranges = re.search(r"unicode-range:([^;]+);", rule).group(1)
    css = (modules / slides.FONT_PACKAGE / "400.css").read_text(encoding="utf-8")
    woff = re.search(r"url\(\./files/([^)]+)\.woff2\)[^;]*;\s*unicode-range:\s*" + re.escape(ranges), css).group(1)
    font = TTFont(io.BytesIO((modules / slides.FONT_PACKAGE / "files" / f"{woff}.woff").read_bytes()))
    glyph = font.getBestCmap()[ord("池")]
    width, _ = font["hmtx"][glyph]
    assert width > 0 and font["glyf"][glyph].numberOfContours > 0


# --- the course site --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(built, tmp_path_factory) -> Path:
    from labkit.site import build

    out = tmp_path_factory.mktemp("site")
    build(out_dir=out, slides_dir=built, executed=REPO / "build" / "notebooks")
    return out


def _local_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [t for t in re.findall(r'(?:href|src)="([^"]+)"', text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:|^#|^//", t)]


def test_the_site_links_every_deck_and_lab_in_both_languages_and_every_link_resolves(site):
    from labkit.bilingual import all_labs

    front = _local_links(site / "index.html")
    for lang in slides.LANGS:
        for name in DECKS:
            assert f"slides/{lang}/{name}.html" in front and f"slides/{lang}/{name}.pdf" in front
        for lab in all_labs():
            assert f"notebooks/{lang}/{lab.en.stem}.html" in front
    assert {"docs/agenda.html", "docs/agenda.zh-CN.html", "infra/README.html", "docs/benchmarks.html"} <= set(front)
    pages = [p for p in site.rglob("*.html") if "slides" not in p.relative_to(site).parts[:1]]
    assert len(pages) > 30
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        broken += [f"{page.relative_to(site)}: {m}" for m in re.findall(r'"#missing-([^"]+)"', text)]
        for link in _local_links(page):
            target = (page.parent / link.partition("#")[0]).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(site)} -> {link}")
    assert not broken, broken[:10]


def test_a_lab_page_shows_a_ci_runs_outputs_when_there_was_one(site):
    zh = (site / "notebooks" / "zh" / "01_text_generation.html").read_text(encoding="utf-8")
    assert "问中文，答中文？" in zh and "只读" in zh
    ran = REPO / "build" / "notebooks" / "en" / "01_text_generation.ipynb"
    if not ran.is_file():
        pytest.skip("no executed lab 01 in build/notebooks/en: the notebook tests leave one there")
    en = (site / "notebooks" / "en" / "01_text_generation.html").read_text(encoding="utf-8")
    assert "Outputs are from a CI run" in en and "data:image/png;base64" in en and "✅ 01.top_p" in en
    assert "输出来自 CI" in zh and "✅ 01.top_p" in zh


def test_the_site_opens_from_file_urls_without_network_or_console_errors(site, browser):
    for rel in ("index.html", "docs/benchmarks.html", "notebooks/zh/05_ray_batch_inference.html",
                "docs/agenda.zh-CN.html"):
        browser.get_log("performance")
        browser.get((site / rel).as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
        assert not [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))], (rel, urls[:5])
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"], rel
        if "zh" in rel:
            found = browser.execute_async_script(GLYPH_CHECK, "批处理")
            assert found["faces"] >= 1 and all(w >= 28 for w in found["widths"]), (rel, found)
