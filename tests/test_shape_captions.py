"""The training captions: truthful, varied, and never using the held-out set's filler words."""

from __future__ import annotations

import random
import re

import pytest

from labkit.shape_captions import EN, ZH, caption_vocabulary, varied_caption
from labkit.shape_checker import heldout_prompts
from labkit.shapes import ShapesDataset

DS = ShapesDataset(2_000, seed=5)


def _captions(n: int, lang: str, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    return [(DS.spec(i % len(DS)), varied_caption(DS.spec(i % len(DS)), rng, lang)) for i in range(n)]


def _said(caption: str, table: dict, attribute: str) -> set[str]:
    """The values of ``attribute`` whose words appear in ``caption`` (longest words first)."""
    text, found = caption.lower(), set()
    options = sorted(((w, v) for v, words in table[attribute].items() for w in words), key=lambda p: -len(p[0]))
    for word, value in options:
        pattern = rf"\b{re.escape(word)}\b" if table is EN else re.escape(word)
        if re.search(pattern, text):
            found.add(value)
            text = re.sub(pattern, " ", text)
    return found


@pytest.mark.parametrize("lang, table", [("en", EN), ("zh", ZH)])
def test_captions_never_name_an_attribute_the_image_does_not_have(lang, table):
    for spec, caption in _captions(3_000, lang):
        for attribute in ("colour", "shape", "background"):
            said = _said(caption, table, attribute)
            assert said <= {getattr(spec, attribute)}, (caption, spec)


@pytest.mark.parametrize("lang, table", [("en", EN), ("zh", ZH)])
def test_every_attribute_is_sometimes_said_and_sometimes_left_out(lang, table):
    captions = _captions(2_000, lang)
    for attribute in ("colour", "shape", "background", "size"):
        said = sum(bool(_said(c, table, attribute)) for _, c in captions) / len(captions)
        assert 0.2 < said < 0.95, (attribute, said)
    assert len({c for _, c in captions}) > 0.8 * len(captions), "captions should rarely repeat"


def test_heldout_filler_words_never_occur_in_training_captions():
    """The held-out set's filler words stay unseen: not in the vocabulary, not in 20,000 captions."""
    en_vocab, zh_vocab = caption_vocabulary()
    zh_chars = {ch for phrase in zh_vocab for ch in phrase}
    rows = [r for r in heldout_prompts() if r["kind"] == "filler"]
    en_fillers = {w for r in rows if r["lang"] == "en" for w in re.findall(r"[a-z]+", r["prompt"].lower())} - set(
        en_vocab)
    zh_fillers = {ch for r in rows if r["lang"] == "zh" for ch in r["prompt"] if 0x4E00 <= ord(ch) <= 0x9FFF} - zh_chars
    assert {"please", "draw", "picture"} <= en_fillers and {"画", "请", "帮"} <= zh_fillers
    seen_en = {w for _, c in _captions(10_000, "en", seed=1) for w in re.findall(r"[a-z]+", c.lower())}
    seen_zh = {ch for _, c in _captions(10_000, "zh", seed=2) for ch in c}
    assert not en_fillers & seen_en
    assert not zh_fillers & seen_zh


def test_heldout_rows_name_only_real_attribute_values():
    rows = heldout_prompts()
    assert len(rows) >= 120 and {r["lang"] for r in rows} == {"en", "zh"}
    values = {"colour": set(EN["colour"]), "shape": set(EN["shape"]), "size": set(EN["size"]),
              "position": set(EN["position"]), "background": set(EN["background"])}
    for row in rows:
        for attribute, allowed in values.items():
            assert row[attribute] is None or row[attribute] in allowed, row
        assert row["colour"] or row["shape"], row


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="use 'en' or 'zh'"):
        varied_caption(DS.spec(0), random.Random(0), "fr")
