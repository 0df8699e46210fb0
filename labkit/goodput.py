"""Effective training time ratio (ETTR): how much of a training job's wall time moved it forward.

ETTR = productive training time / wall time, ByteRobust's headline metric. What takes the rest:

- every checkpoint's **stall** (the loop waiting on the save; ``labkit.checkpointing``),
- per failure, the **restart** (detect it, replace the workers, load the checkpoint) and the
  **recomputed** steps: those done since the last checkpoint, lost and done again.

``measured`` splits a real ``finetune`` run into those parts. ``expected`` is the first-order model
that trades them off (Young 1974; Daly 2006): checkpoint every ``T`` seconds of work at a stall of
``C`` each, with failures every ``M`` seconds on average, each costing a restart ``R`` plus half an
interval of lost work::

    ETTR ~ T / (T + C) * (1 - (R + (T + C) / 2) / M)

Frequent checkpoints pay ``C`` often; rare ones lose more per failure. The best ``T`` is about
``sqrt(2 C M)`` (``best_interval_s``). A job's ``M`` shrinks as it grows: a thousand times the GPUs,
a thousandth of the time between failures (``mtbf_at``), which is why a 10,000-GPU job lives or
dies by its restart and checkpoint times.

Example:
    >>> round(expected(step_s=1.0, checkpoint_every=100, stall_s=10.0, restart_s=600.0, mtbf_s=3 * 3600), 3)
    0.854
    >>> round(best_interval_s(stall_s=10.0, mtbf_s=3 * 3600))
    465
"""

from __future__ import annotations

import itertools
import math

# Published figures the lab puts beside its own (sources in docs/benchmarks.md).
BYTEROBUST_ETTR = 0.97  # Wan et al., "Robust LLM Training Infrastructure at ByteDance" (2025): 3 months, 9,600 GPUs
BYTEROBUST_GPUS = 9_600
BYTECHECKPOINT_STALL_REDUCTION = 54.20  # ByteCheckpoint (NSDI'25): average checkpoint-stall reduction
# Llama 3 (Llama Team, 2024), section 3.3.4: 419 unexpected interruptions in 54 days on 16,384 H100s.
LLAMA3_INTERRUPTIONS, LLAMA3_DAYS, LLAMA3_GPUS = 419, 54, 16_384


def llama3_mtbf_s() -> float:
    """Mean time between unexpected interruptions of Llama 3's 16,384-GPU job, in seconds (3.1 h)."""
    return LLAMA3_DAYS * 86400 / LLAMA3_INTERRUPTIONS


def mtbf_at(gpus: int, *, reference_gpus: int = LLAMA3_GPUS, reference_mtbf_s: float | None = None) -> float:
    """A job's mean time between failures on ``gpus`` GPUs, if failures grow with the GPU count
    (each GPU, with its share of hosts and links, fails independently at the reference rate)."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus!r}")
    return (reference_mtbf_s or llama3_mtbf_s()) * reference_gpus / gpus


def expected(*, step_s: float, checkpoint_every: int, stall_s: float, restart_s: float, mtbf_s: float) -> float:
    """ETTR of a job that checkpoints every ``checkpoint_every`` steps (first-order model above)."""
    for label, value in (("step_s", step_s), ("mtbf_s", mtbf_s)):
        if not value > 0:
            raise ValueError(f"{label} must be positive, got {value!r}")
    if checkpoint_every < 1 or stall_s < 0 or restart_s < 0:
        raise ValueError("checkpoint_every must be >= 1 and stall_s, restart_s >= 0")
    work = checkpoint_every * step_s
    interval = work + stall_s
    return max(0.0, work / interval * (1 - (restart_s + interval / 2) / mtbf_s))


def best_interval_s(*, stall_s: float, mtbf_s: float) -> float:
    """Young's optimum: seconds of work between checkpoints that maximise ETTR, ``sqrt(2 C M)``."""
    return math.sqrt(2 * stall_s * mtbf_s)


def measured(result) -> dict:
    """Split a ``FinetuneResult``'s wall time into productive, checkpoint stall, restart,
    recomputed and other (reporting, the metrics all-reduce); ``ettr`` = productive / wall.

    The clock starts when the first step began, not when the job was submitted: the one-off
    start-up (Ray, processes, loading the model) is amortised over a months-long job, whereas
    here it would dwarf everything else.
    """
    rows = sorted([*result.history, *result.extra.get("replaced", [])], key=lambda r: r["received_s"])
    if not rows:
        raise ValueError("the run has no steps to measure")
    # A row arrives after its step and its checkpoint's stall (the save comes before the report).
    start = rows[0]["received_s"] - rows[0]["step_s"] - rows[0].get("stall_s", 0.0)
    wall = rows[-1]["received_s"] - start
    productive = sum(r["step_s"] for r in result.history)
    recomputed = sum(r["step_s"] for r in result.extra.get("replaced", []))
    stall = sum(r.get("stall_s", 0.0) for r in rows)
    restart = 0.0
    for before, after in itertools.pairwise(rows):
        if after.get("pids", before.get("pids")) != before.get("pids") or after["step"] <= before["step"]:
            # a new worker group (its processes differ, or it went back to a checkpoint): the gap
            # between the last row before and the first step after is the restart
            restart += after["received_s"] - after["step_s"] - after.get("stall_s", 0.0) - before["received_s"]
    other = wall - productive - recomputed - stall - restart
    return {"wall_s": wall, "productive_s": productive, "stall_s": stall, "restart_s": restart,
            "recomputed_s": recomputed, "other_s": other, "ettr": productive / wall,
            "failures": result.restarts}
