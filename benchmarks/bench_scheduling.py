"""Scheduling on one trace: FCFS against skip-join MLFQ, and where prompts go (prefill modes).

Run with ``.venv/bin/python benchmarks/bench_scheduling.py``. Unlike ``bench_serving.py`` it
needs no Ray: ``labkit.loadtest.replay`` sends the *same* arrival trace (Poisson times, held-out
prompts from ``datasets/prompts_500``, heavy-tailed exact reply lengths) into an in-process engine
per policy, so a difference between policies is the policy's, not the draw's or Serve's. Each
setting runs on ``--seeds`` traces; the figures are medians with the range over traces.

1. FCFS vs MLFQ at several arrival rates with a small batch (``--max-batch``), where requests
   queue and the order matters: mean completion time (FastServe's measure), p50/p99 TTFT and
   TPOT, and goodput under the SLO (DistServe's).
2. Prefill modes at one rate: how much a prompt arriving mid-stream slows the running streams.

Raw results go to ``runs/bench/scheduling.json`` and a plot to ``runs/bench/scheduling.png``.
Never run it beside other heavy work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from labkit.data import read_prompts  # noqa: E402
from labkit.engine import Engine  # noqa: E402
from labkit.llm import load_chat_model  # noqa: E402
from labkit.loadtest import heavy_tailed_lengths, replay  # noqa: E402

KEYS = ("mean_s", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "goodput_rps", "tokens_per_s")


def run(lm, prompts, *, policy: str, prefill: str, max_batch: int, rate: float, requests: int, seed: int,
        slo_ttft_s: float, slo_tpot_s: float) -> dict:
    engine = Engine(lm.model, lm.tokenizer, max_batch=max_batch, max_context=1024, max_queue=requests,
                    policy=policy, prefill=prefill)
    lengths = heavy_tailed_lengths(requests, seed=seed, high=128)
    try:
        report = replay(engine, prompts[seed * requests:], lengths=lengths, rate=rate, seed=seed,
                        slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s, progress=False)
    finally:
        engine.stop()
    short = [r["latency_s"] for r, n in zip(report["rows"], lengths, strict=True) if n <= 16 and r["status"] == 200]
    report.update(preemptions=engine.preemptions, mean_short_s=statistics.fmean(short) if short else float("nan"),
                  lengths=lengths)
    return report


def median_range(values: list[float]) -> dict:
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--slo-ttft", type=float, default=2.0)
    p.add_argument("--slo-tpot", type=float, default=0.2)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "scheduling.json")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lm = load_chat_model("cpu")
    prompts = [r["prompt"] for r in read_prompts("prompts_500")]
    common = dict(requests=args.requests, slo_ttft_s=args.slo_ttft, slo_tpot_s=args.slo_tpot,
                  max_batch=args.max_batch)
    run(lm, prompts, policy="fcfs", prefill="prefill-first", rate=4.0, seed=99, **{**common, "requests": 4})  # warm-up

    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "policies": {}, "prefill": {}}
    for rate in args.rates:
        for policy in ("fcfs", "mlfq"):
            runs = [run(lm, prompts, policy=policy, prefill="prefill-first", rate=rate, seed=s, **common)
                    for s in range(args.seeds)]
            row = {k: median_range([r[k] for r in runs]) for k in (*KEYS, "mean_short_s", "preemptions")}
            results["policies"][f"{policy}@{rate}"] = {"rate": rate, "policy": policy, **row,
                                                       "runs": [{k: r[k] for k in (*KEYS, "mean_short_s")}
                                                                for r in runs]}
            print(f"rate {rate:4.1f} {policy:>4}: mean JCT {row['mean_s']['median']:6.2f} s "
                  f"(short replies {row['mean_short_s']['median']:6.2f} s), TTFT p50 "
                  f"{row['ttft_s_p50']['median']:5.2f} s, TPOT p50 {row['tpot_s_p50']['median'] * 1e3:5.0f} ms, "
                  f"goodput {row['goodput_rps']['median']:.2f} req/s [{row['goodput_rps']['low']:.2f}, "
                  f"{row['goodput_rps']['high']:.2f}], preemptions {row['preemptions']['median']:.0f}", flush=True)

    rate = args.rates[len(args.rates) // 2]
    for mode in ("prefill-first", "chunked", "decode-first"):
        runs = [run(lm, prompts, policy="fcfs", prefill=mode, rate=rate, seed=s, **common) for s in range(args.seeds)]
        row = {k: median_range([r[k] for r in runs]) for k in KEYS}
        results["prefill"][mode] = {"rate": rate, **row}
        print(f"rate {rate:4.1f} {mode:>13}: TTFT p50 {row['ttft_s_p50']['median']:5.2f} s, TPOT p50 "
              f"{row['tpot_s_p50']['median'] * 1e3:5.0f} ms, p99 {row['tpot_s_p99']['median'] * 1e3:5.0f} ms, "
              f"goodput {row['goodput_rps']['median']:.2f} req/s", flush=True)

    args.out.write_text(json.dumps(results, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for policy in ("fcfs", "mlfq"):
        rows = [r for r in results["policies"].values() if r["policy"] == policy]
        rates = [r["rate"] for r in rows]
        for ax, key, scale in zip(axes[:2], ("mean_s", "goodput_rps"), (1, 1), strict=True):
            med = [r[key]["median"] * scale for r in rows]
            err = [[m - r[key]["low"] * scale for m, r in zip(med, rows, strict=True)],
                   [r[key]["high"] * scale - m for m, r in zip(med, rows, strict=True)]]
            ax.errorbar(rates, med, yerr=err, marker="o", capsize=3, label=policy.upper())
    axes[0].set(xlabel="arrival rate (req/s)", ylabel="mean completion time (s)", title="Completion time")
    axes[1].set(xlabel="arrival rate (req/s)", ylabel="goodput (req/s)", title="Goodput under the SLO")
    modes = list(results["prefill"])
    axes[2].bar(modes, [results["prefill"][m]["tpot_s_p99"]["median"] * 1e3 for m in modes])
    axes[2].set(ylabel="TPOT p99 (ms)", title="Prefill interference")
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
