"""Diffusion benchmarks (cpu profile): prompt following, images/s, seconds per denoising step, training time.

Run: ``.venv/bin/python benchmarks/bench_diffusion.py`` (add ``--train`` to also retrain the shipped
checkpoint from scratch and time it: about 15 minutes on 2 cores). Medians of ``--repeats`` runs
made in this invocation; results in ``runs/bench/diffusion.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--train", action="store_true", help="also retrain the checkpoint from scratch")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench" / "diffusion.json")
    args = parser.parse_args()

    from labkit import diffusion, store
    from labkit.shape_checker import evaluate_prompt_following
    from labkit.shapes import image_grid

    path = store.pull("shapes-t2i-tiny", progress=False)[0]
    pipe = diffusion.load_image_pipeline("cpu")
    res: dict = {"steps": args.steps, "guidance": args.guidance, "scheduler": type(pipe.scheduler).__name__}

    t0 = time.perf_counter()
    pf = evaluate_prompt_following(pipe, args.prompts, steps=args.steps, guidance=args.guidance)
    res["prompt_following"] = {k: pf[k] for k in ("n", "colour_accuracy", "shape_accuracy", "en", "zh")}
    res["prompt_following"]["seconds"] = time.perf_counter() - t0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image_grid(pf["images"][:48], cols=12, scale=3).save(args.output.with_name("prompt_following.png"))

    prompt = "a red circle on a white background"
    diffusion.generate(pipe, prompt, steps=2, progress=False)  # warm-up
    for batch in (1, 16):
        runs = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            diffusion.generate(pipe, prompt, n=batch, batch_size=batch, steps=args.steps, seed=r, progress=False)
            runs.append(time.perf_counter() - t0)
        med = statistics.median(runs)
        res[f"batch_{batch}"] = {"images_per_s": batch / med, "s_per_step": med / args.steps,
                                 "runs_s": runs}

    res["shipped_training"] = json.loads((path / "training.json").read_text())
    res["shipped_training"].pop("losses", None)
    if args.train:
        from labkit.t2i import train_t2i

        with tempfile.TemporaryDirectory() as tmp:
            rec = train_t2i(Path(tmp) / "model", progress=True)
        res["retrain"] = {"seconds": rec["train_seconds"], "final_loss": rec["final_loss"]}

    args.output.write_text(json.dumps(res, indent=2))
    p = res["prompt_following"]
    print("| measurement | value |\n|---|---:|")
    print(f"| colour accuracy, {p['n']} prompts (en / zh) | {p['colour_accuracy']:.1%} "
          f"({p['en']['colour_accuracy']:.1%} / {p['zh']['colour_accuracy']:.1%}) |")
    print(f"| shape accuracy (en / zh) | {p['shape_accuracy']:.1%} "
          f"({p['en']['shape_accuracy']:.1%} / {p['zh']['shape_accuracy']:.1%}) |")
    for batch in (1, 16):
        b = res[f"batch_{batch}"]
        print(f"| batch {batch}: images/s ({args.steps} steps) | {b['images_per_s']:.2f} |")
        print(f"| batch {batch}: seconds per denoising step | {b['s_per_step'] * 1e3:.1f} ms |")
    t = res["shipped_training"]
    print(f"| shipped checkpoint: training time (recorded) | {t['train_seconds']:.0f} s |")
    loss = t["final_loss"]
    print(f"| shipped checkpoint: final loss VAE / UNet | {loss['vae']:.4f} / {loss['unet']:.4f} |")
    if "retrain" in res:
        print(f"| retrained from scratch here | {res['retrain']['seconds']:.0f} s |")
    print(f"\nraw results: {args.output}")


if __name__ == "__main__":
    main()
