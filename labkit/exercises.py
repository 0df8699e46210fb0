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


def check(name: str, answer: Any, *, expected: Any = None, test: Callable[[Any], bool] | None = None,
          hint: str = "", rel_tol: float = 1e-6, strict: bool = False) -> bool:
    """Compare ``answer`` with ``expected`` (or pass it to ``test``), print feedback, return the verdict.

    Numbers compare with ``rel_tol``; everything else with ``==``. ``strict=True`` raises
    AssertionError on anything but a correct answer.
    """
    if answer is None or answer is Ellipsis:
        print(f"✏️  {name}: not answered yet. Replace the ... above with your answer and run the cell again."
              + (f"\n   Hint: {hint}" if hint else ""))
        if strict:
            raise AssertionError(f"exercise {name!r} was not answered")
        return False
    try:
        ok = bool(test(answer)) if test is not None else _same(answer, expected)
    except Exception as exc:  # a broken answer is feedback, not a crash
        ok, hint = False, f"checking your answer raised {type(exc).__name__}: {exc}. {hint}"
    if ok:
        print(f"✅ {name}: correct!")
    else:
        shown = f" (expected {expected!r})" if strict and test is None else ""
        print(f"❌ {name}: not quite, you gave {answer!r}{shown}." + (f"\n   Hint: {hint}" if hint else ""))
        if strict:
            raise AssertionError(f"exercise {name!r}: the solution no longer passes its check")
    return ok


def _same(answer: Any, expected: Any) -> bool:
    if isinstance(answer, bool) or isinstance(expected, bool):
        return answer is expected
    if isinstance(answer, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(answer, expected, rel_tol=1e-6, abs_tol=1e-9)
    return answer == expected
