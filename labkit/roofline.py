"""How fast could generation be here? Measure the machine, draw its roofline, compare the paths.

A decode step reads every weight once (memory-bound at small batches) and does about
2 x parameters FLOPs per generated token (compute-bound at large batches). With the machine's
measured memory read bandwidth ``B`` (GB/s) and matmul speed ``F`` (GFLOP/s), a batch of ``b``
rows cannot generate faster than ``min(b x B / weight_bytes, F / flops_per_token)`` tokens/s.
``labkit bench generate`` prints measured tokens/s as a fraction of that ceiling.

Example:
    >>> from labkit import roofline
    >>> machine = roofline.measure_machine()                  # doctest: +SKIP
    >>> roofline.ceiling_tokens_per_s(lm.model, machine, batch_size=1)   # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Machine:
    """Ceilings measured on the spot (medians of several runs)."""

    matmul_gflops: float  # best large matmul, in the model's dtype
    read_gbs: float  # streaming read of a tensor much larger than the caches
    dtype: str
    threads: int
    device: str

    def as_dict(self) -> dict:
        return asdict(self)


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-touch page faults, kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_machine(*, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", repeats: int = 5,
                    read_mb: int = 512) -> Machine:
    """Matmul GFLOP/s (square 2048 and 4096, and a 256-row product shaped like a batched layer: best
    of the three) and memory read GB/s (sum over ``read_mb`` of float32, filled so pages are real)."""
    gflops = 0.0
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for m, k, n in ((2048, 2048, 2048), (4096, 4096, 4096), (256, 576, 1536)):
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        seconds = _median_seconds(lambda a=a, b=b: (a @ b, sync()), repeats)
        gflops = max(gflops, 2 * m * k * n / seconds / 1e9)
    x = torch.rand(read_mb * 2**20 // 4, device=device)
    read = x.numel() * 4 / _median_seconds(lambda: float(x.sum()), repeats) / 1e9
    return Machine(matmul_gflops=round(gflops, 1), read_gbs=round(read, 1), dtype=str(dtype).removeprefix("torch."),
                   threads=torch.get_num_threads(), device=device)


def model_costs(model) -> dict:
    """Bytes read per decode step (all weights, once) and FLOPs per generated token (2 x each weight
    used in a matmul; the tied embedding counts once, as the output layer)."""
    seen, weight_bytes, matmul_params = set(), 0, 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        weight_bytes += p.numel() * p.element_size()
        if p.dim() == 2:
            matmul_params += p.numel()
    return {"weight_bytes": weight_bytes, "flops_per_token": 2 * matmul_params}


def ceiling_tokens_per_s(model, machine: Machine, *, batch_size: int) -> dict:
    """The memory-bound and compute-bound ceilings for ``batch_size`` rows, and the lower of them."""
    costs = model_costs(model)
    memory = batch_size * machine.read_gbs * 1e9 / costs["weight_bytes"]
    compute = machine.matmul_gflops * 1e9 / costs["flops_per_token"]
    return {"memory_bound": memory, "compute_bound": compute, "ceiling": min(memory, compute),
            "bound": "memory" if memory < compute else "compute"}


def bench_generate(paths: dict[str, object], prompts: Sequence[str], *, batch_sizes: Sequence[int] = (1, 8, 64),
                   max_new_tokens: int = 64, repeats: int = 3, machine: Machine | None = None,
                   progress: bool = True) -> list[dict]:
    """Tokens/s and ms per step for each path (name -> ChatModel) at each batch size, in one run.

    Every row generates exactly ``max_new_tokens`` (end-of-turn held back); times include prefill,
    as a user sees them. Each (path, batch) runs once to warm up (and compile: that time is
    reported as ``warmup_s``), then ``repeats`` times; median, min and max are reported, with the
    fraction of the machine's ceiling when ``machine`` is given. ``same_tokens_as`` counts the rows
    whose greedy tokens equal the first path's.
    """
    if not prompts:
        raise ValueError("bench_generate needs at least one prompt")
    rows, reference = [], {}
    bar = tqdm(total=len(paths) * len(batch_sizes) * (repeats + 1), desc="bench generate", disable=not progress)
    for bs in batch_sizes:
        batch = [prompts[i % len(prompts)] for i in range(bs)]
        for name, lm in paths.items():
            t0 = time.perf_counter()
            first = lm.generate(batch, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                batch_size=bs, progress=False)
            warmup = time.perf_counter() - t0
            bar.update()
            times = []
            for _ in range(repeats):
                gens = lm.generate(batch, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                   batch_size=bs, progress=False)
                times.append(gens[0].seconds)
                bar.update()
            texts = [g.text for g in first]
            reference.setdefault(bs, texts)
            tps = [bs * max_new_tokens / t for t in times]
            row = {"path": name, "batch_size": bs, "tokens_per_s": statistics.median(tps), "min": min(tps),
                   "max": max(tps), "ms_per_step": 1e3 * statistics.median(times) / max_new_tokens,
                   "warmup_s": warmup, "same_tokens_as_first_path": sum(
                       a == b for a, b in zip(texts, reference[bs], strict=True)), "rows": bs}
            if machine is not None:
                ceil = ceiling_tokens_per_s(lm.model, machine, batch_size=bs)
                row.update(ceiling=ceil["ceiling"], bound=ceil["bound"],
                           fraction_of_ceiling=row["tokens_per_s"] / ceil["ceiling"])
            rows.append(row)
    bar.close()
    return rows


def format_table(rows: Sequence[dict], machine: Machine | None = None) -> str:
    lines = []
    if machine is not None:
        lines.append(f"machine: {machine.matmul_gflops:.0f} GFLOP/s {machine.dtype} matmul, "
                     f"{machine.read_gbs:.1f} GB/s memory read, {machine.threads} threads ({machine.device})")
    lines.append(f"{'path':>8} {'batch':>5} {'tok/s':>8} {'(min-max)':>15} {'ms/step':>8} {'ceiling':>8} "
                 f"{'of ceil':>8} {'warm-up s':>9} {'same tokens':>11}")
    for r in rows:
        ceil = f"{r['ceiling']:8.0f} {100 * r['fraction_of_ceiling']:7.0f}%" if "ceiling" in r else f"{'':8} {'':8}"
        lines.append(f"{r['path']:>8} {r['batch_size']:5d} {r['tokens_per_s']:8.1f} "
                     f"{'(' + format(r['min'], '.0f') + '-' + format(r['max'], '.0f') + ')':>15} "
                     f"{r['ms_per_step']:8.1f} {ceil} {r['warmup_s']:9.1f} "
                     f"{str(r['same_tokens_as_first_path']) + '/' + str(r['rows']):>11}")
    return "\n".join(lines)


def plot_roofline(rows: Sequence[dict], model, machine: Machine, *, ax=None):
    """Tokens/s against batch size (log-log) for each path, under both ceilings."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    sizes = sorted({r["batch_size"] for r in rows})
    grid = [2 ** (i / 4) for i in range(0, 4 * max(sizes).bit_length() + 1)]
    ceil = [ceiling_tokens_per_s(model, machine, batch_size=b) for b in grid]
    ax.plot(grid, [c["memory_bound"] for c in ceil], "--", color="grey",
            label=f"memory ceiling ({machine.read_gbs:.0f} GB/s)")
    ax.axhline(ceil[0]["compute_bound"], linestyle=":", color="black",
               label=f"compute ceiling ({machine.matmul_gflops:.0f} GFLOP/s)")
    for path in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == path]
        ax.errorbar([r["batch_size"] for r in mine], [r["tokens_per_s"] for r in mine], marker="o",
                    yerr=[[r["tokens_per_s"] - r["min"] for r in mine], [r["max"] - r["tokens_per_s"] for r in mine]],
                    label=path, capsize=3)
    ax.set(xscale="log", yscale="log", xlabel="batch size (rows generated together)",
           ylabel="generated tokens / s", title="Generation speed against this machine's roofline")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_ylim(top=2 * ceil[0]["compute_bound"])
    ax.legend(fontsize=8)
    return ax


