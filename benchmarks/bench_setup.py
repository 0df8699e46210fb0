"""Fresh clone to "labs ready": uv against pip, with a warm and with a cold package cache.

Run with ``python3 benchmarks/bench_setup.py`` from a checkout whose changes are committed (it
clones HEAD). Each run clones the repository into a temporary folder and times, there,
``make setup`` (virtualenv, every locked package, labkit, the Jupyter kernel) and ``make models``
(the cpu profile's models into an empty model store): what an attendee's first ``make lab`` does
before JupyterLab opens. "cold" points uv's and pip's caches at empty folders, so every package
is downloaded; "warm" reuses the caches a previous run filled. The four configurations run
``--repeats`` times in rotation, so drift in the network or the machine hits them alike. Raw
results go to ``runs/bench/setup.json``; a Markdown table is printed for ``docs/benchmarks.md``
and ``--plot`` draws the medians with their ranges.

pip's configuration files are ignored (``PIP_CONFIG_FILE=/dev/null``) so both installers read
the same index; ``PIP_FIND_LINKS``, if set, is kept for both (it is where a machine without
access to PyTorch's CPU index finds torch's CPU wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [("uv", "warm"), ("pip", "warm"), ("uv", "cold"), ("pip", "cold")]


def one_run(installer: str, cache: str, caches: Path, work: Path) -> dict:
    clone = work / f"clone-{installer}-{cache}"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    cache_root = caches / (f"cold-{time.monotonic_ns()}" if cache == "cold" else "warm")
    env = {**os.environ, "UV_CACHE_DIR": str(cache_root / "uv"), "PIP_CACHE_DIR": str(cache_root / "pip"),
           "PIP_CONFIG_FILE": os.devnull, "LABKIT_HOME": str(work / f"home-{time.monotonic_ns()}"),
           "MAKEFLAGS": ""}
    timings = clone / "setup-timings.json"
    t0 = time.perf_counter()
    subprocess.run(["make", "--no-print-directory", "setup", f"INSTALLER={installer}",
                    f"SETUP_TIMINGS={timings}"], cwd=clone, env=env, check=True, stdout=subprocess.DEVNULL)
    setup_s = time.perf_counter() - t0
    subprocess.run(["make", "--no-print-directory", "models"], cwd=clone, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    total_s = time.perf_counter() - t0
    steps = json.loads(timings.read_text()) if timings.exists() else {}
    if cache == "cold":
        shutil.rmtree(cache_root, ignore_errors=True)
    shutil.rmtree(env["LABKIT_HOME"], ignore_errors=True)
    shutil.rmtree(clone, ignore_errors=True)
    return {"setup_s": setup_s, "models_s": total_s - setup_s, "total_s": total_s, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=REPO / "runs" / "bench" / "setup.json")
    p.add_argument("--plot", type=Path, help="save a bar chart of the medians (PNG)")
    args = p.parse_args()
    if subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip():
        print("note: uncommitted changes are not measured (each run clones HEAD)")
    runs: dict[str, list[dict]] = {f"{i}/{c}": [] for i, c in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="labkit-bench-setup-") as tmp:
        caches, work = Path(tmp) / "caches", Path(tmp) / "work"
        work.mkdir(parents=True)
        for installer in ("uv", "pip"):  # fill the warm caches once, unmeasured
            print(f"warming the {installer} cache ...", flush=True)
            one_run(installer, "warm", caches, work)
        for rep in range(args.repeats):
            for installer, cache in CONFIGS:
                row = one_run(installer, cache, caches, work)
                runs[f"{installer}/{cache}"].append(row)
                print(f"[{rep + 1}/{args.repeats}] {installer} {cache}: setup {row['setup_s']:.0f} s, "
                      f"models {row['models_s']:.0f} s, total {row['total_s']:.0f} s", flush=True)
    summary = {key: {"median_s": statistics.median(r["total_s"] for r in rows),
                     "range_s": [min(r["total_s"] for r in rows), max(r["total_s"] for r in rows)],
                     "setup_median_s": statistics.median(r["setup_s"] for r in rows),
                     "models_median_s": statistics.median(r["models_s"] for r in rows)}
               for key, rows in runs.items()}
    ratios = {cache: statistics.median(p["total_s"] / u["total_s"]
                                       for p, u in zip(runs[f"pip/{cache}"], runs[f"uv/{cache}"], strict=True))
              for cache in ("warm", "cold")}
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "summary": summary, "pip_over_uv": ratios, "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print("\n| installer | cache | fresh clone to labs ready, median (range) | of which set-up | models |")
    print("|---|---|---:|---:|---:|")
    for key, s in summary.items():
        installer, cache = key.split("/")
        print(f"| {installer} | {cache} | {s['median_s']:.0f} s ({s['range_s'][0]:.0f}-{s['range_s'][1]:.0f}) "
              f"| {s['setup_median_s']:.0f} s | {s['models_median_s']:.0f} s |")
    print(f"\npip takes {ratios['warm']:.1f}x uv's time with a warm cache, {ratios['cold']:.1f}x with a cold one "
          f"(medians of per-round ratios). Raw: {args.output}")
    if args.plot:
        plot(summary, args.plot)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    labels = list(summary)
    medians = [summary[k]["median_s"] for k in labels]
    low = [m - summary[k]["range_s"][0] for k, m in zip(labels, medians, strict=True)]
    high = [summary[k]["range_s"][1] - m for k, m in zip(labels, medians, strict=True)]
    colors = ["tab:blue" if k.startswith("uv") else "tab:orange" for k in labels]
    ax.barh(labels, medians, xerr=[low, high], color=colors, capsize=4)
    for goal, cache in ((120, "warm goal"), (300, "cold goal")):
        ax.axvline(goal, color="grey", linestyle="--", linewidth=1)
        ax.text(goal, -0.7, f" {cache} {goal // 60} min", color="grey", fontsize=8)
    ax.set_xlabel("seconds from a fresh clone to labs ready (make setup + make models)")
    ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
