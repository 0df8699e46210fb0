"""Varied captions for Shapes images, the way people describe them, in English and Chinese.

A text-to-image model follows the captions it was trained on and little else: the first shipped
checkpoint saw one template ("a large red circle in the centre on a white background") and drew
"a red circle" in the wrong colour most of the time. So the training captions here mention **any
subset** of an image's attributes, **in any sensible order**, with the common **synonyms and
spellings** (grey/gray, centre/center/middle, 中间/中央), occasionally a **typo**, and sometimes
**noise words** the model must learn to ignore. Attributes a caption leaves out are whatever the
image happens to show, so the model learns to vary them.

Noise words are random letter strings and rare Chinese characters (outside the GB2312 set of
common characters), never real filler words: the held-out prompt set
(``datasets/shapes_prompts``) asks "please draw ..." and "画一个 ..." to measure whether the
model ignores words it has never seen. No library makes captions for a synthetic dataset, hence
these word lists.

Example:
    >>> import random
    >>> from labkit.shapes import ShapeSpec
    >>> from labkit.shape_captions import varied_caption
    >>> spec = ShapeSpec("circle", "red", "small", "left", "white")
    >>> rng = random.Random(1)
    >>> [varied_caption(spec, rng, "en") for _ in range(2)]
    ['a red disk on the left, with a white background', 'the small red object']
    >>> varied_caption(spec, rng, "zh")
    '一个红色圆形,左侧,白背景上'
"""

from __future__ import annotations

import random
import string

from labkit.shapes import ShapeSpec

ATTRIBUTES = ("shape", "colour", "size", "position", "background")
# how often a caption mentions each attribute; shape and colour are what people type most
MENTION_PROB = {"shape": 0.85, "colour": 0.85, "size": 0.45, "position": 0.45, "background": 0.5}

EN = {
    "shape": {"circle": ["circle", "circle", "disc", "disk", "round shape"], "square": ["square", "square", "box"],
              "triangle": ["triangle"], "star": ["star", "star", "five-pointed star"]},
    "colour": {"red": ["red"], "green": ["green"], "blue": ["blue"], "yellow": ["yellow"],
               "purple": ["purple", "purple", "violet"], "orange": ["orange"]},
    "size": {"small": ["small", "small", "little", "tiny"], "large": ["large", "big", "big", "huge"]},
    "position": {
        "centre": ["in the centre", "in the center", "in the middle", "centred", "centered", "at the centre"],
        "left": ["on the left", "on the left side", "to the left", "at the left"],
        "right": ["on the right", "on the right side", "to the right", "at the right"],
        "top": ["at the top", "near the top", "on top", "in the upper part"],
        "bottom": ["at the bottom", "near the bottom", "in the lower part"],
    },
    "background": {"white": ["white"], "black": ["black"], "gray": ["gray", "grey"]},
}
EN_NOUN_WITHOUT_SHAPE = ["shape", "object", "thing"]
EN_BACKGROUND = ["on a {} background", "on a {} background", "against a {} background", "with a {} background",
                 "on {}", "{} background"]

ZH = {
    "shape": {"circle": ["圆形", "圆形", "圆", "圆圈"], "square": ["正方形", "正方形", "方形", "方块"],
              "triangle": ["三角形", "三角形", "三角"], "star": ["星形", "星形", "星星", "五角星"]},
    "colour": {"red": ["红色", "红色", "红"], "green": ["绿色", "绿色", "绿"], "blue": ["蓝色", "蓝色", "蓝"],
               "yellow": ["黄色", "黄色", "黄"], "purple": ["紫色", "紫色", "紫"],
               "orange": ["橙色", "橙色", "橙", "橘色"]},
    "size": {"small": ["小", "小", "小小的", "很小的"], "large": ["大", "大", "大大的", "很大的"]},
    "position": {"centre": ["中间", "中间", "中央", "正中间", "中心"], "left": ["左边", "左边", "左侧", "左面"],
                 "right": ["右边", "右边", "右侧", "右面"], "top": ["上方", "上方", "上面", "顶部"],
                 "bottom": ["下方", "下方", "下面", "底部"]},
    "background": {"white": ["白色", "白色", "白"], "black": ["黑色", "黑色", "黑"], "gray": ["灰色", "灰色", "灰"]},
}
ZH_NOUN_WITHOUT_SHAPE = ["图形", "形状", "东西"]
ZH_BACKGROUND = ["{}背景上", "{}背景", "背景是{}", "在{}背景上", "{}底"]


def _mentioned(rng: random.Random) -> set[str]:
    chosen = {a for a in ATTRIBUTES if rng.random() < MENTION_PROB[a]}
    return chosen or {rng.choice(("shape", "colour"))}


def _pick(rng: random.Random, table: dict, attribute: str, spec: ShapeSpec) -> str:
    return rng.choice(table[attribute][getattr(spec, attribute)])