# Which profiler op names belong to which part of a step (CPU and CUDA kernels alike).
_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "mkldnn::_linear_pointwise")
_ATTENTION_OPS = ("aten::bmm", "aten::_softmax", "aten::softmax", "aten::scaled_dot_product_attention",
                  "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_efficient_attention",
                  "aten::_scaled_dot_product_flash_attention")


def profile_generation(lm, prompt: str, *, max_new_tokens: int = 32) -> dict[str, float]:
    """Run one generation under ``torch.profiler`` and split its wall time into seconds of:
    matmuls (reading the weights), attention, other tensor ops, and everything that is not a
    tensor op at all (Python, transformers' generate loop, dispatch). Example:

        >>> profile_generation(lm, "Hello", max_new_tokens=16)   # doctest: +SKIP
        {'matmul (weights)': 0.41, 'attention': 0.05, 'other tensor ops': 0.12, 'Python and dispatch': 0.22}
    """
    from torch.profiler import ProfilerActivity, profile

    lm.generate(prompt, max_new_tokens=2, progress=False)  # warm-up outside the measurement
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        lm.generate(prompt, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, progress=False)
        wall = time.perf_counter() - t0
    parts = {"matmul (weights)": 0.0, "attention": 0.0, "other tensor ops": 0.0}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key in _MATMUL_OPS:
            parts["matmul (weights)"] += seconds
        elif event.key in _ATTENTION_OPS:
            parts["attention"] += seconds
        elif event.key.startswith("aten::") or "cpp_fused" in event.key or "CompiledFxGraph" in event.key:
            parts["other tensor ops"] += seconds
    parts["Python and dispatch"] = max(0.0, wall - sum(parts.values()))
    return {k: v / max_new_tokens for k, v in parts.items()}  # seconds per generated token (= per step at batch 1)
