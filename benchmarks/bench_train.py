"""Ray Train on this machine: throughput, checkpoint stalls, and ETTR with a worker killed.

Run with ``.venv/bin/python benchmarks/bench_train.py`` (26 minutes on 2 cores). Fine-tunes
the kit's chat model (SmolLM2-135M, fp32) on ``datasets/workshop_qa`` with ``labkit.finetune``:

1. **Throughput**: 1 worker (all the cores) vs 2 data-parallel workers (half each), tokens/s and
   MFU against each worker's measured matmul ceiling; medians over the steps after the first.
2. **Checkpoint stall**: blocking ``dcp.save`` vs ``dcp.async_save`` of the full training state
   (weights + AdamW moments, 1.6 GB), a checkpoint every 2 steps; median stall per checkpoint.
3. **ETTR**: rank 1 is SIGKILLed after step ``--kill-at``; Ray Train replaces the worker group and
   the run resumes from the last checkpoint. For checkpoint intervals 1 and 4 (blocking) and 4
   (async): wall time split into productive, stall, restart, recomputed and other
   (``labkit.goodput.measured``), next to ByteRobust's 97% ETTR on 9,600 GPUs.

Raw results go to ``runs/bench/train.json`` and a plot to ``runs/bench/train.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit import goodput  # noqa: E402
from labkit.finetune import finetune  # noqa: E402

COMMON = dict(save=False, batch_size=2, seq_len=128, lr=5e-5, progress=True)


def _killer(at: int):
    state = {}

    def on_step(row):
        if "pid" not in state and row["step"] == at:
            state["pid"] = row["pids"][1]
            os.kill(state["pid"], signal.SIGKILL)  # a worker this run started, by its pid
    return on_step


def _median_range(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--kill-at", type=int, default=7)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "train.json")
    args = p.parse_args()
    out: dict = {"base": args.base, "steps": args.steps, "kill_at": args.kill_at}
    storage = Path(tempfile.mkdtemp(prefix="labkit-bench-train-"))

    throughput = {}
    for workers in (1, 2):
        r = finetune(base=args.base, num_workers=workers, max_steps=6, checkpoint_every=100, storage=storage,
                     **COMMON)
        steady = r.history[1:]
        throughput[workers] = {"tokens_per_s": _median_range([h["tokens_per_s"] for h in steady]),
                               "mfu": _median_range([h["mfu"] for h in steady]),
                               "step_s": _median_range([h["step_s"] for h in steady])}
    out["throughput"] = throughput
    scaling = throughput[2]["tokens_per_s"]["median"] / throughput[1]["tokens_per_s"]["median"]
    out["two_over_one"] = scaling

    runs = {}
    for label, every, mode in (("blocking, every 1", 1, "blocking"), ("blocking, every 4", 4, "blocking"),
                               ("async, every 4", 4, "async")):
        r = finetune(base=args.base, num_workers=2, max_steps=args.steps, checkpoint_every=every,
                     checkpoint_mode=mode, storage=storage, on_step=_killer(args.kill_at), **COMMON)
        parts = goodput.measured(r)
        stalls = [h["stall_s"] for h in [*r.history, *r.extra["replaced"]] if h["stall_s"] > 0]
        step_s = statistics.median(h["step_s"] for h in r.history)
        model = goodput.expected(step_s=step_s, checkpoint_every=every, stall_s=statistics.median(stalls),
                                 restart_s=parts["restart_s"], mtbf_s=parts["wall_s"] / max(parts["failures"], 1))
        runs[label] = {**parts, "stalls": _median_range(stalls), "step_s": step_s, "model_ettr": model,
                       "redone": [h["step"] for h in r.extra["replaced"]], "every": every, "mode": mode}
    out["runs"] = runs
    stall_ratio = runs["blocking, every 4"]["stalls"]["median"] / runs["async, every 4"]["stalls"]["median"]
    out["blocking_over_async_stall"] = stall_ratio

    print(f"\nthroughput, batch {COMMON['batch_size']} x {COMMON['seq_len']} per worker (median of steps 2-6):")
    for w, t in throughput.items():
        print(f"  {w} worker(s): {t['tokens_per_s']['median']:7.1f} tok/s [{t['tokens_per_s']['min']:.1f}, "
              f"{t['tokens_per_s']['max']:.1f}], MFU {t['mfu']['median']:.1%}, step {t['step_s']['median']:.2f} s")
    print(f"  2 workers / 1 worker: {scaling:.2f}x tokens/s (same 2 cores: DDP adds communication, not compute)")
    print(f"\nrank 1 killed after step {args.kill_at} of {args.steps}:")
    print(f"  {'run':<20} {'ETTR':>6} {'model':>6} {'stall/ckpt':>11} {'restart':>8} {'redone':>8} {'wall':>7}")
    for label, r in runs.items():
        print(f"  {label:<20} {r['ettr']:>6.1%} {r['model_ettr']:>6.1%} {r['stalls']['median']:>9.2f} s "
              f"{r['restart_s']:>6.1f} s {len(r['redone']):>3} steps {r['wall_s']:>5.0f} s")
    print(f"  blocking / async stall per checkpoint: {stall_ratio:.1f}x "
          f"(ByteCheckpoint: {goodput.BYTECHECKPOINT_STALL_REDUCTION}x on average at scale)")
    print(f"  ByteRobust: {goodput.BYTEROBUST_ETTR:.0%} ETTR over 3 months on {goodput.BYTEROBUST_GPUS:,} GPUs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    _plot(runs, args.out.with_suffix(".png"))
    shutil.rmtree(storage, ignore_errors=True)  # five runs' checkpoints, 1.6 GB each
    print(f"raw: {args.out}")
    return 0


def _plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ("productive_s", "stall_s", "restart_s", "recomputed_s", "other_s")
    fig, ax = plt.subplots(figsize=(7, 3))
    for i, r in enumerate(runs.values()):
        left = 0.0
        for part, colour in zip(parts, ("tab:green", "tab:orange", "tab:red", "tab:purple", "tab:gray"), strict=True):
            ax.barh(i, r[part], left=left, color=colour, label=part[:-2] if i == 0 else None)
            left += r[part]
        ax.text(left, i, f"  ETTR {r['ettr']:.0%}", va="center")
    ax.set_yticks(range(len(runs)), list(runs))
    ax.set_xlabel("seconds of wall time after the first step began")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
