"""Diffusion benchmarks (cpu profile): prompt following, images/s, seconds per denoising step, training time.

Prompt following is measured twice: on captions in the training template (``prompt_set``) and on
the hand-written held-out prompts of ``datasets/shapes_prompts`` (partial, reordered, synonyms,
filler words, typos; ``--seeds`` images each), for the shipped checkpoint and for the
template-only one it replaced, with labkit's sampling settings and with plain diffusers'
defaults (50 steps, guidance 7.5).

Run: ``.venv/bin/python benchmarks/bench_diffusion.py`` (add ``--train`` to also retrain the shipped
checkpoint from scratch and time it: about an hour on 2 cores). Medians of ``--repeats`` runs
made in this invocation; results in ``runs/bench/diffusion.json``, a plot in
``runs/bench/prompt_following_by_kind.png`` and a Markdown table on stdout.
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
    parser.add_argument("--seeds", type=int, default=4, help="images per held-out prompt")
    parser.add_argument("--train", action="store_true", help="also retrain the checkpoint from scratch")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench" / "diffusion.json")
    args = parser.parse_args()

    from labkit import diffusion, store
    from labkit.shape_checker import evaluate_prompt_following, heldout_prompts
    from labkit.shapes import image_grid

    path = store.pull("shapes-t2i-tiny", progress=False)[0]
    store.pull("shapes-t2i-template-only", progress=False)
    pipe = diffusion.load_image_pipeline("cpu")
    before = diffusion.load_image_pipeline(model="shapes-t2i-template-only")
    res: dict = {"steps": args.steps, "guidance": args.guidance, "scheduler": type(pipe.scheduler).__name__,
                 "seeds": args.seeds, "prompt_following": {}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    heldout = heldout_prompts()
    settings = {"labkit": (args.steps, args.guidance), "diffusers defaults": (50, 7.5)}
    runs = [(model, p, prompts, setting)
            for model, p in (("shipped", pipe), ("template-only", before))
            for prompts, setting in (("template", "labkit"), ("held-out", "labkit"),
                                     ("held-out", "diffusers defaults"))]
    for model, p, prompts, setting in runs:
        steps, guidance = settings[setting]
        t0 = time.perf_counter()
        pf = evaluate_prompt_following(p, args.prompts, rows=heldout if prompts == "held-out" else None,
                                       images_per_prompt=args.seeds if prompts == "held-out" else 1,
                                       steps=steps, guidance=guidance, progress=False)
        key = f"{model} | {prompts} | {setting}"
        res["prompt_following"][key] = {k: pf[k] for k in ("n", "colour_accuracy", "shape_accuracy", "by_lang",
                                                           "backgrounds_unasked")}
        res["prompt_following"][key]["by_kind"] = pf.get("by_kind", {})
        res["prompt_following"][key]["seconds"] = time.perf_counter() - t0
        print(f"{key}: colour {pf['colour_accuracy']:.1%}, shape {pf['shape_accuracy']:.1%}", flush=True)
        if model == "shipped" and setting == "labkit":
            name = "prompt_following.png" if prompts == "template" else "prompt_following_heldout.png"
            image_grid(pf["images"][:48], cols=12, scale=3).save(args.output.with_name(name))
    _plot_by_kind(res["prompt_following"], args.output.with_name("prompt_following_by_kind.png"))

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
    print("| model | prompts | settings | images | colour | shape |\n|---|---|---|---:|---:|---:|")
    for key, p in res["prompt_following"].items():
        model, prompts, setting = key.split(" | ")
        print(f"| {model} | {prompts} | {setting} | {p['n']} | {p['colour_accuracy']:.1%} | "
              f"{p['shape_accuracy']:.1%} |")
    print("\n| held-out kind (shipped, labkit settings) | images | colour | shape |\n|---|---:|---:|---:|")
    kinds = res["prompt_following"]["shipped | held-out | labkit"]
    for kind, p in {**kinds["by_kind"], **kinds["by_lang"]}.items():
        print(f"| {kind} | {p['n']} | {p['colour_accuracy']:.1%} | {p['shape_accuracy']:.1%} |")
    print(f"\nbackgrounds drawn when the prompt names none: {kinds['backgrounds_unasked']}\n")
    print("| measurement | value |\n|---|---:|")
    for batch in (1, 16):
        b = res[f"batch_{batch}"]
        print(f"| batch {batch}: images/s ({args.steps} steps) | {b['images_per_s']:.2f} |")
        print(f"| batch {batch}: seconds per denoising step | {b['s_per_step'] * 1e3:.1f} ms |")
    t = res["shipped_training"]
    first = t.get("init_from_record", t)  # the recipe's first run (the VAE is trained there)
    seconds = t.get("train_seconds_total", t["train_seconds"])
    print(f"| shipped checkpoint: training time (recorded) | {seconds:.0f} s |")
    print(f"| shipped checkpoint: final loss VAE / UNet | {first['final_loss']['vae']:.4f} / "
          f"{t['final_loss']['unet']:.4f} |")
    if "retrain" in res:
        print(f"| retrained from scratch here | {res['retrain']['seconds']:.0f} s |")
    print(f"\nraw results: {args.output}")


def _plot_by_kind(results: dict, path: Path) -> None:
    """Colour and shape accuracy per kind of held-out prompt, before and after varied captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    after, before = results["shipped | held-out | labkit"], results["template-only | held-out | labkit"]
    kinds = list(after["by_kind"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    for ax, metric in zip(axes, ("colour_accuracy", "shape_accuracy"), strict=True):
        x = range(len(kinds))
        ax.bar([i - 0.2 for i in x], [before["by_kind"][k][metric] for k in kinds], 0.4,
               label="template-only captions (before)", color="#bbbbbb")
        ax.bar([i + 0.2 for i in x], [after["by_kind"][k][metric] for k in kinds], 0.4,
               label="varied captions (shipped)", color="#3b7dd8")
        ax.set_xticks(list(x), kinds)
        ax.set(title=metric.replace("_", " ") + " on held-out prompts", ylim=(0, 1.05))
        ax.axhline({"colour_accuracy": 0.9, "shape_accuracy": 0.8}[metric], color="k", lw=0.8, ls="--")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
