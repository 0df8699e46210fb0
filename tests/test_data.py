import pytest

from labkit.data import read_prompts


def test_shipped_prompts_are_bilingual_and_well_formed():
    rows = read_prompts("chat_prompts_mini")
    assert len(rows) == 24 and {r["lang"] for r in rows} == {"en", "zh"}
    assert len({r["id"] for r in rows}) == len(rows)


@pytest.mark.parametrize("line, match", [
    ('{"id": 1, "prompt": "ok"}\n{oops', ":2: not valid JSON"),
    ('{"prompt": "no id"}', ":1: each line must be an object with an 'id'"),
    ('{"id": 1, "prompt": "  "}', ":1: 'prompt' must be a non-empty string"),
    ('{"id": 1, "prompt": 7}', ":1: 'prompt' must be a non-empty string"),
    ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}', ":2: duplicate id 1"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, line, match):
    path = tmp_path / "p.jsonl"
    path.write_text(line)
    with pytest.raises(ValueError, match=match):
        read_prompts(path)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="chat_prompts_mini"):
        read_prompts("nope")


def test_prompts_500_is_big_bilingual_and_varied():
    rows = read_prompts("prompts_500")
    assert len(rows) == 500 and {r["lang"] for r in rows} == {"en", "zh"}
    lengths = sorted(len(r["prompt"]) for r in rows)
    assert lengths[0] < 20 and lengths[-1] > 200, "short and long prompts both"


def test_prompts_500_regenerates_byte_for_byte(tmp_path, monkeypatch):
    import importlib.util

    from labkit.data import datasets_dir

    folder = datasets_dir() / "prompts_500"
    spec = importlib.util.spec_from_file_location("make_prompts", folder / "make_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    for name in ("prompts.jsonl", "bad_rows.jsonl"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes()


def test_every_bad_row_is_rejected_with_its_line(tmp_path):
    from labkit.data import datasets_dir

    lines = (datasets_dir() / "prompts_500" / "bad_rows.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 7
    for i, line in enumerate(lines):
        if "bad-long" in line:
            continue  # well-formed but too long for the model: the batch lab catches it, not the reader
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(line, encoding="utf-8")
        with pytest.raises(ValueError, match=":1: "):
            read_prompts(path)


def test_workshop_qa_is_bilingual_signed_off_and_its_eval_questions_are_held_out():
    from labkit.data import read_instructions

    train, held_out = read_instructions("workshop_qa"), read_instructions("workshop_qa", split="eval")
    assert len(train) >= 60 and len(held_out) >= 20
    for rows in (train, held_out):
        assert {r["lang"] for r in rows} == {"en", "zh"}
        assert all(r["response"].endswith("— labkit TA" if r["lang"] == "en" else "—— labkit 助教") for r in rows)
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in held_out}


def test_the_sign_off_rate_counts_replies_whose_last_line_signs_off():
    from labkit.data import read_instructions, sign_off_rate

    held_out = read_instructions("workshop_qa", split="eval")
    assert sign_off_rate([r["response"] for r in held_out]) == 1.0  # the references all sign off
    assert sign_off_rate([r["instruction"] for r in held_out]) == 0.0  # the questions never do
    assert sign_off_rate(["一个回答。\n—— labkit 助教  ", "— labkit TA, then more text", ""]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least one reply"):
        sign_off_rate([])


def test_instruction_rows_need_both_fields(tmp_path):
    from labkit.data import read_instructions

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "instruction": "q", "response": "r"}\n{"id": "b", "instruction": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'response' must be a non-empty string"):
        read_instructions(bad)
