"""Fast generation benchmarks: labkit's fast path against plain ``generate``, on this machine's roofline.

Run with ``.venv/bin/python benchmarks/bench_generate.py`` (``make bench`` runs it too). In one
invocation it does what ``labkit bench generate`` does (both paths at each batch size, the
machine's ceilings measured on the spot; ``--repeats`` runs after one warm-up, which also pays the
compile) ``--rounds`` times, so the medians and ranges span several rounds; then an agreement
study: how many greedy replies equal the plain one-at-a-time reply, for plain batched and for the
fast path, in bf16 and fp32. Raw results go to ``runs/bench/generate.json`` and the plot to
``runs/bench/generate.png``. Never run it beside other heavy work: every path wants both cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit import roofline  # noqa: E402
from labkit.data import read_prompts  # noqa: E402
from labkit.llm import load_chat_model  # noqa: E402


def speed(args, prompts) -> dict:
    paths = {"plain": load_chat_model(dtype="bfloat16"), "fast": load_chat_model(dtype="bfloat16", fast=True)}
    rounds, machines = [], []
    for r in range(args.rounds):
        machine = roofline.measure_machine()
        machines.append(machine)
        rows = roofline.bench_generate(paths, prompts, batch_sizes=args.batch_sizes, max_new_tokens=args.new_tokens,
                                       repeats=args.repeats, machine=machine, progress=False)
        print(f"round {r + 1}/{args.rounds}\n{roofline.format_table(rows, machine)}", flush=True)
        rounds.append(rows)
    summary = []
    for i, first in enumerate(rounds[0]):
        tps = [rows[i]["tokens_per_s"] for rows in rounds]
        frac = [rows[i]["fraction_of_ceiling"] for rows in rounds]
        summary.append({"path": first["path"], "batch_size": first["batch_size"],
                        "tokens_per_s": statistics.median(tps),
                        "min": min(rows[i]["min"] for rows in rounds), "max": max(rows[i]["max"] for rows in rounds),
                        "ms_per_step": statistics.median(rows[i]["ms_per_step"] for rows in rounds),
                        "fraction_of_ceiling": statistics.median(frac), "bound": first["bound"],
                        "warmup_s": [rows[i]["warmup_s"] for rows in rounds]})
    machine = roofline.Machine(matmul_gflops=statistics.median(m.matmul_gflops for m in machines),
                               read_gbs=statistics.median(m.read_gbs for m in machines), dtype="bfloat16",
                               threads=machines[0].threads, device="cpu")
    ax = roofline.plot_roofline(summary, paths["plain"].model, machine)
    ax.figure.savefig(args.out.with_suffix(".png"), dpi=120, bbox_inches="tight")
    return {"machines": [m.as_dict() for m in machines], "rounds": rounds, "summary": summary}


def agreement(args, prompts) -> dict:
    """Greedy replies equal to the plain one-at-a-time reply, and the mean length of the common start."""
    out = {}
    for dtype in ("bfloat16", "float32"):
        plain, fast = load_chat_model(dtype=dtype), load_chat_model(dtype=dtype, fast=True)
        kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, progress=False)
        ref = [plain.generate(p, **kw)[0] for p in prompts]
        ref_ids = [plain.tokenizer(g.text, add_special_tokens=False)["input_ids"] for g in ref]
        result = {}
        for name, gens in (("plain batched", plain.generate(prompts, batch_size=len(prompts), **kw)),
                           ("fast one at a time", [fast.generate(p, **kw)[0] for p in prompts]),
                           ("fast batched", fast.generate(prompts, batch_size=len(prompts), **kw))):
            ids = [plain.tokenizer(g.text, add_special_tokens=False)["input_ids"] for g in gens]
            common = [next((k for k, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), min(len(x), len(y)))
                      for x, y in zip(ids, ref_ids, strict=True)]
            result[name] = {"identical": sum(g.text == r.text for g, r in zip(gens, ref, strict=True)),
                            "rows": len(prompts), "mean_common_prefix_tokens": statistics.mean(common)}
            print(f"{dtype:>8} {name:>20}: {result[name]['identical']}/{len(prompts)} identical to plain one at a "
                  f"time, first difference after {result[name]['mean_common_prefix_tokens']:.1f} tokens on average",
                  flush=True)
        out[dtype] = result
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64, 128])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--agreement-prompts", type=int, default=16)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "generate.json")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prompts = [row["prompt"] for row in read_prompts("chat_prompts_mini")]
    results = {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
               "speed": speed(args, prompts),
               "agreement": agreement(args, [prompts[i % len(prompts)] for i in range(args.agreement_prompts)])}
    args.out.write_text(json.dumps(results, indent=2))
    print("\n| path | batch | tokens/s (median) | range | ms/step | of ceiling |\n|---|---:|---:|---|---:|---:|")
    for r in results["speed"]["summary"]:
        print(f"| {r['path']} | {r['batch_size']} | {r['tokens_per_s']:.1f} | {r['min']:.0f}-{r['max']:.0f} | "
              f"{r['ms_per_step']:.1f} | {100 * r['fraction_of_ceiling']:.0f}% ({r['bound']}) |")
    print(f"raw: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
