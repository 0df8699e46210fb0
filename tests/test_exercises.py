import pytest

from labkit.exercises import check


def test_correct_wrong_and_unanswered(capsys):
    assert check("a", 4, expected=4) is True
    assert check("b", 5, expected=4, hint="add them") is False
    assert check("c", ..., expected=4) is False
    out = capsys.readouterr().out
    assert "✅ a" in out and "❌ b" in out and "Hint: add them" in out and "not answered yet" in out


def test_numbers_compare_with_tolerance_and_bools_strictly():
    assert check("f", 0.1 + 0.2, expected=0.3)
    assert not check("g", 1, expected=True)


def test_custom_test_and_answers_that_break_it():
    assert check("t", (1, 1), test=lambda p: p[0] == p[1])
    assert not check("u", 3, test=lambda p: p[0] == p[1])  # int is not subscriptable: feedback, no crash


def test_strict_mode_raises_for_solutions():
    with pytest.raises(AssertionError, match="no longer passes"):
        check("s", 1, expected=2, strict=True)
    with pytest.raises(AssertionError, match="not answered"):
        check("s", None, expected=2, strict=True)
