"""The continuous-batching engine's decode speed against the other ways to run the same batch.

Run with ``.venv/bin/python benchmarks/bench_engine.py``. For each batch size, in one run and in
the profile's own dtype, ``--rounds`` times (medians and ranges reported):

* ``fast``: labkit's fast path (static KV cache, compiled step), what ``labkit bench generate`` measures;
* ``plain``: one padded ``model.generate`` call;
* ``engine``: ``labkit.engine`` (paged KV cache, gathered per step, eager), all requests submitted at once;
* ``engine compiled``: the same engine with ``compile=True`` (decode-only iterations through one
  dynamic ``torch.compile`` graph; one engine for every batch size, its compile paid by
  ``warm_up()`` before any timing);
* ``hf-cb``: transformers' own continuous batching (``generate_batch``, paged attention).

Every row generates exactly ``--new-tokens`` tokens (end-of-turn held back); tokens/s counts new
tokens over wall time, prefill included. The machine's ceilings (``labkit.roofline``: memory read
GB/s and matmul GFLOP/s in the profile's dtype) are measured in the same run, before and after,
and the fast path is restated as a fraction of them: batch 1 against the memory ceiling, its best
batch against the compute ceiling. For the engine the decode-only rate (decode iterations'
tokens over their time) is reported too, since a server's steady state is mostly decode.
Raw results go to ``runs/bench/engine.json``. Never run it beside other heavy work.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from labkit import roofline  # noqa: E402
from labkit.data import read_prompts  # noqa: E402
from labkit.engine import Engine, SamplingParams  # noqa: E402
from labkit.llm import load_chat_model  # noqa: E402


def run_engine(lm, prompts, new_tokens, engine: Engine | None = None) -> tuple[float, float]:
    engine = engine or Engine(lm.model, lm.tokenizer, max_batch=len(prompts), max_context=512)
    engine.timeline.clear()
    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens)
    t0 = time.perf_counter()
    for p in prompts:
        engine.submit(lm.format_chat(p), params)
    engine.run_until_idle()
    seconds = time.perf_counter() - t0
    decode = [r for r in engine.timeline if r["decode_rows"] and not r["prefill_tokens"]]
    decode_rate = sum(r["decode_rows"] for r in decode) / sum(r["seconds"] for r in decode)
    return len(prompts) * new_tokens / seconds, decode_rate


def run_generate(lm, prompts, new_tokens) -> float:
    gens = lm.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, batch_size=len(prompts),
                       progress=False)
    return len(prompts) * new_tokens / gens[0].seconds


def run_hf_cb(model, tokenizer, texts, new_tokens) -> float:
    from transformers import GenerationConfig

    inputs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=model.generation_config.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    t0 = time.perf_counter()
    model.generate_batch(inputs=inputs, generation_config=config)
    return len(texts) * new_tokens / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "engine.json")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prompts = [row["prompt"] for row in read_prompts("chat_prompts_mini")]
    fast, plain, engine_lm, compiled_lm = load_chat_model(fast=True), load_chat_model(), load_chat_model(), \
        load_chat_model()
    compiled = Engine(compiled_lm.model, compiled_lm.tokenizer, max_batch=max(args.batch_sizes), max_context=512,
                      compile=True)
    compile_seconds = compiled.warm_up()
    dtype = str(plain.placement.dtype).removeprefix("torch.")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(plain.model.name_or_path, dtype=plain.placement.dtype,
                                              attn_implementation="paged|sdpa", local_files_only=True).eval()
    results: dict = {"python": platform.python_version(), "torch": torch.__version__, "dtype": dtype,
                     "threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "rows": [],
                     "engine_compile_seconds": compile_seconds,
                     "machines": [roofline.measure_machine(dtype=plain.placement.dtype).as_dict()]}
    for bs in args.batch_sizes:
        batch = [prompts[i % len(prompts)] for i in range(bs)]
        texts = [plain.format_chat(q) for q in batch]
        # One untimed run of each first: the fast path compiles, the others warm their allocators.
        run_generate(fast, batch, args.new_tokens)
        run_generate(plain, batch, args.new_tokens)
        run_engine(engine_lm, batch, args.new_tokens)
        try:
            run_hf_cb(hf, plain.tokenizer, texts, args.new_tokens)
            hf_error = None
        except Exception as exc:  # reported, not hidden: the comparison says it could not run
            hf_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        run_engine(compiled_lm, batch, args.new_tokens, compiled)
        rounds: dict[str, list[float]] = {"fast": [], "plain": [], "engine": [], "engine decode-only": [],
                                          "engine compiled": [], "engine compiled decode-only": [], "hf-cb": []}
        for _ in range(args.rounds):
            rounds["fast"].append(run_generate(fast, batch, args.new_tokens))
            rounds["plain"].append(run_generate(plain, batch, args.new_tokens))
            total, decode = run_engine(engine_lm, batch, args.new_tokens)
            rounds["engine"].append(total)
            rounds["engine decode-only"].append(decode)
            total, decode = run_engine(compiled_lm, batch, args.new_tokens, compiled)
            rounds["engine compiled"].append(total)
            rounds["engine compiled decode-only"].append(decode)
            if hf_error is None:
                rounds["hf-cb"].append(run_hf_cb(hf, plain.tokenizer, texts, args.new_tokens))
        for path, values in rounds.items():
            if values:
                row = {"path": path, "batch_size": bs, "tokens_per_s": statistics.median(values),
                       "min": min(values), "max": max(values)}
                results["rows"].append(row)
                print(f"batch {bs:3d} {path:>27}: {row['tokens_per_s']:7.1f} tok/s ({row['min']:.0f}-{row['max']:.0f})",
                      flush=True)
            elif path == "hf-cb":
                results["rows"].append({"path": path, "batch_size": bs, "error": hf_error})
                print(f"batch {bs:3d} {path:>18}: could not run ({hf_error})", flush=True)
        by = {r["path"]: r.get("tokens_per_s") for r in results["rows"] if r["batch_size"] == bs}
        print(f"batch {bs:3d}: engine / fast = {by['engine'] / by['fast']:.2f}, "
              f"engine decode-only / fast = {by['engine decode-only'] / by['fast']:.2f}, "
              f"compiled engine decode-only / fast = {by['engine compiled decode-only'] / by['fast']:.2f}"
              + (f", hf-cb / plain = {by['hf-cb'] / by['plain']:.2f}" if by.get("hf-cb") else ""), flush=True)
    results["machines"].append(roofline.measure_machine(dtype=plain.placement.dtype).as_dict())
    machine = roofline.Machine(**{**results["machines"][0], **{
        k: statistics.median(m[k] for m in results["machines"]) for k in ("matmul_gflops", "read_gbs")}})
    print(f"ceilings ({dtype}, median of before and after): {machine.read_gbs:.1f} GB/s read, "
          f"{machine.matmul_gflops:.0f} GFLOP/s matmul", flush=True)
    for row in results["rows"]:
        if "tokens_per_s" in row:
            ceiling = roofline.ceiling_tokens_per_s(plain.model, machine, batch_size=row["batch_size"])
            row.update(memory_ceiling=ceiling["memory_bound"], compute_ceiling=ceiling["compute_bound"],
                       of_memory_ceiling=row["tokens_per_s"] / ceiling["memory_bound"],
                       of_compute_ceiling=row["tokens_per_s"] / ceiling["compute_bound"])
    fast = [r for r in results["rows"] if r["path"] == "fast"]
    best = max(fast, key=lambda r: r["tokens_per_s"])
    one = next((r for r in fast if r["batch_size"] == 1), None)
    results["fast_path_vs_ceilings"] = {
        "batch 1 / memory ceiling": one and one["of_memory_ceiling"],
        f"best batch ({best['batch_size']}) / compute ceiling": best["of_compute_ceiling"]}
    print(json.dumps(results["fast_path_vs_ceilings"], indent=2))
    args.out.write_text(json.dumps(results, indent=2))
    print(f"raw: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
