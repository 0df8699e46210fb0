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
