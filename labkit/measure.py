"""The estimator's quantities, measured on a real model: bytes of weights, KV tensors, a training
step's peak, and FLOPs counted op by op. ``labkit.estimate`` predicts; this checks.

Peak memory of a CPU training step has no ``torch.cuda.max_memory_allocated``: PyTorch's
``MemTracker`` (``torch.distributed._tools``, the tool FSDP's memory estimates are tested with)
watches every tensor that is created and freed during the step, on any device, and files each as
a parameter, gradient, optimizer state, activation or temporary. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls and attention as they run.

Example:
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")          # doctest: +SKIP
    >>> training_step_peak(model, batch_size=2, seq_len=128)["total"] / 2**20    # doctest: +SKIP
    2450.3
"""

from __future__ import annotations

import time

import torch


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters the model holds (a tied output head counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _random_batch(model: torch.nn.Module, batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator)


@torch.no_grad()
def kv_cache_bytes(model: torch.nn.Module, *, batch_size: int, seq_len: int) -> int:
    """Run a real forward over ``seq_len`` tokens and add up the cache's key and value tensors."""
    ids = _random_batch(model, batch_size, seq_len)
    cache = model(input_ids=ids, use_cache=True).past_key_values
    total = 0
    for layer in cache.layers:
        total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def training_step_peak(model: torch.nn.Module, *, batch_size: int, seq_len: int, steps: int = 2,
                       lr: float = 1e-5) -> dict[str, float]:
    """Peak bytes during full training steps (forward, backward, AdamW step), by kind.

    The first step creates Adam's states, so the peak that repeats is that of the later steps;
    ``steps`` >= 2 measures one of those. The model's weights are changed by the steps: pass a
    copy you can spare. Returns ``weights``, ``gradients``, ``optimizer``, ``activations``,
    ``temporary`` and ``total`` at the peak, plus ``seconds_per_step``.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = _random_batch(model, batch_size, seq_len)
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    seconds = []
    with tracker:
        for _ in range(steps):
            tracker.reset_mod_stats()
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - t0)
    model.eval()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    by_kind = {str(kind).rsplit(".", 1)[-1]: float(n) for kind, n in peak.items()}
    return {"weights": by_kind.get("PARAM", 0) + by_kind.get("BUFFER", 0), "gradients": by_kind.get("GRAD", 0),
            "optimizer": by_kind.get("OPT", 0), "activations": by_kind.get("ACT", 0),
            "temporary": by_kind.get("TEMP", 0) + by_kind.get("OTH", 0), "total": by_kind["Total"],
            "seconds_per_step": min(seconds[1:] or seconds)}


def training_step_flops(model: torch.nn.Module, *, batch_size: int, seq_len: int) -> int:
    """FLOPs of one forward and backward pass, counted by PyTorch as the ops run.

    Attention runs in transformers' eager form for the count (two batched matmuls, which the
    counter sees; it has no formula for the CPU flash-attention kernel) and is switched back after.
    """
    from torch.utils.flop_counter import FlopCounterMode

    ids = _random_batch(model, batch_size, seq_len)
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(input_ids=ids, labels=ids).loss.backward()
    finally:
        model.set_attn_implementation(before)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
