"""Every lab notebook follows the house conventions and runs end to end (smoke mode) via papermill."""

from __future__ import annotations

import json
import re
import shutil

import nbformat
import pytest
from conftest import REPO, run_cli

NOTEBOOKS = sorted((REPO / "notebooks" / "en").glob("[0-9][0-9]*_*.ipynb"))


def test_the_foundation_labs_exist():
    assert {p.name for p in NOTEBOOKS} >= {"00_setup_check.ipynb", "01_text_generation.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0].source
    assert first.startswith("# ") and "Expected time" in first and "You will" in first
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and all(f"\n{p} =" in "\n" + params[0].source for p in ("profile", "smoke", "lang"))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert nb.metadata.kernelspec.name == "labkit"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_lab_has_two_to_four_exercises_each_with_a_hidden_solution_and_wrong_answers(path):
    """An exercise registers its rule in its own cell; its hidden solution is judged by that same rule
    (no expected= or test= of its own, so it cannot be compared with itself) and records wrong
    answers that the smoke run feeds to the rule (``--probe-exercises``)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    exercises = _exercise_names(nb)
    assert 2 <= len(exercises) <= 4, f"{path.name} has {len(exercises)} exercises: {exercises}"
    solutions = {}
    for c in code:
        if "solution" in c.metadata.get("tags", []):
            assert c.metadata.get("jupyter", {}).get("source_hidden"), "solutions stay hidden until asked for"
            calls = re.findall(r"""check\(\s*["']([^"']+)["'](.*?)\)\s*;?\s*$""", c.source, re.DOTALL | re.MULTILINE)
            assert len(calls) == 1, f"one check per solution cell:\n{c.source}"
            name, rest = calls[0]
            assert "strict=True" in rest and "expected=" not in rest and "test=" not in rest, c.source
            assert c.metadata.get("labkit", {}).get("wrong_answers"), f"{name}: record wrong answers"
            solutions[name] = c
    assert sorted(solutions) == sorted(exercises), "every exercise has exactly one solution, and no more"


def _exercise_names(nb) -> list[str]:
    return [name for c in nb.cells if c.cell_type == "code" and "solution" not in c.metadata.get("tags", [])
            for name in re.findall(r"""check\(\s*["']([^"']+)["']""", c.source)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_lab_runs_end_to_end_in_smoke_mode(path, tmp_path, chat_model_path):
    """Through ``labkit run-notebooks``, as CI and instructors run it; one test per lab, so a failure
    names its lab and the labs can be spread over test workers. A cell that hangs is interrupted at
    10 minutes, so the report shows where. The Chinese labs run the same code token for token
    (test_bilingual), so each lab runs once, in English; lab 00 also runs in Chinese below."""
    out = run_cli("run-notebooks", str(path), "--smoke", "--profile", "cpu", "--output-dir", str(tmp_path),
                  "--timeout", "600", "--probe-exercises", timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and summary["smoke"] and summary["profile"] == "cpu"
    assert [(r["notebook"], r["status"]) for r in summary["results"]] == [(path.name, "ok")]
    assert f"| {path.name} | ok |" in (tmp_path / "summary.md").read_text()
    executed = nbformat.read(tmp_path / path.name, as_version=4)
    # kept for the course site (labkit.site shows each lab with this run's outputs)
    (REPO / "build" / "notebooks" / "en").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / path.name, REPO / "build" / "notebooks" / "en" / path.name)
    text = json.dumps([c.get("outputs") for c in executed.cells if c.cell_type == "code"], ensure_ascii=False)
    for name in _exercise_names(nbformat.read(path, as_version=4)):
        assert f"✏️  {name}: not answered yet" in text, "an exercise left as ... is a nudge, not an error"
        assert f"✅ {name}: correct!" in text, f"the solution of {name} passes the exercise's own rule"
        assert f"🧪 {name}: a wrong answer" in text, f"the rule of {name} refuses its recorded wrong answers"
    if path.name == "01_text_generation.ipynb":
        assert "image/png" in text, "the throughput plot should be drawn"


def test_the_first_lab_runs_in_chinese_and_answers_in_chinese(tmp_path, chat_model_path):
    path = REPO / "notebooks" / "zh" / "00_setup_check.ipynb"
    out = run_cli("run-notebooks", "--lang", "zh", str(path), "--smoke", "--profile", "cpu",
                  "--output-dir", str(tmp_path), "--timeout", "600", timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    executed = nbformat.read(tmp_path / path.name, as_version=4)
    text = json.dumps([c.get("outputs") for c in executed.cells if c.cell_type == "code"], ensure_ascii=False)
    assert "答对了" in text and "correct!" not in text


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "labkit", "display_name": "Python (labkit)", "language": "python"}
    params = nbformat.v4.new_code_cell("profile = None\nsmoke = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)
    return path


def test_a_failing_notebook_is_reported_and_the_rest_still_run(tmp_path):
    bad = _notebook(tmp_path / "a_bad.ipynb", "raise RuntimeError('lab broke on purpose')")
    good = _notebook(tmp_path / "b_good.ipynb", "assert smoke is True and profile == 'cpu'")
    out = run_cli("run-notebooks", str(bad), str(good), "--smoke", "--profile", "cpu",
                  "--output-dir", str(tmp_path / "out"))
    assert out.returncode == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["notebook"], r["status"]) for r in summary["results"]] == [("a_bad.ipynb", "failed"),
                                                                          ("b_good.ipynb", "ok")]
    assert "lab broke on purpose" in summary["results"][0]["error"]
    assert "1 passed, 1 failed" in (tmp_path / "out" / "summary.md").read_text()


def test_missing_kernel_or_notebook_is_a_clear_error(tmp_path):
    good = _notebook(tmp_path / "ok.ipynb", "pass")
    out = run_cli("run-notebooks", str(good), "--kernel", "no-such-kernel", "--output-dir", str(tmp_path))
    assert out.returncode == 2 and "ipykernel install" in out.stderr
    out = run_cli("run-notebooks", str(tmp_path / "nope.ipynb"), "--output-dir", str(tmp_path))
    assert out.returncode == 2 and "not found" in out.stderr
