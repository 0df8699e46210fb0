"""Prefill interference, and DistServe's split: decode TPOT with and without disaggregation.

Run with ``.venv/bin/python benchmarks/bench_disaggregation.py`` (it starts its own local Ray and
ends it). Every third request carries a long prompt (several held-out questions from
``datasets/prompts_500`` asked at once, a few hundred tokens); the others are single questions.
Reply lengths are exact (``min_tokens``), heavy-tailed from 16 to 96 tokens, so streams are running
when long prompts arrive. The same Poisson trace (``labkit.loadtest.replay``) goes to:

1. one engine with every core, prefill-first (a long prompt stops every stream for its prefill);
2. the same engine with one torch thread: the control that separates interference from how torch
   scales over threads (the split's actors get one thread each on a 2-core machine);
3. one engine with every core, chunked prefill (Sarathi-Serve's answer, inside one engine);
4. ``DisaggregatedEngine``: a prefill actor and a decode actor, half the cores each, the KV cache
   through Ray's object store (DistServe's answer).

Figures: median and range over ``--seeds`` traces; raw ``runs/bench/disaggregation.json``. Never run
it beside other heavy work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from labkit.data import read_prompts  # noqa: E402
from labkit.disaggregation import DisaggregatedEngine  # noqa: E402
from labkit.engine import Engine  # noqa: E402
from labkit.llm import load_chat_model  # noqa: E402
from labkit.loadtest import heavy_tailed_lengths, replay  # noqa: E402
from labkit.ray_runtime import init_ray, shutdown_ray  # noqa: E402

KEYS = ("ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "goodput_rps", "tokens_per_s", "mean_s")


def trace_prompts(questions: list[str], n: int, *, seed: int, long_every: int = 3, per_long: int = 12) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % long_every == long_every - 1:
            picked = rng.sample(questions, per_long)
            out.append("Answer each of these questions in one line:\n" +
                       "\n".join(f"{k + 1}. {q}" for k, q in enumerate(picked)))
        else:
            out.append(rng.choice(questions))
    return out


def summarise(runs: list[dict]) -> dict:
    return {k: {"median": statistics.median(r[k] for r in runs), "low": min(r[k] for r in runs),
                "high": max(r[k] for r in runs)} for k in KEYS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=18)
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "disaggregation.json")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 2
    init_ray(num_cpus=cores, dashboard=False)
    lm = load_chat_model("cpu")
    questions = [r["prompt"] for r in read_prompts("prompts_500")]
    long_tokens = [len(lm.tokenizer(t)["input_ids"]) for t in trace_prompts(questions, 9, seed=0)[2::3]]
    print(f"long prompts: {long_tokens} tokens", flush=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "long_prompt_tokens": long_tokens}
    runs: dict[str, list[dict]] = {"one engine, prefill-first": [], "one engine, 1 thread": [],
                                   "one engine, chunked": [], "prefill | decode actors": []}
    threads = torch.get_num_threads()
    pair = DisaggregatedEngine(profile="cpu", prefill_cpus=cores // 2, decode_cpus=cores - cores // 2,
                               max_batch=args.max_batch)
    try:
        for seed in range(args.seeds):
            prompts = trace_prompts(questions, args.requests, seed=seed)
            lengths = heavy_tailed_lengths(args.requests, low=16, high=96, seed=seed)
            for name, prefill, n_threads in (("one engine, prefill-first", "prefill-first", threads),
                                             ("one engine, 1 thread", "prefill-first", 1),
                                             ("one engine, chunked", "chunked", threads)):
                torch.set_num_threads(n_threads)
                engine = Engine(lm.model, lm.tokenizer, max_batch=args.max_batch, max_context=1024, prefill=prefill)
                try:
                    runs[name].append(replay(engine, prompts, lengths=lengths, rate=args.rate, seed=seed,
                                             progress=False))
                finally:
                    engine.stop()
                    torch.set_num_threads(threads)
            runs["prefill | decode actors"].append(replay(pair, prompts, lengths=lengths, rate=args.rate,
                                                          seed=seed, progress=False))
            for name, done in runs.items():
                r = done[-1]
                print(f"seed {seed} {name:>26}: TTFT p50 {r['ttft_s_p50']:5.2f} s, TPOT p50 "
                      f"{r['tpot_s_p50'] * 1e3:4.0f} ms, p99 {r['tpot_s_p99'] * 1e3:5.0f} ms, goodput "
                      f"{r['goodput_rps']:.2f} req/s, errors {r['errors']}", flush=True)
    finally:
        pair.stop()
        shutdown_ray()
    results["runs"] = {name: [{k: r[k] for k in (*KEYS, "errors")} for r in done] for name, done in runs.items()}
    results["summary"] = {name: summarise(done) for name, done in runs.items()}
    for name, row in results["summary"].items():
        print(f"{name:>26}: TPOT p50 {row['tpot_s_p50']['median'] * 1e3:4.0f} ms "
              f"[{row['tpot_s_p50']['low'] * 1e3:.0f}, {row['tpot_s_p50']['high'] * 1e3:.0f}], p99 "
              f"{row['tpot_s_p99']['median'] * 1e3:5.0f} ms [{row['tpot_s_p99']['low'] * 1e3:.0f}, "
              f"{row['tpot_s_p99']['high'] * 1e3:.0f}], TTFT p50 {row['ttft_s_p50']['median']:.2f} s, "
              f"goodput {row['goodput_rps']['median']:.2f} req/s")
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