def _english(spec: ShapeSpec, said: set[str], rng: random.Random) -> str:
    noun = _pick(rng, EN, "shape", spec) if "shape" in said else rng.choice(EN_NOUN_WITHOUT_SHAPE)
    size = _pick(rng, EN, "size", spec) if "size" in said else ""
    colour = _pick(rng, EN, "colour", spec) if "colour" in said else ""
    if colour and rng.random() < 0.2:  # "a circle in red", "a small square coloured blue"
        words = [size, noun, rng.choice(["in", "coloured", "colored"]), colour]
    else:
        words = [size, colour, noun]
    phrase = " ".join(w for w in words if w)
    if colour and not ({"shape", "size"} & said) and rng.random() < 0.5:
        phrase = colour  # just "red", or "something red"
        if rng.random() < 0.5:
            phrase = f"something {colour}"
    det = rng.choice(["a", "a", "a", "one", "the", ""])
    if det == "a" and phrase[0] in "aeiou":
        det = "an"
    phrase = f"{det} {phrase}".strip()
    extras = []
    if "position" in said:
        extras.append(_pick(rng, EN, "position", spec))
    if "background" in said:
        extras.append(rng.choice(EN_BACKGROUND).format(_pick(rng, EN, "background", spec)))
    rng.shuffle(extras)
    before = [e for e in extras if rng.random() < 0.25]  # "on a white background, a red circle"
    after = [e for e in extras if e not in before]  # "a red circle on the left, on white"
    text = phrase
    if after:
        text += " " + (", " if rng.random() < 0.3 else " ").join(after)
    if before:
        text = ", ".join(before) + ", " + text
    return text


def _chinese(spec: ShapeSpec, said: set[str], rng: random.Random) -> str:
    noun = _pick(rng, ZH, "shape", spec) if "shape" in said else rng.choice(ZH_NOUN_WITHOUT_SHAPE)
    size = _pick(rng, ZH, "size", spec) if "size" in said else ""
    colour = _pick(rng, ZH, "colour", spec) if "colour" in said else ""
    if size and len(size) == 1 and colour and rng.random() < 0.5:
        size += "的"
    if colour and rng.random() < 0.3:
        colour += "的"
    phrase = rng.choice(["", "", "一个"]) + size + colour + noun
    if colour and not ({"shape", "size"} & said) and rng.random() < 0.4:
        phrase = colour.rstrip("的") + "的"  # just "红色的"
    position = _pick(rng, ZH, "position", spec) if "position" in said else ""
    background = rng.choice(ZH_BACKGROUND).format(_pick(rng, ZH, "background", spec)) if "background" in said else ""
    comma = rng.choice(["，", "，", ",", " "])
    if rng.random() < 0.5:  # modifiers first: "白色背景上左边的小红色圆形"
        where = ""
        if background:
            where += background if background.endswith("上") or not position else background + comma
        if position:
            where += rng.choice(["", "在"]) + position
        text = f"{where}的{phrase}" if where and not where.endswith(comma) else where + phrase
    else:  # thing first: "红色圆形，在左边，白色背景"
        parts = [phrase]
        if position:
            parts.append(rng.choice(["在", "位于", ""]) + position)
        if background:
            parts.append(background)
        head, *rest = parts
        rng.shuffle(rest)
        text = comma.join([head, *rest])
    return text


def _typo(word: str, rng: random.Random) -> str:
    """One slip of the fingers: two letters swapped, one dropped or one doubled."""
    i = rng.randrange(len(word) - 1)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def noise_word(rng: random.Random, lang: str) -> str:
    """A word no user types: random letters, or rare CJK characters (not in GB2312's common set)."""
    if lang == "en":
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 9)))
    chars = []
    while len(chars) < rng.randint(1, 3):
        ch = chr(rng.randint(0x4E00, 0x9FA5))
        try:
            ch.encode("gb2312")
        except UnicodeEncodeError:
            chars.append(ch)
    return "".join(chars)


def varied_caption(spec: ShapeSpec, rng: random.Random, lang: str, *, typo_prob: float = 0.04,
                   noise_prob: float = 0.2) -> str:
    """One caption of ``spec`` mentioning a random subset of its attributes, in ``lang`` ('en'/'zh')."""
    if lang not in ("en", "zh"):
        raise ValueError(f"unknown language {lang!r}: use 'en' or 'zh'")
    said = _mentioned(rng)
    text = _english(spec, said, rng) if lang == "en" else _chinese(spec, said, rng)
    if lang == "en" and rng.random() < typo_prob:
        words = text.split(" ")
        long_words = [i for i, w in enumerate(words) if len(w) >= 4]
        if long_words:
            i = rng.choice(long_words)
            words[i] = _typo(words[i], rng)
            text = " ".join(words)
    if rng.random() < noise_prob:  # words to ignore, mostly in front ("please draw ...")
        sep = " " if lang == "en" else ""
        for _ in range(rng.randint(1, 3)):
            words = text.split(" ") if lang == "en" else [text]
            noise = noise_word(rng, lang)
            if lang == "en":
                words.insert(0 if rng.random() < 0.6 else rng.randrange(len(words) + 1), noise)
                text = sep.join(words)
            else:
                text = noise + text if rng.random() < 0.6 else text + noise
    if rng.random() < 0.1:
        text += rng.choice([".", "!"] if lang == "en" else ["。", "！"])
    if lang == "en" and rng.random() < 0.15:
        text = text[0].upper() + text[1:]
    return text


def caption_vocabulary() -> tuple[list[str], list[str]]:
    """Every English word and Chinese phrase the captions use, for building the tokenizer.

    Built from the word lists, never from sampled captions, so noise words and typos stay out of
    the vocabulary: the model sees them as the byte pieces an unseen word would be.
    """
    en_words = {"a", "an", "one", "the", "in", "coloured", "colored", "something", "on", "against", "with",
                "background", *EN_NOUN_WITHOUT_SHAPE}
    zh_text = set(ZH_NOUN_WITHOUT_SHAPE) | {b.format("") for b in ZH_BACKGROUND} | {"一个", "的", "在", "位于"}
    for attribute in ATTRIBUTES:
        for options in EN[attribute].values():
            for option in options:
                en_words.update(option.replace("-", " ").split())
        for options in ZH[attribute].values():
            zh_text.update(options)
    return sorted(w for w in en_words if " " not in w), sorted(zh_text)
