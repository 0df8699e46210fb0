"""Serving lab benchmarks: the chat route under load, with and without dynamic batching.

Run with ``.venv/bin/python benchmarks/bench_serve.py`` (``make bench`` runs it too). One local
Ray cluster; the chat app alone (with every CPU of the machine) is deployed with batching off
(``max_batch_size=1``) and on, alternately, ``--repeats`` times, and each deployment gets the same
load: ``--requests`` requests at concurrency ``--concurrency``. Then ``--mixed`` requests, about
half of them broken, check that every bad body gets a 4xx and every good one a 200. Raw results go
to ``runs/bench/serve.json``; a Markdown table is printed for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit import serve as lk_serve  # noqa: E402
from labkit.loadtest import load_test, mixed_bodies  # noqa: E402
from labkit.ray_runtime import init_ray, shutdown_ray  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mixed", type=int, default=200)
    args = p.parse_args()

    cpus = os.cpu_count() or 1
    info = init_ray(dashboard=False)
    port = lk_serve.free_port(8000)
    runs: dict[int, list[dict]] = {1: [], args.batch_size: []}
    for rep in range(args.repeats):
        for bs in runs:
            url = lk_serve.deploy(lk_serve.ServeSettings(port=port, images=False, max_batch_size=bs, batching="static",
                                                         chat_num_cpus=info.resources.get("CPU", cpus),
                                                         max_tokens_limit=max(512, args.max_tokens)))
            lk_serve.wait_ready(url)
            load_test(url, requests=2, concurrency=1, max_tokens=4, progress=False)  # warm-up
            report = load_test(url, requests=args.requests, concurrency=args.concurrency,
                               max_tokens=args.max_tokens, progress=False)
            report.pop("rows")
            runs[bs].append(report)
            print(f"[{rep + 1}/{args.repeats}] max_batch_size={bs}: {report['requests_per_s']:.2f} req/s, "
                  f"{report['tokens_per_s']:.1f} tok/s, p50 {report['p50_s']:.2f}s, p99 {report['p99_s']:.2f}s, "
                  f"errors {report['errors']}", flush=True)

    mixed = mixed_bodies(args.mixed, seed=0, max_tokens=8)
    mixed_report = load_test(url, bodies=[b for b, _ in mixed], requests=args.mixed, concurrency=8, progress=False)
    right = sum((r["status"] == 200) == good and (good or 400 <= r["status"] < 500)
                for r, (_, good) in zip(mixed_report["rows"], mixed, strict=True))
    n_good = sum(g for _, g in mixed)
    from ray import serve

    serve.shutdown()
    shutdown_ray()

    ratios = [b["tokens_per_s"] / u["tokens_per_s"] for u, b in zip(runs[1], runs[args.batch_size], strict=True)]
    result = {"machine": platform.platform(), "args": vars(args), "runs": {str(k): v for k, v in runs.items()},
              "batched_vs_unbatched": {"median": statistics.median(ratios), "runs": ratios},
              "mixed": {"requests": args.mixed, "good": n_good, "bad": args.mixed - n_good,
                        "answered_as_expected": right, "statuses": mixed_report["statuses"]}}
    out = REPO / "runs" / "bench" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(f"\n| chat route, {args.requests} requests at concurrency {args.concurrency}, {args.max_tokens} tokens "
          f"| req/s | tokens/s | p50 s | p95 s | p99 s | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for bs, reports in runs.items():
        med = {k: statistics.median([r[k] for r in reports]) for k in
               ("requests_per_s", "tokens_per_s", "p50_s", "p95_s", "p99_s")}
        label = "batching off (max_batch_size=1)" if bs == 1 else f"dynamic batching (max_batch_size={bs})"
        print(f"| {label} | {med['requests_per_s']:.2f} | {med['tokens_per_s']:.1f} | {med['p50_s']:.2f} | "
              f"{med['p95_s']:.2f} | {med['p99_s']:.2f} | {sum(r['errors'] for r in reports)} |")
    print(f"\nbatched / unbatched tokens/s: {statistics.median(ratios):.2f}x (runs {[round(r, 2) for r in ratios]})")
    print(f"mixed: {args.mixed} requests ({n_good} good, {args.mixed - n_good} bad): {right} answered as expected; "
          f"statuses {mixed_report['statuses']}")
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
