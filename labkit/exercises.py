"""Friendly auto-checks for notebook exercises.

An exercise cell ends with ``check(...)``. An unanswered exercise (``None`` or ``...``) gets a
nudge rather than an error, so a notebook always runs top to bottom; a wrong answer gets the hint.
Solution cells call ``check(..., strict=True)`` so that CI fails if a solution stops working.

Example:
    >>> check("demo", 4, expected=2 + 2)
    ✅ demo: correct!
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from labkit.i18n import tr


def check(name: str, answer: Any, *, expected: Any = None, test: Callable[[Any], bool] | None = None,
          hint: str = "", rel_tol: float = 1e-6, strict: bool = False) -> bool:
    """Compare ``answer`` with ``expected`` (or pass it to ``test``), print feedback, return the verdict.

    Numbers compare with ``rel_tol``; everything else with ``==``. ``strict=True`` raises
    AssertionError on anything but a correct answer.
    """
    if answer is None or answer is Ellipsis:
        print(f"✏️  {name}: " + tr("not answered yet. Replace the ... above with your answer and run the cell again.",
                                  "还没有作答。把上面的 ... 换成你的答案，再运行这个单元格。")
              + (f"\n   {tr('Hint', '提示')}: {hint}" if hint else ""))
        if strict:
            raise AssertionError(f"exercise {name!r} was not answered")
        return False
    try:
        ok = bool(test(answer)) if test is not None else _same(answer, expected)
    except Exception as exc:  # a broken answer is feedback, not a crash
        ok, hint = False, tr(f"checking your answer raised {type(exc).__name__}: {exc}. {hint}",
                             f"检查你的答案时出错 {type(exc).__name__}: {exc}。{hint}")
    if ok:
        print(f"✅ {name}: " + tr("correct!", "答对了！"))
    else:
        shown = tr(f" (expected {expected!r})", f"（应为 {expected!r}）") if strict and test is None else ""
        print(f"❌ {name}: " + tr(f"not quite, you gave {answer!r}{shown}.", f"还不对，你的答案是 {answer!r}{shown}。")
              + (f"\n   {tr('Hint', '提示')}: {hint}" if hint else ""))
        if strict:
            raise AssertionError(f"exercise {name!r}: the solution no longer passes its check")
    return ok


def _same(answer: Any, expected: Any) -> bool:
    if isinstance(answer, bool) or isinstance(expected, bool):
        return answer is expected
    if isinstance(answer, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(answer, expected, rel_tol=1e-6, abs_tol=1e-9)
    return answer == expected
