"""Regenerate prompts.jsonl and bad_rows.jsonl (deterministic): python datasets/prompts_500/make_prompts.py"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

EN_TASKS = [
    "Explain {t} in one sentence.",
    "Write a short poem about {t}.",
    "List three facts about {t}.",
    "What is a common misconception about {t}?",
    "Summarise why {t} matters, for a beginner.",
    "Give a simple analogy for {t}.",
    "Write a one-line announcement for a workshop on {t}.",
    "Describe {t} to a ten-year-old.",
    "What would an expert ask first about {t}?",
    "Compare {t} with something from everyday life.",
]
EN_TOPICS = [
    "GPUs", "Ray actors", "the Kubernetes scheduler", "diffusion models", "tokenizers", "batch inference",
    "object storage", "the water cycle", "volcanoes", "honeybees", "the Silk Road", "jazz", "photosynthesis",
    "black holes", "tea ceremonies", "bicycles", "compilers", "vaccines", "coral reefs", "electric cars",
    "the printing press", "origami", "chess openings", "rainforests", "the Great Wall", "dumplings",
    "solar panels", "neural networks", "data centres", "earthquakes",
]
ZH_TASKS = [
    "用一句话解释{t}。",
    "写一首关于{t}的短诗。",
    "列出关于{t}的三个事实。",
    "人们对{t}常见的误解是什么？",
    "向初学者说明{t}为什么重要。",
    "用一个简单的比喻来说明{t}。",
    "给十岁的孩子介绍{t}。",
    "把{t}和日常生活中的事物作比较。",
]
ZH_TOPICS = [
    "图形处理器", "分布式计算", "容器编排", "扩散模型", "分词器", "批量推理", "对象存储", "水循环", "火山",
    "蜜蜂", "丝绸之路", "爵士乐", "光合作用", "黑洞", "茶道", "自行车", "编译器", "疫苗", "珊瑚礁",
    "电动汽车", "印刷术", "折纸", "长城", "饺子", "太阳能电池板",
]
EN_CONTEXT = [
    "Our team runs a small workshop for developers every month.",
    "Most attendees bring laptops without a GPU, and the venue wifi is slow.",
    "Last time, the model downloads took half of the session.",
    "We want every exercise to work offline once the setup step is done.",
    "Instructors prepare a cluster the day before and tear it down afterwards.",
    "Some labs use Ray to spread work across several processes.",
    "The slides explain why batching keeps accelerators busy.",
    "Feedback said the streaming demo was the most memorable part.",
]
ZH_CONTEXT = [
    "我们每个月为开发者举办一次小型工作坊。",
    "大多数参与者的笔记本电脑没有显卡，会场的网络也很慢。",
    "上一次，下载模型就花掉了一半的时间。",
    "我们希望每个练习在准备好之后都能离线运行。",
    "讲师会提前一天准备集群，并在活动结束后删除它。",
    "有些实验用 Ray 把任务分配到多个进程上。",
]


def build() -> list[dict]:
    rng = random.Random(20261121)
    rows = []
    en = [task.format(t=topic) for topic in EN_TOPICS for task in EN_TASKS]  # 300
    zh = [task.format(t=topic) for topic in ZH_TOPICS for task in ZH_TASKS]  # 200
    for lang, prompts, context in (("en", en, EN_CONTEXT), ("zh", zh, ZH_CONTEXT)):
        for i, prompt in enumerate(prompts):
            # one prompt in six gets a few sentences of background: varied lengths, as in real traffic
            if rng.random() < 1 / 6:
                sep = " " if lang == "en" else ""
                prompt = sep.join(rng.sample(context, rng.randint(2, 4))) + sep + prompt
            rows.append({"id": f"{lang}-{i:04d}", "lang": lang, "prompt": prompt})
    return rows


BAD_ROWS = [  # (line as written, what is wrong); the batch lab must report each one, not crash
    ('{"lang": "en", "prompt": "This row has no id."}', "missing id"),
    ('{"id": "bad-empty", "lang": "en", "prompt": ""}', "empty prompt"),
    ('{"id": "bad-space", "lang": "en", "prompt": "   "}', "prompt of whitespace only"),
    ('{"id": "bad-number", "lang": "en", "prompt": 42}', "prompt is not a string"),
    ('{"id": "bad-null", "lang": "zh", "prompt": null}', "prompt is null"),
    ('{"id": "bad-json", "lang": "en", "prompt": "unterminated', "invalid JSON"),
    (json.dumps({"id": "bad-long", "lang": "en", "prompt": "Repeat after me: " + "tokens " * 12000}),
     "overlong prompt (about 12,000 words: more than the cpu model's 8,192-token context)"),
]


def main() -> None:
    with open(HERE / "prompts.jsonl", "w", encoding="utf-8") as fh:
        for row in build():
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(HERE / "bad_rows.jsonl", "w", encoding="utf-8") as fh:
        for line, _ in BAD_ROWS:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
