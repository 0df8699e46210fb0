"""Ray Data batch inference against plain loops, in one harness: same prompts, same model, same tokens.

Methods:

- ``loop``: one prompt at a time, the way a first script does it.
- ``batched``: one process, prompts sorted by length and run ``batch_size`` at a time
  (the same order ``run_batch`` uses).
- ``ray-1`` / ``ray-2``: ``labkit.batch.run_batch`` with 1 or 2 actors (the CPUs split between them).

Each method runs in a fresh Python process, so memory and warm caches do not leak from one to the
next. The clock starts before torch is imported and the model loaded (a job pays for both; Ray also
for starting actors) and stops at the last result; every row generates exactly ``max_new_tokens`` tokens.

Example:
    >>> from labkit.baselines import compare_batch_methods
    >>> rows = compare_batch_methods(n=32, max_new_tokens=16)   # doctest: +SKIP
    >>> [r["method"] for r in rows]                             # doctest: +SKIP
    ['loop', 'batched', 'ray-1', 'ray-2']
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

METHODS = ("loop", "batched", "ray-1", "ray-2")


class PeakMemory:
    """Samples the resident memory of this process and all its children (Ray's workers included)."""

    def __init__(self, every: float = 0.1):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a worker that just exited
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def measure(method: str, *, source: str = "prompts_500", n: int = 256, max_new_tokens: int = 32,
            batch_size: int = 32, profile: str | None = None) -> dict:
    """Run one method in this process and return its figures (use ``compare_batch_methods`` to run all)."""
    from labkit import data

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    prompts = [r["prompt"] for r in data.read_prompts(source)][:n]
    if len(prompts) < n:
        raise ValueError(f"{source} has only {len(prompts)} prompts; ask for n <= {len(prompts)}")
    kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    first = None
    if method.startswith("ray"):
        from labkit.batch import run_batch
        from labkit.ray_runtime import init_ray

        init_ray(dashboard=False)  # cluster start-up is not part of the job (a notebook has one running)
        tmp = tempfile.TemporaryDirectory()
        src = Path(tmp.name) / "in.jsonl"
        src.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(prompts)))
        with tmp, PeakMemory() as mem:
            t0 = time.perf_counter()
            report = run_batch(src, src.parent / "out", profile=profile, actors=int(method[-1]), batch_size=batch_size,
                               progress=False, **kw)
            seconds = time.perf_counter() - t0
        first, tokens = report.time_to_first_result, report.new_tokens
    else:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            from labkit.llm import load_chat_model  # importing torch is part of the job (Ray's actors pay it too)

            lm = load_chat_model(profile)
            tokens = 0
            step = 1 if method == "loop" else batch_size
            if method == "batched":  # similar lengths side by side, as run_batch does: little padding
                prompts = sorted(prompts, key=len)
            for start in range(0, len(prompts), step):
                gens = lm.generate(prompts[start:start + step], batch_size=step, progress=False, **kw)
                first = first if first is not None else time.perf_counter() - t0
                tokens += sum(g.new_tokens for g in gens)
            seconds = time.perf_counter() - t0
    return {"method": method, "prompts": n, "batch_size": 1 if method == "loop" else batch_size,
            "seconds": seconds, "prompts_per_s": n / seconds, "tokens_per_s": tokens / seconds,
            "new_tokens": tokens, "time_to_first_result": first, "peak_mem_mb": mem.peak / 2**20}


def compare_batch_methods(methods=METHODS, *, n: int = 256, max_new_tokens: int = 32, batch_size: int = 32,
                          loop_n: int | None = None, source: str = "prompts_500", profile: str | None = None,
                          progress: bool = True) -> list[dict]:
    """Measure each method in its own process, one after the other (never two at once: they share the CPUs).

    ``loop_n`` runs the one-at-a-time loop on fewer prompts (it is the slow one; its tokens/s
    does not depend on how many prompts it runs).
    """
    from tqdm.auto import tqdm

    rows = []
    for method in tqdm(list(methods), desc="methods", disable=not progress):
        count = loop_n if method == "loop" and loop_n else n
        cmd = [sys.executable, "-m", "labkit.baselines", method, "--n", str(count), "--max-new-tokens",
               str(max_new_tokens), "--batch-size", str(batch_size), "--source", source]
        if profile:
            cmd += ["--profile", profile]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def plot_methods(rows: list[dict]):
    """Bar charts of tokens/s, time to first result and peak memory per method."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    names = [r["method"] for r in rows]
    for ax, key, label in [(axes[0], "tokens_per_s", "generated tokens/s (higher is better)"),
                           (axes[1], "time_to_first_result", "time to first result, s"),
                           (axes[2], "peak_mem_mb", "peak memory, MB (driver + workers)")]:
        bars = ax.bar(names, [r[key] for r in rows], color=["#999", "#58a", "#e83", "#c51"][: len(rows)])
        ax.bar_label(bars, fmt="%.0f" if key != "time_to_first_result" else "%.1f")
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    return fig


def _main() -> None:
    p = argparse.ArgumentParser(description="measure one batch-inference method (prints one JSON line)")
    p.add_argument("method", choices=METHODS)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--source", default="prompts_500")
    p.add_argument("--profile", choices=["cpu", "gpu"])
    a = p.parse_args()
    row = measure(a.method, source=a.source, n=a.n, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                  profile=a.profile)
    print(json.dumps(row))


if __name__ == "__main__":
    _main()
