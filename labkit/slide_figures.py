"""The figures the decks show, each with the command that made it.

A deck asks for a figure by name, ``![alt](figure:training_memory)``, and the build puts the image
inline with a caption naming its command. There are three kinds, and every one is made by the kit
itself, none pasted:

* ``kit``: drawn at build time by the kit's own code (an estimate, images from the diffusion lab's
  model): ``labkit slides figure NAME`` makes one by hand;
* ``benchmark``: a plot a benchmark script wrote to ``docs/img`` with its measurements (minutes to
  hours of compute, so not rerun at every build); the caption names the script and the section of
  ``docs/benchmarks.md`` with the numbers;
* ``diagram``: a text source in ``slides/diagrams/NAME.mmd`` drawn by Mermaid's CLI at build time,
  with the deck's bundled font (``labkit.slides`` passes it in).

Example:
    >>> from labkit.slide_figures import FIGURES
    >>> FIGURES["training_memory"].kind
    'kit'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIAGRAMS = REPO / "slides" / "diagrams"


@dataclass(frozen=True)
class Figure:
    name: str
    kind: str                      # "kit", "benchmark" or "diagram"
    command: str                   # what made it: shown under the figure on the slide
    make: Callable[[Path], None] | None = None   # kit figures: draw into this PNG path
    source: Path | None = None     # benchmark figures: the PNG; diagrams: the .mmd text


def _training_memory(path: Path) -> None:
    """Bytes per GPU of a 7B model's training state under ZeRO stages 0-3 on 8 GPUs (lab 09)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.estimate import model_state_bytes

    stages = [0, 1, 2, 3]
    parts = [model_state_bytes(7e9, zero_stage=s, devices=8) for s in stages]
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    bottom = [0.0] * len(stages)
    for key, colour in (("weights", "#4c72b0"), ("gradients", "#dd8452"), ("optimizer", "#55a868")):
        gib = [getattr(p, key) / 2**30 for p in parts]
        ax.bar([f"ZeRO-{s}" for s in stages], gib, bottom=bottom, label=key, color=colour)
        bottom = [b + g for b, g in zip(bottom, gib, strict=True)]
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:.0f} GiB", (i, total), ha="center", va="bottom", fontsize=9)
    ax.axhline(80, color="#c44e52", linestyle="--", linewidth=1)
    ax.annotate("one 80 GB GPU", (3.4, 80), ha="right", va="bottom", fontsize=8, color="#c44e52")
    ax.set_ylabel("GiB per GPU")
    ax.set_title("7B model, mixed precision + AdamW, 8 GPUs: training state per GPU", fontsize=10)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _shapes_samples(path: Path) -> None:
    """Four images from the diffusion lab's tiny model, prompts in both languages (labs 02 and 03)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.diffusion import generate, load_image_pipeline

    prompts = ["a red circle", "a small blue square on the left", "a green triangle", "a big yellow star"]
    pipe = load_image_pipeline("cpu")
    images = generate(pipe, prompts, seed=0, progress=False)
    fig, axes = plt.subplots(1, len(prompts), figsize=(7.2, 2.3))
    for ax, image, prompt in zip(axes, images, prompts, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(prompt, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _batching_timeline(path: Path) -> None:
    """Rows busy at each step, static batching against the real engine, for the same 24 replies.

    The bottom panel is a real run: ``labkit.engine.Engine`` with the cpu profile's chat model, 8
    rows, 24 requests arriving at once, each asking for exactly its length (``loadtest.replay``);
    one bar per engine iteration, prompt iterations marked. The top panel is what ``@serve.batch``
    does with the same lengths: a batch of 8 runs until its longest reply ends (step counts, as no
    engine runs that policy). Lengths: ``loadtest.heavy_tailed_lengths``, the serving benchmark's.
    About 10 s on 2 cores.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit import profiles, store
    from labkit.data import read_prompts
    from labkit.engine import Engine
    from labkit.llm import load_chat_model
    from labkit.loadtest import heavy_tailed_lengths, replay

    lengths, rows = heavy_tailed_lengths(24, low=8, high=96, seed=0), 8
    static: list[int] = []
    for i in range(0, len(lengths), rows):  # a batch runs until its longest reply ends
        batch = lengths[i:i + rows]
        static += [sum(n > step for n in batch) for step in range(max(batch))]
    store.pull(profiles.model_for("chat", "cpu").name)
    lm = load_chat_model("cpu")
    engine = Engine(lm.model, lm.tokenizer, max_batch=rows, max_context=1024).start()
    try:
        prompts = [row["prompt"] for row in read_prompts("prompts_500")]
        timeline = replay(engine, prompts, lengths=lengths, rate=None, progress=False)["timeline"]
    finally:
        engine.stop()
    continuous = [row["decode_rows"] for row in timeline]
    prompt_steps = [i for i, row in enumerate(timeline) if row["prefill_tokens"]]
    fig, axes = plt.subplots(2, 1, figsize=(7.2, 3.4), sharex=True, sharey=True)
    decoding = sum(1 for n in continuous if n)
    axes[0].fill_between(range(len(static)), static, step="post", alpha=0.7)
    axes[0].set_title(f"static (@serve.batch): {len(static)} decode steps, "
                      f"{sum(static) / (rows * len(static)):.0%} of rows busy", fontsize=9)
    axes[1].fill_between(range(len(continuous)), continuous, step="post", alpha=0.7, color="tab:green")
    axes[1].plot(prompt_steps, [0.4] * len(prompt_steps), "|", color="crimson", markersize=8,
                 label="iterations with prompts")
    axes[1].set_title(f"continuous (labkit.engine, a real run): {decoding} decode iterations, "
                      f"{sum(continuous) / (rows * decoding):.0%} of rows busy", fontsize=9)
    axes[1].legend(fontsize=7, loc="upper right")
    for ax in axes:
        ax.set_ylabel("rows busy", fontsize=8)
    axes[1].set_xlabel(f"step (24 replies, {sum(lengths)} tokens, 8 rows, heavy-tailed lengths)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _benchmark(name: str, command: str) -> Figure:
    return Figure(name, "benchmark", command, source=REPO / "docs" / "img" / f"{name}.png")


def _diagram(name: str) -> Figure:
    return Figure(name, "diagram", f"mmdc -i slides/diagrams/{name}.mmd (make slides)",
                  source=DIAGRAMS / f"{name}.mmd")


FIGURES: dict[str, Figure] = {f.name: f for f in [
    Figure("training_memory", "kit", "labkit slides figure training_memory (labkit.estimate)", make=_training_memory),
    Figure("shapes_samples", "kit", "labkit slides figure shapes_samples (the cpu profile's image model)",
           make=_shapes_samples),
    Figure("batching_timeline", "kit", "labkit slides figure batching_timeline (labkit.engine, the cpu chat model)",
           make=_batching_timeline),
    _benchmark("chat_languages", "benchmarks/bench_chat_languages.py --plot docs/img/chat_languages.png"),
    _benchmark("generate_roofline", "benchmarks/bench_generate.py"),
    _benchmark("scheduling", "benchmarks/bench_scheduling.py"),
    _benchmark("pool_day", "benchmarks/bench_pool.py --curves day"),
    _benchmark("setup_time", "benchmarks/bench_setup.py --plot docs/img/setup_time.png"),
    _benchmark("prompt_following_by_kind", "benchmarks/bench_diffusion.py"),
    *[_diagram(p.stem) for p in sorted(DIAGRAMS.glob("*.mmd"))],
]}


def figure(name: str) -> Figure:
    """The registered figure ``name``, or an error listing the ones there are."""
    if name not in FIGURES:
        raise KeyError(f"no figure named {name!r}; the decks can use: {', '.join(sorted(FIGURES))} "
                       "(add one in labkit/slide_figures.py, or a Mermaid file in slides/diagrams/)")
    return FIGURES[name]
