"""What a process pays before it does any work: imports, a local Ray cluster, a Ray actor with the model.

Every lab, test and Ray worker starts Python processes, and on a 2-core laptop their start-up is
a large part of a smoke run. This measures three start-ups, each in a fresh process, with the
environment's compiled bytecode ("compiled", what ``make setup`` leaves) and without it
("source": ``PYTHONPYCACHEPREFIX`` points at an empty folder and ``PYTHONDONTWRITEBYTECODE=1``,
so every module is compiled from source in every process, as it was before set-up compiled
site-packages; Ray's processes inherit both variables from the driver):

- ``import``: ``import torch, transformers`` and ``AutoModelForCausalLM``;
- ``ray start``: ``labkit.ray_runtime.init_ray(num_cpus=2, dashboard=False)`` until it returns;
- ``actors``: two Ray actors (one CPU each) that import torch and load the cpu profile's chat
  model, from creation until both answer (the fixed cost of each ``run_batch``).

The two settings alternate ``--repeats`` times, so drift in a shared machine hits both alike.
Raw results go to ``runs/bench/startup.json``; a Markdown table of medians and ranges and the
ratio source/compiled is printed for ``docs/benchmarks.md``.

    .venv/bin/python benchmarks/bench_startup.py --repeats 3
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

IMPORT = """
import time
t = time.perf_counter()
import torch, transformers
from transformers import AutoModelForCausalLM
print(time.perf_counter() - t)
"""

RAY_START = """
import time
from labkit.ray_runtime import init_ray, shutdown_ray
t = time.perf_counter()
init_ray(num_cpus=2, dashboard=False)
print(time.perf_counter() - t)
shutdown_ray()
"""

ACTORS = """
import time
from labkit.ray_runtime import init_ray, shutdown_ray
init_ray(num_cpus=2, dashboard=False)
import ray

@ray.remote(num_cpus=1)
class Loader:
    def __init__(self):
        from labkit.llm import load_chat_model
        self.lm = load_chat_model("cpu")

    def ready(self):
        return True

t = time.perf_counter()
actors = [Loader.remote() for _ in range(2)]
ray.get([a.ready.remote() for a in actors])
print(time.perf_counter() - t)
shutdown_ray()
"""

CASES = {"import": IMPORT, "ray start": RAY_START, "actors": ACTORS}


def one(code: str, setting: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    with tempfile.TemporaryDirectory(prefix="labkit-nopyc-") as empty:
        if setting == "source":
            env.update(PYTHONPYCACHEPREFIX=empty, PYTHONDONTWRITEBYTECODE="1")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{setting} run failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    a = p.parse_args()
    from tqdm.auto import tqdm

    runs = {case: {"compiled": [], "source": []} for case in a.cases}
    todo = [(case, setting) for _ in range(a.repeats) for case in a.cases for setting in ("compiled", "source")]
    for case, setting in tqdm(todo, desc="start-ups"):
        runs[case][setting].append(one(CASES[case], setting))
    out = REPO / "runs" / "bench" / "startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "runs": runs}, indent=2))

    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} s [{min(xs):.1f}, {max(xs):.1f}]"

    print(f"\n{a.repeats} runs each, {os.cpu_count()} CPUs; raw: {out.relative_to(REPO)}\n")
    print("| start-up | compiled bytecode | compiled from source | source / compiled |")
    print("|---|---:|---:|---:|")
    for case, r in runs.items():
        ratio = statistics.median(r["source"]) / statistics.median(r["compiled"])
        print(f"| {case} | {fmt(r['compiled'])} | {fmt(r['source'])} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
