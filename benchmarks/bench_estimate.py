"""How far is ``labkit.estimate`` from what the kit's chat model really uses?

Run with ``.venv/bin/python benchmarks/bench_estimate.py``. For SmolLM2-135M in fp32 on this
machine: weights, KV cache (real tensors after a forward), the peak of real AdamW training steps
(PyTorch's ``MemTracker``, by kind) with and without activation recomputation at several batch
shapes, and FLOPs of a forward and backward pass (``FlopCounterMode``). Prints the error of each
prediction (target within 15%), then the papers' figures recomputed (``labkit.published_figures``).
Raw results go to ``runs/bench/estimate.json``. Memory figures are exact counts, not timings, so
one run is enough; the step time is printed for orientation only.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tqdm.auto import tqdm  # noqa: E402

from labkit import estimate, measure, store  # noqa: E402
from labkit.llm import ChatModel  # noqa: E402
from labkit.published_figures import figures  # noqa: E402

SHAPES = ((1, 128), (2, 128), (4, 256), (8, 512))
TRAIN_SHAPES = ((1, 128, False), (2, 256, False), (4, 256, False), (4, 256, True))  # (batch, seq, recompute)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "estimate.json")
    args = p.parse_args()

    path = store.pull(args.model, progress=False)[0]
    model = ChatModel.from_pretrained(path, device="cpu", dtype="float32").model
    shape = estimate.ModelShape.from_config(path)
    rows = [{"quantity": "weights", "predicted": estimate.model_state_bytes(shape, precision="fp32").weights,
             "measured": measure.weight_bytes(model)}]
    for b, s in SHAPES:
        rows.append({"quantity": f"KV cache, batch {b} x {s} tokens",
                     "predicted": estimate.kv_cache_bytes(shape, batch_size=b, seq_len=s, dtype="fp32"),
                     "measured": measure.kv_cache_bytes(model, batch_size=b, seq_len=s)})
    rows.append({"quantity": "FLOPs of forward + backward, batch 2 x 128",
                 "predicted": estimate.training_flops(shape, tokens=256, seq_len=128),
                 "measured": measure.training_step_flops(copy.deepcopy(model), batch_size=2, seq_len=128)})
    for b, s, recompute in tqdm(TRAIN_SHAPES, desc="training steps (AdamW, fp32)"):
        trainee = copy.deepcopy(model)
        if recompute:
            trainee.activation_checkpointing_enable()
        got = measure.training_step_peak(trainee, batch_size=b, seq_len=s)
        want = estimate.training_step_bytes(shape, batch_size=b, seq_len=s, precision="fp32", recompute=recompute)
        rows.append({"quantity": f"training-step peak, batch {b} x {s}{', recompute' if recompute else ''}",
                     "predicted": want.total, "measured": got["total"], "predicted_parts": want.as_dict(),
                     "measured_parts": got})
        del trainee
    for r in rows:
        r["error"] = r["predicted"] / r["measured"] - 1
    print(f"{'quantity':<48} {'predicted':>12} {'measured':>12} {'error':>8}")
    for r in rows:
        unit, scale = ("GFLOP", 1e9) if "FLOPs" in r["quantity"] else ("MiB", 2**20)
        print(f"{r['quantity']:<48} {r['predicted'] / scale:>9,.1f} {unit:<3}{r['measured'] / scale:>9,.1f} "
              f"{unit:<3}{r['error']:>+7.1%}")
    worst = max(abs(r["error"]) for r in rows)
    print(f"largest error: {worst:.1%} (target within 15%)")
    published = figures()
    print(f"\n{'source':<58} {'quantity':<70} {'published':>10} {'ours':>10}")
    for r in published:
        print(f"{r['source']:<58} {r['quantity'][:70]:<70} {r['published']:>10.4g} {r['ours']:>10.4g} {r['kind']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "rows": rows, "published": published}, indent=1))
    print(f"raw: {args.out}")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
