"""Two models on one device, measured: what each holds in memory and what each gets done.

GPU sharing (Ray's ``num_gpus=0.5``, NVIDIA time-slicing, VKE mGPU) puts two models on one
device. Memory adds up: both sets of weights must fit at once. Compute is taken in turns: when
both are busy each gets about half the device, so sharing pays when the models are idle much of
the time (a chat service between bursts), not when both are saturated. This module measures that
on a device we have: one CPU core, shared by two processes the way time-slicing shares a GPU
(each process pinned to the same core, each with one thread), against one process alone on it.

Processes, not threads: two models in one Python process would share one interpreter lock and
one thread pool, which is not how two replicas share a GPU.

Example:
    >>> from labkit.device_sharing import measure_sharing
    >>> result = measure_sharing(seconds=5)                          # doctest: +SKIP
    >>> result["together_tokens_per_s"], result["alone_tokens_per_s"]  # doctest: +SKIP
    ([11.5, 11.5], 24.5)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

PROMPTS = ["Explain in two sentences why a GPU can be shared by two models.",
           "写一句话介绍 Ray Serve。", "List three things that make a workshop laptop slow."]


def _generate_for(model: str | None, profile: str | None, core: int, seconds: float, max_new_tokens: int,
                  barrier, results) -> None:
    import psutil
    import torch

    os.sched_setaffinity(0, {core})  # one "device" for every process of the measurement
    torch.set_num_threads(1)
    from labkit.llm import load_chat_model

    lm = load_chat_model(profile, model=model)
    lm.generate(PROMPTS[:1], max_new_tokens=4, progress=False)  # warm: first calls allocate
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    barrier.wait()  # everyone loaded: start together
    tokens, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        out = lm.generate([PROMPTS[i % len(PROMPTS)]], max_new_tokens=max_new_tokens, progress=False)
        tokens += sum(g.new_tokens for g in out)
        i += 1
    elapsed = time.perf_counter() - t0
    results.put({"tokens_per_s": tokens / elapsed, "weights_bytes": weights,
                 "rss_bytes": psutil.Process().memory_info().rss})


def _run(copies: int, *, model, profile, core, seconds, max_new_tokens) -> list[dict]:
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no thread pools inherited
    barrier, results = ctx.Barrier(copies), ctx.Queue()
    procs = [ctx.Process(target=_generate_for, args=(model, profile, core, seconds, max_new_tokens, barrier, results))
             for _ in range(copies)]
    for p in procs:
        p.start()
    try:
        rows = [results.get(timeout=600) for _ in procs]
    finally:
        for p in procs:  # ours, by handle
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return rows


def measure_sharing(*, model: str | None = None, profile: str | None = None, seconds: float = 10.0,
                    max_new_tokens: int = 32, core: int | None = None) -> dict:
    """The chat model alone on one CPU core, then two copies sharing that core.

    Returns ``alone_tokens_per_s``, ``together_tokens_per_s`` (one per copy), ``share`` (each
    copy's rate over the rate alone: 0.5 means a fair half), ``total_ratio`` (both copies' sum over
    alone) and the memory of each copy (``weights_mb``, ``rss_mb``: its whole process).
    """
    if not 0 < seconds <= 600:
        raise ValueError(f"seconds must be between 0 and 600, got {seconds!r}")
    if not (isinstance(max_new_tokens, int) and 1 <= max_new_tokens <= 512):
        raise ValueError(f"max_new_tokens must be a whole number from 1 to 512, got {max_new_tokens!r}")
    allowed = sorted(os.sched_getaffinity(0))
    core = allowed[0] if core is None else core
    if core not in allowed:
        raise ValueError(f"core {core} is not one this process may use ({allowed})")
    kw = dict(model=model, profile=profile, core=core, seconds=seconds, max_new_tokens=max_new_tokens)
    alone = _run(1, **kw)[0]
    together = _run(2, **kw)
    rates = [r["tokens_per_s"] for r in together]
    return {"alone_tokens_per_s": alone["tokens_per_s"], "together_tokens_per_s": rates,
            "share": [r / alone["tokens_per_s"] for r in rates], "total_ratio": sum(rates) / alone["tokens_per_s"],
            "weights_mb": alone["weights_bytes"] / 2**20, "rss_mb": [r["rss_bytes"] / 2**20 for r in together],
            "core": core, "seconds": seconds}
