"""Friendly auto-checks for notebook exercises, and proof that each check can fail.

An exercise cell ends with ``check(name, answer, expected=... or test=...)``: that call both
judges the answer and registers how ``name`` is judged. An unanswered exercise (``None`` or
``...``) gets a nudge rather than an error, so a notebook always runs top to bottom; a wrong answer
gets the hint (which points the way and never is the answer).

The hidden solution cell judges its answer by the *same* rule, ``check(name, value, strict=True)``
with no ``expected``/``test`` of its own, so a solution can never be compared with itself, and CI
fails if a solution stops passing. The solution cell's metadata lists wrong answers
(``{"labkit": {"wrong_answers": ["1120.0"]}}``: Python expressions, kept out of sight of attendees);
``labkit run-notebooks --probe-exercises`` (what the tests run) adds a cell after each solution that
calls ``must_fail`` on each, so a check that accepts anything fails the run.

Example:
    >>> check("demo", 4, expected=2 + 2)
    ✅ demo: correct!
    True
    >>> check("demo", 4, strict=True)   # the solution, judged by the rule registered above
    ✅ demo: correct!
    True
    >>> must_fail("demo", 5)
    🧪 demo: a wrong answer (5) is refused, as it should be.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labkit.i18n import tr


@dataclass(frozen=True)
class Rule:
    """How one exercise is judged."""
    expected: Any = None
    test: Callable[[Any], bool] | None = None
    rel_tol: float = 1e-6
    hint: str = ""

    def accepts(self, answer: Any) -> bool:
        if self.test is not None:
            return bool(self.test(answer))
        return _same(answer, self.expected, self.rel_tol)


RULES: dict[str, Rule] = {}     # name -> rule, registered by the exercise cell's check(...)
VERDICTS: dict[str, bool] = {}  # name -> the latest verdict


def check(name: str, answer: Any, *, expected: Any = None, test: Callable[[Any], bool] | None = None,
          hint: str = "", rel_tol: float = 1e-6, strict: bool = False) -> bool:
    """Judge ``answer`` (against ``expected`` or by ``test``), print feedback, return the verdict.

    Numbers compare with ``rel_tol``; everything else with ``==``. Without ``expected`` and
    ``test`` the rule registered earlier under ``name`` is used. ``strict=True`` (solutions) raises
    AssertionError on anything but a correct answer.
    """
    if expected is not None or test is not None:
        RULES[name] = Rule(expected, test, rel_tol, hint)
    rule = RULES.get(name)
    if rule is None:
        raise ValueError(tr(f"exercise {name!r} has no rule yet: run its exercise cell (above) first",
                            f"练习 {name!r} 还没有判分规则：请先运行上面的练习单元格"))
    hint = hint or rule.hint
    if answer is None or answer is Ellipsis:
        print(f"✏️  {name}: " + tr("not answered yet. Replace the ... above with your answer and run the cell again.",
                                  "还没有作答。把上面的 ... 换成你的答案，再运行这个单元格。")
              + (f"\n   {tr('Hint', '提示')}: {hint}" if hint else ""))
        VERDICTS[name] = False
        if strict:
            raise AssertionError(f"exercise {name!r} was not answered")
        return False
    try:
        ok = rule.accepts(answer)
    except Exception as exc:  # a broken answer is feedback, not a crash
        ok, hint = False, tr(f"checking your answer raised {type(exc).__name__}: {exc}. {hint}",
                             f"检查你的答案时出错 {type(exc).__name__}: {exc}。{hint}")
    VERDICTS[name] = ok
    if ok:
        print(f"✅ {name}: " + tr("correct!", "答对了！"))
    else:
        shown = ""
        if strict and rule.test is None:
            shown = tr(f" (expected {rule.expected!r})", f"（应为 {rule.expected!r}）")
        print(f"❌ {name}: " + tr(f"not quite, you gave {answer!r}{shown}.", f"还不对，你的答案是 {answer!r}{shown}。")
              + (f"\n   {tr('Hint', '提示')}: {hint}" if hint else ""))
        if strict:
            raise AssertionError(f"exercise {name!r}: the solution no longer passes its check")
    return ok


def must_fail(name: str, wrong_answer: Any) -> None:
    """Raise AssertionError if exercise ``name``'s rule accepts ``wrong_answer`` (a check that cannot fail)."""
    rule = RULES.get(name)
    if rule is None:
        raise AssertionError(f"exercise {name!r} has no rule: its exercise cell never called check(..., expected/test)")
    try:
        accepted = rule.accepts(wrong_answer)
    except Exception:  # noqa: BLE001 - an answer the rule cannot even evaluate is refused
        accepted = False
    if accepted:
        raise AssertionError(f"exercise {name!r}: its check accepts the wrong answer {wrong_answer!r}")
    print(f"🧪 {name}: " + tr(f"a wrong answer ({_short(wrong_answer)}) is refused, as it should be.",
                             f"错误答案（{_short(wrong_answer)}）被判为错误，符合预期。"))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(answer: Any, expected: Any, rel_tol: float = 1e-6) -> bool:
    if isinstance(answer, bool) or isinstance(expected, bool):
        return answer is expected
    if isinstance(answer, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(answer, expected, rel_tol=rel_tol, abs_tol=1e-9)
    return answer == expected
