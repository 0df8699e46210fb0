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


def test_a_solution_is_judged_by_the_rule_its_exercise_registered(capsys):
    from labkit.exercises import must_fail

    check("r.sum", ..., expected=4, rel_tol=0.1, hint="add them")
    assert check("r.sum", 4.3, strict=True)  # within the exercise's own 10 %
    with pytest.raises(AssertionError, match="no longer passes"):
        check("r.sum", 5, strict=True)
    must_fail("r.sum", 3)
    with pytest.raises(AssertionError, match="accepts the wrong answer 4.2"):
        must_fail("r.sum", 4.2)
    assert "🧪 r.sum: a wrong answer (3) is refused" in capsys.readouterr().out


def test_a_solution_without_its_exercise_cell_says_what_to_run():
    with pytest.raises(ValueError, match="run its exercise cell"):
        check("never.registered", 1, strict=True)
