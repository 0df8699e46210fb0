"""What ``labkit.cpu_runtime``'s two fixes are worth, measured in one run on this machine.

Run with ``.venv/bin/python benchmarks/bench_cpu_runtime.py``. The cpu profile's chat model in the
profile's dtype; every setting alternates with its counterpart ``--repeats`` times (medians and
ranges), so drift on a shared machine hits both alike:

1. **Which thread computes.** One forward of the decoder over one token per row (a decode step's
   weight reads) at batch 1 and 16, on the thread that loaded the model; on a second thread while
   the first one's OpenMP pool is idle; and on a second thread after the first released its pool
   (``release_openmp_threads``).
2. **Packed weights.** The same forward with plain ``nn.Linear`` layers and with pre-packed oneDNN
   weights (``pack_linear_weights``), on the loading thread. Skipped where nothing is packed (fp32).
3. **The engine end to end.** The serving benchmark's closed loop in process (48 requests, 16 at a
   time, ``heavy_tailed_lengths(48, seed=11)``, prompts from ``datasets/prompts_500``) with the
   engine's loop on a thread started as ``Engine.start()`` does (the loading thread releases its
   pool first) and on a plain thread (it does not).

Raw results go to ``runs/bench/cpu_runtime.json``. Never run it beside other heavy work.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from labkit.cpu_runtime import pack_linear_weights, release_openmp_threads, unpack_linear_weights  # noqa: E402
from labkit.data import read_prompts  # noqa: E402
from labkit.engine import Engine, SamplingParams  # noqa: E402
from labkit.llm import load_chat_model  # noqa: E402
from labkit.loadtest import heavy_tailed_lengths  # noqa: E402


def on_thread(fn):
    """Run ``fn`` on a new thread and return its result."""
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("value", fn()))
    worker.start()
    worker.join()
    return out["value"]


def forward_ms(lm, batch: int, steps: int = 20) -> float:
    """Median milliseconds of one decoder forward over one token per row (no KV cache)."""
    decoder, ids = lm.model.get_decoder(), torch.full((batch, 1), 42)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            decoder(input_ids=ids)
        for _ in range(steps):
            t0 = time.perf_counter()
            decoder(input_ids=ids)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def closed_loop_seconds(lm, prompts: list[str], lengths: list[int], *, release: bool) -> dict:
    """The closed loop of bench_serving in process: 16 client threads, each sending its next request
    when its last one ends; the engine's loop on its own thread."""
    engine = Engine(lm.model, lm.tokenizer, max_batch=16, max_context=1024)
    if release:
        engine.start()  # releases this thread's pool, then starts the loop
    else:
        engine._thread = threading.Thread(target=engine._loop, daemon=True)  # the same loop, no release
        engine._thread.start()
    engine.submit(lm.format_chat("Hello"), SamplingParams(max_tokens=4)).result()  # warm-up
    engine.timeline.clear()
    todo, lock = iter(range(len(lengths))), threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            n = lengths[i]
            engine.submit(lm.format_chat(prompts[i]), SamplingParams(max_tokens=n, min_tokens=n)).result()

    t0 = time.perf_counter()
    clients = [threading.Thread(target=client) for _ in range(16)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    seconds = time.perf_counter() - t0
    engine.stop()
    decode = [r["seconds"] for r in engine.timeline if r["decode_rows"] and not r["prefill_tokens"]]
    return {"seconds": seconds, "tokens_per_s": sum(lengths) / seconds,
            "decode_step_ms_p50": statistics.median(decode) * 1e3, "steps": len(engine.timeline)}


def median_range(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(r: dict, unit: str = "") -> str:
    return f"{r['median']:.1f}{unit} [{r['min']:.1f}, {r['max']:.1f}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loop-repeats", type=int, default=2, help="rounds of the engine's closed loop")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "cpu_runtime.json")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lm = load_chat_model()
    dtype = str(lm.placement.dtype).removeprefix("torch.")
    results: dict = {"python": platform.python_version(), "torch": torch.__version__, "dtype": dtype,
                     "threads": torch.get_num_threads()}

    # 1. Which thread computes (packed weights throughout, as ChatModel loads them).
    threads: dict[str, list[float]] = {}
    for batch in (1, 16):
        for _ in range(args.repeats):
            forward_ms(lm, batch)  # the loading thread has an active pool again
            threads.setdefault(f"loading thread, batch {batch}", []).append(forward_ms(lm, batch))
            threads.setdefault(f"second thread, batch {batch}", []).append(on_thread(lambda b=batch: forward_ms(lm, b)))
            release_openmp_threads()
            threads.setdefault(f"second thread after release, batch {batch}", []).append(
                on_thread(lambda b=batch: forward_ms(lm, b)))
    results["threads_ms"] = {k: median_range(v) for k, v in threads.items()}

    # 2. Packed against plain weights, on the loading thread.
    packing: dict[str, list[float]] = {}
    if pack_linear_weights(lm.model):
        for batch in (1, 16):
            for _ in range(args.repeats):
                unpack_linear_weights(lm.model)
                packing.setdefault(f"plain, batch {batch}", []).append(forward_ms(lm, batch))
                pack_linear_weights(lm.model)
                packing.setdefault(f"packed, batch {batch}", []).append(forward_ms(lm, batch))
    results["packing_ms"] = {k: median_range(v) for k, v in packing.items()}

    # 3. The engine's closed loop, with and without the release.
    prompts = [row["prompt"] for row in read_prompts("prompts_500")]
    lengths = heavy_tailed_lengths(48, seed=11)
    loops: dict[str, list[dict]] = {"released": [], "not released": []}
    for _ in range(args.loop_repeats):
        forward_ms(lm, 1)  # give the loading thread its pool back, as a notebook cell would
        loops["not released"].append(closed_loop_seconds(lm, prompts, lengths, release=False))
        forward_ms(lm, 1)
        loops["released"].append(closed_loop_seconds(lm, prompts, lengths, release=True))
    results["closed_loop"] = {k: {m: median_range([r[m] for r in v]) for m in v[0]} for k, v in loops.items()}

    print(f"# cpu runtime: {dtype}, {results['threads']} torch threads, torch {torch.__version__}")
    for k, v in results["threads_ms"].items():
        print(f"forward on the {k}: {fmt(v, ' ms')}")
    for batch in (1, 16):
        slow = results["threads_ms"][f"second thread, batch {batch}"]["median"]
        fixed = results["threads_ms"][f"second thread after release, batch {batch}"]["median"]
        print(f"  batch {batch}: second thread / after release = {slow / fixed:.2f}x")
    for k, v in results["packing_ms"].items():
        print(f"forward, {k}: {fmt(v, ' ms')}")
    if packing:
        for batch in (1, 16):
            ratio = results["packing_ms"][f"plain, batch {batch}"]["median"] / \
                results["packing_ms"][f"packed, batch {batch}"]["median"]
            print(f"  batch {batch}: plain / packed = {ratio:.2f}x")
    for k, v in results["closed_loop"].items():
        print(f"engine closed loop, pool {k}: {fmt(v['tokens_per_s'], ' tok/s')}, "
              f"decode step p50 {fmt(v['decode_step_ms_p50'], ' ms')}")
    speedup = results["closed_loop"]["released"]["tokens_per_s"]["median"] / \
        results["closed_loop"]["not released"]["tokens_per_s"]["median"]
    print(f"  released / not released, tokens/s: {speedup:.2f}x")
    args.out.write_text(json.dumps(results, indent=2))
    print(f"raw: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
