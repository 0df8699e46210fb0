"""Ray batch lab benchmarks: Ray Data against plain loops, and pipeline-parallel sharding.

Run with ``.venv/bin/python benchmarks/bench_batch.py`` (``make bench`` runs it too). In one
invocation it measures, for each batch size, the single-process batched loop and Ray Data with 1
and 2 actors, ``--repeats`` times in rotation (so drift hits every method alike); the
one-prompt-at-a-time loop once on ``--loop-prompts`` prompts (its tokens/s does not depend on the
count, and 256 prompts at ~20 tok/s would take a quarter of an hour); and the sharded model against
the unsharded one. Raw results go to ``runs/bench/batch.json``; a Markdown table is printed for
``docs/benchmarks.md``. Never run it beside other heavy work: every method wants both cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit.baselines import compare_batch_methods  # noqa: E402


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_methods(args) -> dict:
    loop = compare_batch_methods(["loop"], n=args.loop_prompts, max_new_tokens=args.max_new_tokens,
                                 progress=False)[0]
    print(f"loop: {loop['tokens_per_s']:.1f} tok/s", flush=True)
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        for bs in args.batch_sizes:
            for method in ("batched", "ray-1", "ray-2"):
                row = compare_batch_methods([method], n=args.prompts, max_new_tokens=args.max_new_tokens,
                                            batch_size=bs, progress=False)[0]
                runs.setdefault(f"{method}@{bs}", []).append(row)
                print(f"[{rep + 1}/{args.repeats}] {method} batch {bs}: {row['tokens_per_s']:.1f} tok/s, "
                      f"first result {row['time_to_first_result']:.1f}s, peak {row['peak_mem_mb']:.0f} MB",
                      flush=True)
    summary = {}
    for key, rows in runs.items():
        summary[key] = {k: median([r[k] for r in rows]) for k in
                        ("tokens_per_s", "prompts_per_s", "time_to_first_result", "peak_mem_mb", "seconds")}
        summary[key]["tokens_per_s_range"] = [min(r["tokens_per_s"] for r in rows),
                                              max(r["tokens_per_s"] for r in rows)]
    # Ratios per repeat (same rotation), then the median.
    ratios_batched, ratios_loop = [], []
    for rep in range(args.repeats):
        best_ray = max(runs[f"{m}@{bs}"][rep]["tokens_per_s"] for m in ("ray-1", "ray-2") for bs in args.batch_sizes)
        best_batched = max(runs[f"batched@{bs}"][rep]["tokens_per_s"] for bs in args.batch_sizes)
        ratios_batched.append(best_ray / best_batched)
        ratios_loop.append(best_ray / loop["tokens_per_s"])
    return {"loop": loop, "summary": summary, "runs": runs,
            "best_ray_vs_loop": {"median": median(ratios_loop), "runs": ratios_loop},
            "best_ray_vs_best_batched": {"median": median(ratios_batched), "runs": ratios_batched}}


def bench_sharding(args) -> dict:
    from labkit import store
    from labkit.data import read_prompts
    from labkit.llm import ChatModel
    from labkit.ray_runtime import init_ray, shutdown_ray
    from labkit.sharding import PipelineLM

    path = store.pull("smollm2-135m-instruct", progress=False)[0]
    prompts = [r["prompt"] for r in read_prompts("prompts_500")[::16]][: args.shard_prompts]
    init_ray(dashboard=False)
    plm = PipelineLM(path, stages=2, dtype="bfloat16")
    lm = ChatModel.from_pretrained(path, device="cpu", dtype="bfloat16")
    lm.generate(prompts[:2], max_new_tokens=4, progress=False)  # warm-up
    plm.generate(prompts[:2], max_new_tokens=4)
    rows: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        gens = lm.generate(prompts, max_new_tokens=args.shard_tokens, batch_size=len(prompts), progress=False)
        rows.setdefault("unsharded", []).append(sum(g.new_tokens for g in gens) / (time.perf_counter() - t0))
        for m in (1, 2, 4):
            res = plm.generate(prompts, max_new_tokens=args.shard_tokens, micro_batches=m)
            rows.setdefault(f"sharded, {m} micro-batch(es)", []).append(res.tokens_per_s)
            rows.setdefault(f"stage busy, {m} micro-batch(es)", []).append(
                sum(res.stage_busy) / (2 * res.seconds))
    plm.shutdown()
    shutdown_ray()
    best = [max(rows[f"sharded, {m} micro-batch(es)"][i] for m in (1, 2, 4)) / rows["unsharded"][i]
            for i in range(args.repeats)]
    return {"tokens_per_s": {k: {"median": median(v), "runs": v} for k, v in rows.items()},
            "best_sharded_vs_unsharded": {"median": median(best), "runs": best}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--loop-prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shard-prompts", type=int, default=16)
    p.add_argument("--shard-tokens", type=int, default=32)
    p.add_argument("--skip-methods", action="store_true")
    args = p.parse_args()

    result = {"machine": platform.platform(), "python": platform.python_version(), "args": vars(args)}
    if not args.skip_methods:
        result["methods"] = bench_methods(args)
    result["sharding"] = bench_sharding(args)
    out = REPO / "runs" / "bench" / "batch.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    if "methods" in result:
        m = result["methods"]
        print("\n| method | tokens/s (median) | range | prompts/s | first result, s | peak memory, MB |")
        print("|---|---:|---|---:|---:|---:|")
        loop = m["loop"]
        print(f"| one prompt at a time ({loop['prompts']} prompts) | {loop['tokens_per_s']:.1f} | 1 run | "
              f"{loop['prompts_per_s']:.2f} | {loop['time_to_first_result']:.1f} | {loop['peak_mem_mb']:.0f} |")
        for key, s in m["summary"].items():
            lo, hi = s["tokens_per_s_range"]
            print(f"| {key} | {s['tokens_per_s']:.1f} | {lo:.1f} to {hi:.1f} | {s['prompts_per_s']:.2f} | "
                  f"{s['time_to_first_result']:.1f} | {s['peak_mem_mb']:.0f} |")
        print(f"\nbest Ray / loop: {m['best_ray_vs_loop']['median']:.2f}x; "
              f"best Ray / best batched: {m['best_ray_vs_best_batched']['median']:.2f}x "
              f"(runs {[round(x, 2) for x in m['best_ray_vs_best_batched']['runs']]})")
    s = result["sharding"]
    print("\n| sharding | tokens/s or busy fraction (median) |\n|---|---:|")
    for k, v in s["tokens_per_s"].items():
        print(f"| {k} | {v['median']:.2f} |")
    print(f"\nbest sharded / unsharded: {s['best_sharded_vs_unsharded']['median']:.2f}x")
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
