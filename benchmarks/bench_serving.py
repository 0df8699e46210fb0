"""Serving at scale: continuous batching against ``@serve.batch``, streams, and scheduling policies.

Run with ``.venv/bin/python benchmarks/bench_serving.py`` (it starts its own Ray and Serve on
loopback and shuts them down). All in one run, cpu profile, chat route, held-out prompts
(``datasets/prompts_500``, written by people, not by any generator the model saw), reply lengths
from ``heavy_tailed_lengths`` (8 to 256 tokens, fixed per request with ``min_tokens``):

1. closed loop at ``--concurrency``: ``@serve.batch`` (non-streamed: with it, streamed requests
   skip batching; its time to first token is the whole reply) against the engine, non-streamed
   and streamed, ``--rounds`` times, each round on its own draw of reply lengths
   (``heavy_tailed_lengths(requests, seed=11 + round)``; the ratios are taken within each round,
   then their median). ``--requests`` (default 160, ten times the concurrency) keeps the server
   in its steady state for most of the run: with 48 requests the last few long replies decoding
   alone were most of the run, and which draw of lengths came up moved the result more than the
   server did (see ``docs/benchmarks.md``);
2. open loop at several arrival rates, streamed, FCFS against skip-join MLFQ, on ``--seeds``
   arrival traces per rate (each policy gets the same traces): goodput under the SLO, TTFT, TPOT,
   and mean and p99 completion time, medians and ranges over the traces.

Raw results go to ``runs/bench/serving.json`` and a plot to ``runs/bench/serving.png``. Never run
it beside other heavy work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit import serve  # noqa: E402
from labkit.loadtest import heavy_tailed_lengths, load_test, plot_reports  # noqa: E402
from labkit.ray_runtime import free_port  # noqa: E402


def summary(report: dict) -> dict:
    ok = [r for r in report["rows"] if r["status"] == 200]
    out = {k: report.get(k) for k in ("ok", "errors", "seconds", "tokens_per_s", "requests_per_s", "p50_s", "p99_s",
                                      "ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "goodput_rps",
                                      "met_slo", "rate")}
    out["mean_latency_s"] = statistics.fmean(r["latency_s"] for r in ok) if ok else float("nan")
    if "ttft_s_p50" not in report:  # not streamed: the client sees the first token with the last
        out["ttft_s_p50"], out["ttft_s_p99"] = report["p50_s"], report["p99_s"]
    return out


def modelled_ratio(lengths: list[int], concurrency: int, *, fixed_ms: float = 35.0, per_row_ms: float = 1.3) -> float:
    """What the two schedulers alone would give on these lengths, if a decode step cost
    ``fixed_ms + per_row_ms x rows`` (about this CPU's bf16 figures) and nothing else cost anything:
    ``@serve.batch`` runs each group of ``concurrency`` requests to its longest reply at a full
    batch; the engine lets each finished request's slot go to the next one at once."""
    def step(rows: int) -> float:
        return fixed_ms + per_row_ms * rows

    static = sum(max(lengths[i:i + concurrency]) * step(concurrency) for i in range(0, len(lengths), concurrency))
    waiting, live, engine = list(lengths), [], 0.0
    while waiting or live:
        while waiting and len(live) < concurrency:
            live.append(waiting.pop(0))
        engine += step(len(live))
        live = [left - 1 for left in live if left > 1]
    return static / engine


def median_range(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def deploy(port: int, **settings) -> str:
    # The replica gets every core (Ray would otherwise give its torch one thread per requested CPU).
    url = serve.deploy(serve.ServeSettings(port=port, images=False, max_tokens_limit=256, max_queue=256,
                                           chat_num_cpus=os.cpu_count() or 1, **settings))
    serve.wait_ready(url)
    return url


def closed_loop(args, port: int) -> dict:
    rounds = []
    for r in range(args.rounds):  # each round deploys both afresh, so the ratios are from one stretch of time
        lengths = heavy_tailed_lengths(args.requests, seed=11 + r)
        common = dict(requests=args.requests, concurrency=args.concurrency, lengths=lengths, progress=False,
                      timeout_s=3600)
        row = {"lengths": lengths}
        url = deploy(port, batching="static", max_batch_size=args.concurrency)
        load_test(url, requests=4, concurrency=4, max_tokens=8, progress=False)  # warm-up
        row["@serve.batch"] = summary(load_test(url, **common))
        url = deploy(port, batching="continuous", max_batch_size=args.concurrency)
        load_test(url, requests=4, concurrency=4, max_tokens=8, progress=False)
        row["engine"] = summary(load_test(url, **common))
        row["engine, streamed"] = summary(load_test(url, stream=True, **common))
        base, eng, streamed = (row[k] for k in ("@serve.batch", "engine", "engine, streamed"))
        row["ratios"] = {"throughput engine / @serve.batch": eng["tokens_per_s"] / base["tokens_per_s"],
                         "TTFT p50 engine streamed / @serve.batch": streamed["ttft_s_p50"] / base["ttft_s_p50"],
                         "streamed / non-streamed tokens/s": streamed["tokens_per_s"] / eng["tokens_per_s"]}
        row["ratios"]["throughput ratio modelled (schedulers alone)"] = modelled_ratio(lengths, args.concurrency)
        for name in ("@serve.batch", "engine", "engine, streamed"):
            print(f"round {r + 1}, closed loop, {name:>17}: {row[name]['tokens_per_s']:6.1f} tok/s, TTFT p50 "
                  f"{row[name]['ttft_s_p50']:6.2f} s, latency p50 {row[name]['p50_s']:6.2f} s, "
                  f"errors {row[name]['errors']}", flush=True)
        print(json.dumps(row["ratios"], indent=2), flush=True)
        rounds.append(row)
    keys = ("tokens_per_s", "ttft_s_p50", "p50_s", "p99_s", "errors")
    return {"rounds": rounds,
            "summary": {name: {k: median_range([row[name][k] for row in rounds]) for k in keys}
                        for name in ("@serve.batch", "engine", "engine, streamed")},
            "ratios": {k: median_range([row["ratios"][k] for row in rounds]) for k in rounds[0]["ratios"]}}


def open_loop(args, port: int) -> tuple[dict, list[dict]]:
    lengths = heavy_tailed_lengths(args.open_requests, seed=12)
    out, reports = {}, []
    for policy in ("fcfs", "mlfq"):
        url = deploy(port, scheduler=policy, max_batch_size=8)
        out[policy] = []
        for rate in args.rates:
            runs = []
            for seed in range(args.seeds):
                report = load_test(url, requests=args.open_requests, mode="open", rate=rate, stream=True,
                                   lengths=lengths, progress=False, timeout_s=1800, seed=seed)
                report["label"] = policy
                if seed == 0:
                    reports.append(report)
                runs.append(summary(report))
            row = {"rate": rate, "runs": runs, **{k: median_range([run[k] for run in runs]) for k in (
                "goodput_rps", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "mean_latency_s", "p99_s")}}
            out[policy].append(row)
            good, ttft, tpot = row["goodput_rps"], row["ttft_s_p50"]["median"], row["tpot_s_p50"]["median"]
            print(f"open loop {policy} at {rate:g} req/s over {args.seeds} traces: goodput {good['median']:.2f} "
                  f"[{good['min']:.2f}, {good['max']:.2f}] req/s, TTFT p50 {ttft:.2f} s, TPOT p50 {tpot * 1e3:.0f} ms, "
                  f"mean completion {row['mean_latency_s']['median']:.2f} s", flush=True)
    return {"lengths": lengths, **out}, reports


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=160)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--parts", nargs="+", choices=["closed", "open"], default=["closed", "open"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--open-requests", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "serving.json")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    results: dict = {}
    if "closed" in args.parts:
        results["closed"] = closed_loop(args, port)
    if "open" in args.parts:
        results["open"], reports = open_loop(args, port)
        fig = plot_reports([r for r in reports if r["label"] == "fcfs"], title="FCFS: goodput and TTFT vs arrival rate")
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
    serve.shutdown()
    args.out.write_text(json.dumps(results, indent=2))
    if "closed" in results:
        print(json.dumps({"closed-loop ratios (median, range over rounds)": results["closed"]["ratios"]}, indent=2))
    print(f"raw: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
