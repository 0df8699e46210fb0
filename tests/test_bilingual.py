"""The labs in two languages: one source, catalogues that keep up with it, builds that stay parallel."""

from __future__ import annotations

import nbformat
import pytest
import yaml
from conftest import REPO, run_cli

from labkit import bilingual, i18n
from labkit.exercises import check

LABS = bilingual.all_labs(REPO / "notebooks")


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.en.stem)
def test_each_chinese_lab_is_the_build_of_its_source_and_parallel_to_it(lab):
    """Fails when a section, exercise, code cell or parameter exists in one language only, when the
    English changed since its translation, or when notebooks/zh was edited by hand."""
    assert bilingual.check_lab(lab) == []


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.en.stem)
def test_the_chinese_labs_read_in_chinese(lab):
    zh = nbformat.read(lab.zh, as_version=4)
    first = zh.cells[0].source
    assert first.startswith("# ") and "预计用时" in first and "你将" in first
    prose = [c.source for c in zh.cells if c.cell_type == "markdown"]
    cjk = [sum("\u4e00" <= ch <= "\u9fff" for ch in text) for text in prose]
    assert all(n > 0 for n in cjk), "every markdown cell of a Chinese lab has Chinese in it"
    params = next(c for c in zh.cells if "parameters" in c.metadata.get("tags", []))
    assert 'lang = "zh"' in params.source


def _lab(root, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "labkit", "display_name": "Python (labkit)", "language": "python"}
    nb.cells = cells
    path = root / "en" / "99_demo.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return bilingual.lab_paths(path, root)


def _demo(root):
    params = nbformat.v4.new_code_cell('profile = None\nsmoke = False\nlang = "en"  # "zh" for Chinese')
    params.metadata["tags"] = ["parameters"]
    return _lab(root, [nbformat.v4.new_markdown_cell("# Demo\n\n**Expected time:** 5 minutes"), params,
                       nbformat.v4.new_markdown_cell("## 1. Batching"),
                       nbformat.v4.new_code_cell("x = 2 + 2  # add them\ncheck('demo.sum', x, expected=4)")])


def _translate(lab, **override):
    entries = yaml.safe_load(lab.catalog.read_text(encoding="utf-8"))
    zh = {"# Demo\n\n**Expected time:** 5 minutes": "# 演示\n\n**预计用时：** 5 分钟",
          '# "zh" for Chinese': "# 设为 \"zh\" 即为中文", "## 1. Batching": "## 1. 批处理（batching）",
          "# add them": "# 相加", **override}
    for e in entries:
        e["zh"] = zh.get(e["en"], e["zh"])
    lab.catalog.write_text(yaml.safe_dump(entries, allow_unicode=True), encoding="utf-8")


def test_build_replaces_prose_and_comments_and_nothing_else(tmp_path):
    lab = _demo(tmp_path)
    counts = bilingual.update_catalog(lab.en, lab.catalog)
    assert counts == {"translated": 0, "missing": 4, "dropped": 0}
    with pytest.raises(bilingual.TranslationError, match="4 text.*labkit translate update"):
        bilingual.build(lab.en)
    _translate(lab)
    built = bilingual.build(lab.en, write=True)
    assert [c.source for c in built.cells] == [
        "# 演示\n\n**预计用时：** 5 分钟", 'profile = None\nsmoke = False\nlang = "zh"  # 设为 "zh" 即为中文',
        "## 1. 批处理（batching）", "x = 2 + 2  # 相加\ncheck('demo.sum', x, expected=4)"]
    assert bilingual.check_lab(lab) == []


def test_a_changed_source_makes_its_translation_stale_until_updated(tmp_path):
    lab = _demo(tmp_path)
    bilingual.update_catalog(lab.en, lab.catalog)
    _translate(lab)
    bilingual.build(lab.en, write=True)
    nb = nbformat.read(lab.en, as_version=4)
    nb.cells[2].source = "## 1. Batching requests"
    nbformat.write(nb, lab.en)
    assert "no Chinese yet (first: '## 1. Batching requests')" in bilingual.check_lab(lab)[0]
    counts = bilingual.update_catalog(lab.en, lab.catalog)
    assert counts == {"translated": 3, "missing": 1, "dropped": 1}
    _translate(lab, **{"## 1. Batching requests": "## 1. 把请求批在一起（batching）"})
    assert "out of date" in bilingual.check_lab(lab)[0]  # the committed zh is the old build
    bilingual.build(lab.en, write=True)
    assert bilingual.check_lab(lab) == []


def test_parity_names_what_exists_in_one_language_only(tmp_path):
    lab = _demo(tmp_path)
    bilingual.update_catalog(lab.en, lab.catalog)
    _translate(lab)
    en = nbformat.read(lab.en, as_version=4)
    zh = bilingual.build(lab.en)
    drifted = nbformat.from_dict(zh)
    drifted.cells[3].source = "x = 5  # 相加\ncheck('demo.sum', x, expected=4)"
    assert any("code cell 2 differs" in p for p in bilingual.check_parity(en, drifted))
    lost = nbformat.from_dict(zh)
    lost.cells[2].source = "批处理"  # the heading dropped in translation
    assert any(p.startswith("headings differ") for p in bilingual.check_parity(en, lost))
    fewer = nbformat.from_dict(zh)
    del fewer.cells[3]
    problems = bilingual.check_parity(en, fewer)
    assert any(p.startswith("cell_types differ") for p in problems)
    assert any(p.startswith("exercises differ") for p in problems)


def test_a_comment_translated_onto_two_lines_is_refused(tmp_path):
    lab = _demo(tmp_path)
    bilingual.update_catalog(lab.en, lab.catalog)
    _translate(lab, **{"# add them": "# 相加\nprint('oops')"})
    with pytest.raises(bilingual.TranslationError, match="one line starting with '#'"):
        bilingual.build(lab.en)


def test_the_cli_checks_every_lab_and_fails_on_a_stale_one(tmp_path):
    out = run_cli("translate", "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": ok") == len(LABS)
    out = run_cli("translate", "check", str(tmp_path / "en" / "00_nope.ipynb"))
    assert out.returncode == 1 and "missing" in out.stdout


def test_language_comes_from_the_parameter_else_the_environment(monkeypatch):
    monkeypatch.delenv("LABKIT_LANG", raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    try:
        i18n.set_language(None)
        assert i18n.language() == "zh"
        monkeypatch.setenv("LABKIT_LANG", "en")
        assert i18n.language() == "en"
        i18n.set_language("zh-CN")
        assert i18n.language() == "zh" and i18n.tr("a", "甲") == "甲"
        with pytest.raises(ValueError, match="use 'en'"):
            i18n.set_language("fr")
    finally:
        i18n.set_language("en")


def test_exercise_feedback_in_chinese(capsys):
    i18n.set_language("zh")
    try:
        check("demo", 4, expected=4)
        check("demo", 5, expected=4, hint=i18n.tr("add them", "把它们相加"))
        check("demo", ...)
    finally:
        i18n.set_language("en")
    out = capsys.readouterr().out
    assert "✅ demo: 答对了！" in out and "❌ demo: 还不对，你的答案是 5。" in out and "提示: 把它们相加" in out
    assert "还没有作答" in out and "correct" not in out


def test_doctor_speaks_chinese_when_asked():
    out = run_cli("doctor", "--lang", "zh", "--profile", "cpu")
    assert "labkit doctor: 可以开始实验了" in out.stdout or "发现必须先解决的问题" in out.stdout, out.stdout
