"""Foundation benchmarks: cold model pull, model load, tokens/s by batch size, doctor, notebook wall times.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_foundation.py``). Every figure is
the median of ``--repeats`` runs made in this one invocation, so ratios compare like with like on
a shared, noisy machine. Results go to ``runs/bench/foundation.json`` and a Markdown table on stdout
that is pasted into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "smollm2-135m-instruct"


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})}, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def bench_pull(repeats: int) -> dict:
    """Cold: empty store and pip's cache off (a real PyPI download). Warm: the wheel is already in downloads/."""
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as home:
            env = {"LABKIT_HOME": home, "PIP_NO_CACHE_DIR": "1"}
            cold.append(timed([sys.executable, "-m", "labkit", "models", "pull", NAME], env))
            warm.append(timed([sys.executable, "-m", "labkit", "models", "pull", NAME, "--force"], env))
    return {"cold_pull_s": spread(cold), "pull_with_cached_wheel_s": spread(warm)}


def bench_generation(repeats: int) -> dict:
    from labkit import store
    from labkit.data import read_prompts
    from labkit.llm import load_chat_model, measure_throughput

    store.pull(NAME, progress=False)
    loads = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lm = load_chat_model("cpu")
        loads.append(time.perf_counter() - t0)
    prompts = [r["prompt"] for r in read_prompts("chat_prompts_mini")]
    runs = [measure_throughput(lm, prompts, batch_sizes=(1, 8, 32), max_new_tokens=64, progress=False)
            for _ in range(repeats)]
    by_bs = {}
    for bs_index, bs in enumerate((1, 8, 32)):
        by_bs[bs] = spread([run[bs_index]["tokens_per_s"] for run in runs])
    ratios = [run[1]["tokens_per_s"] / run[0]["tokens_per_s"] for run in runs]  # batch 8 / batch 1, per run
    return {"dtype": str(lm.placement.dtype), "load_s": spread(loads), "tokens_per_s": by_bs,
            "batch8_over_batch1": spread(ratios)}


def bench_doctor(repeats: int) -> dict:
    return {"doctor_s": spread([timed([sys.executable, "-m", "labkit", "doctor", "--json"]) for _ in range(repeats)])}


def bench_notebooks(repeats: int) -> dict:
    from labkit.notebooks import run_notebooks

    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            summary = run_notebooks(profile="cpu", smoke=True, output_dir=Path(out), progress=False)
            if not summary.ok:
                raise SystemExit(f"a notebook failed: {summary.to_markdown()}")
            for r in summary.results:
                times.setdefault(r.notebook, []).append(r.seconds)
    return {"notebook_smoke_s": {nb: spread(v) for nb, v in times.items()}}


def to_markdown(res: dict) -> str:
    g = res["generation"]
    lines = ["| measurement | median | range |", "|---|---:|---|"]

    def row(label, s, unit, digits=1):
        lines.append(f"| {label} | {s['median']:.{digits}f} {unit} | {s['min']:.{digits}f} to {s['max']:.{digits}f} |")

    if "pull" in res:
        row("cold `labkit models pull` (PyPI download + GGUF conversion)", res["pull"]["cold_pull_s"], "s")
        row("pull with the wheel already downloaded (conversion only)", res["pull"]["pull_with_cached_wheel_s"], "s")
    row("model load (`load_chat_model('cpu')`)", g["load_s"], "s", 2)
    for bs, s in g["tokens_per_s"].items():
        row(f"tokens/s, batch {bs} ({g['dtype'].removeprefix('torch.')}, 64 new tokens)", s, "tok/s")
    row("batch 8 / batch 1 throughput", g["batch8_over_batch1"], "x", 2)
    row("`labkit doctor --json` wall time", res["doctor"]["doctor_s"], "s", 2)
    for nb, s in res.get("notebooks", {}).get("notebook_smoke_s", {}).items():
        row(f"`{nb}` smoke run", s, "s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-pull", action="store_true", help="skip the cold-pull measurement (needs PyPI)")
    parser.add_argument("--skip-notebooks", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench" / "foundation.json")
    args = parser.parse_args()

    res: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "processor": platform.processor() or platform.machine()},
                 "repeats": args.repeats}
    if not args.skip_pull:
        res["pull"] = bench_pull(args.repeats)
    res["generation"] = bench_generation(args.repeats)
    res["doctor"] = bench_doctor(max(args.repeats, 5))
    if not args.skip_notebooks:
        res["notebooks"] = bench_notebooks(args.repeats)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2))
    print(to_markdown(res))
    print(f"\nraw results: {args.output}")


if __name__ == "__main__":
    main()
