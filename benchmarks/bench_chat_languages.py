"""Chat models in Chinese and English: speed per token, per character, and whether the reply is
in the language of the question.

Run with ``python benchmarks/bench_chat_languages.py`` (add ``--models qwen2.5-0.5b-instruct``
once it is pulled: ``HF_ENDPOINT=<mirror> labkit models pull qwen2.5-0.5b-instruct``, or
``--source modelscope``). Every model is in the store already; nothing is downloaded here.

The prompts are written below by hand, as an attendee would type them in the room; they are not
the kit's datasets, which served as inputs elsewhere. Each prompt is answered greedily at batch 1
(``max_new_tokens`` each), ``--repeats`` times in rotation over the models, after one warm-up
answer per model. For each model and language the table gives the medians over prompts and
repeats of:

- reply tokens/s (new tokens over the whole answer's time, prompt processing included),
- reply characters/s (what a reader sees: an English-centred tokenizer spends about two tokens
  on a Chinese character, so the same tokens/s shows half the text),
- prompt tokens per character (the tokenizer's cost for the language),
- the share of replies in the prompt's language (a Chinese reply: at least a third of its letters
  are CJK characters; an English one: none are),
- the share of usable replies: in the prompt's language, not starting by repeating the question,
  and not stuck in a loop (a piece of up to four characters five times in a row, "1.1.1.1.1.").
  This is a floor, not a judgement of quality: a usable reply can still be wrong.

Raw results and every reply go to ``runs/bench/chat_languages.json``; ``--plot`` draws
characters/s per model and language with the share of usable replies written on each bar.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

PROMPTS = {
    "zh": [
        "用一句话解释什么是批处理。",
        "我的笔记本没有显卡，能跑大模型吗？",
        "推荐三个学习分布式训练的入门步骤。",
        "把“今天的讲座很精彩”翻译成英文。",
        "写一句欢迎大家来北京参加技术沙龙的话。",
        "GPU 为什么适合做矩阵乘法？",
    ],
    "en": [
        "Explain batching in one sentence.",
        "Can I run a language model on a laptop without a GPU?",
        "Suggest three first steps for learning distributed training.",
        "Translate 'the talk today was great' into French.",
        "Write one line welcoming people to a tech meetup in Beijing.",
        "Why are GPUs good at matrix multiplication?",
    ],
}


def cjk_share(text: str) -> float:
    """Share of CJK ideographs among the letters (CJK and Latin) of a text; 0 for none."""
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    latin = sum(ch.isascii() and ch.isalpha() for ch in text)
    return cjk / (cjk + latin) if cjk + latin else 0.0


def in_language(text: str, lang: str) -> bool:
    share = cjk_share(text)
    return share >= 1 / 3 if lang == "zh" else share == 0.0


def echoes(reply: str, prompt: str) -> bool:
    """Does the reply begin by repeating the question (punctuation aside)?"""
    core = prompt.rstrip("。？?.!！ ")
    return reply.lstrip().startswith(core)


def loops(reply: str) -> bool:
    """Is the reply stuck repeating a piece of up to four characters five times in a row?"""
    return re.search(r"(.{1,4}?)\1{4,}", reply, flags=re.S) is not None


def usable(reply: str, prompt: str, lang: str) -> bool:
    return in_language(reply, lang) and not echoes(reply, prompt) and not loops(reply)


def answer(lm, prompt: str, lang: str, max_new_tokens: int) -> dict:
    t0 = time.perf_counter()
    g = lm.chat(prompt, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - t0
    return {"lang": lang, "prompt": prompt, "reply": g.text, "new_tokens": g.new_tokens, "seconds": seconds,
            "tokens_per_s": g.new_tokens / seconds, "chars_per_s": len(g.text.strip()) / seconds,
            "prompt_tokens_per_char": len(lm.tokenize(prompt)) / len(prompt),
            "in_language": in_language(g.text, lang), "usable": usable(g.text, prompt, lang)}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        for lang in PROMPTS:
            mine = [r for r in runs if r["model"] == model and r["lang"] == lang]

            def spread(key, mine=mine):
                values = [r[key] for r in mine]
                return statistics.median(values), min(values), max(values)

            rows.append({"model": model, "lang": lang, "tokens_per_s": spread("tokens_per_s"),
                         "chars_per_s": spread("chars_per_s"),
                         "prompt_tokens_per_char": spread("prompt_tokens_per_char")[0],
                         "in_language": sum(r["in_language"] for r in mine) / len(mine),
                         "usable": sum(r["usable"] for r in mine) / len(mine), "n": len(mine)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | language | tokens/s (range) | reply chars/s (range) | prompt tokens per char "
             "| replies in the prompt's language | usable replies |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, c = r["tokens_per_s"], r["chars_per_s"]
        lines.append(f"| {r['model']} | {r['lang']} | {t[0]:.1f} ({t[1]:.1f}-{t[2]:.1f}) | "
                     f"{c[0]:.1f} ({c[1]:.1f}-{c[2]:.1f}) | {r['prompt_tokens_per_char']:.2f} | "
                     f"{r['in_language']:.0%} of {r['n']} | {r['usable']:.0%} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.38
    for i, lang in enumerate(PROMPTS):
        mine = [next(r for r in rows if r["model"] == m and r["lang"] == lang) for m in models]
        xs = [k + (i - 0.5) * width for k in range(len(models))]
        med = [r["chars_per_s"][0] for r in mine]
        err = [[m - r["chars_per_s"][1] for m, r in zip(med, mine, strict=True)],
               [r["chars_per_s"][2] - m for m, r in zip(med, mine, strict=True)]]
        ax.bar(xs, med, width, yerr=err, capsize=3, label={"zh": "Chinese prompts", "en": "English prompts"}[lang])
        for x, r in zip(xs, mine, strict=True):
            # at the bar's foot, so the range's whisker never covers it
            ax.annotate(f"{r['usable']:.0%}\nusable", (x, 0), ha="center", va="bottom", fontsize=8,
                        color="white", weight="bold", xytext=(0, 4), textcoords="offset points")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("reply characters / s (batch 1)")
    ax.set_title("What a reader sees: characters per second, and usable replies", fontsize=9)
    ax.legend(fontsize=8)
    ax.margins(y=0.25)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m-instruct"], help="chat models in the store")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("runs/bench/chat_languages.json"))
    p.add_argument("--plot", type=Path, help="save the plot here (e.g. docs/img/chat_languages.png)")
    args = p.parse_args()

    from tqdm.auto import tqdm

    from labkit.llm import load_chat_model

    models = {name: load_chat_model(model=name) for name in args.models}
    for lm in models.values():
        lm.chat(PROMPTS["en"][0], max_new_tokens=8)  # warm-up: first-call allocations and kernel choice
    runs = []
    todo = [(rep, name, lang, prompt) for rep in range(args.repeats) for name in models
            for lang, prompts in PROMPTS.items() for prompt in prompts]
    for rep, name, lang, prompt in tqdm(todo, desc="answer", unit="prompt"):
        runs.append({"model": name, "repeat": rep, **answer(models[name], prompt, lang, args.max_new_tokens)})
    rows = summarise(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                    "placements": {n: str(m.placement) for n, m in models.items()},
                                    "max_new_tokens": args.max_new_tokens, "rows": rows, "runs": runs},
                                   ensure_ascii=False, indent=1))
    print(table(rows))
    for name in models:
        for lang in PROMPTS:
            sample = next(r for r in runs if r["model"] == name and r["lang"] == lang)
            print(f"\n{name} [{lang}] {sample['prompt']}\n  -> {sample['reply'][:160]!r}")
    if args.plot:
        plot(rows, args.plot)
        print("plot:", args.plot)


if __name__ == "__main__":
    main()
