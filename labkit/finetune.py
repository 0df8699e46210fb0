"""Fine-tune the chat model with Ray Train: data parallel, checkpoints, failures, stragglers.

``finetune`` runs ``ray.train.torch.TorchTrainer`` with ``num_workers`` workers (gloo on CPU,
NCCL on GPU), each holding a full copy of the model (DDP: gradients averaged every step). Every
``checkpoint_every`` steps rank 0 saves the model, the optimizer and the loss history (blocking or
asynchronously: ``labkit.checkpointing``) and hands the checkpoint to ``ray.train.report``; with
``max_failures`` > 0 Ray Train replaces a worker group that lost a worker and the loop resumes
from the latest checkpoint, so the loss curve continues where it was.
The data order depends only on the step number, so a resumed run sees exactly the examples an
uninterrupted one would have seen.

Each step reports, per rank, the time spent before the first collective (the forward pass: DDP
communicates only in the backward pass), so a slow worker shows up as the rank whose own work
takes longest, even though every rank's full step ends at the same all-reduce. ``slow_rank`` and
``slow_s`` make one rank slow on purpose.

Metrics reach the driver as they happen (a ``UserCallback`` on Ray Train's controller puts them on
a ``ray.util.queue.Queue``): ``on_step(row)`` sees every step, which is how a notebook draws the
loss live and how the failure test kills a worker mid-run (each row carries the workers' pids).

The finished model is saved into the model store under its own name (``labkit generate --model
NAME``), with a manifest that names its base and its data.

Example:
    >>> result = finetune(num_workers=2, epochs=1, name="smollm2-workshop")     # doctest: +SKIP
    >>> result.history[-1]["loss"] < result.history[0]["loss"]                  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import labkit.ray_runtime  # noqa: F401  (sets Ray's auth mode before anything imports ray)
from labkit import checkpointing


@dataclass
class FinetuneResult:
    name: str | None  # the model-store name of the saved model (None when save=False)
    history: list[dict]  # one row per step: step, loss, tokens_per_s, rank_forward_s, pids, ...
    eval_loss_before: float
    eval_loss_after: float
    restarts: int  # how many times the worker group was replaced
    wall_s: float
    storage: Path
    extra: dict = field(default_factory=dict)


def _examples(tokenizer, rows: list[dict], seq_len: int) -> list[dict]:
    """Token ids and labels for each instruction/response pair; the prompt's labels are -100, so
    only the response is learned."""
    out = []
    for r in rows:
        user = [{"role": "user", "content": r["instruction"]}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = prompt + r["response"] + (tokenizer.eos_token or "")
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:seq_len]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        labels = [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]
        out.append({"ids": ids, "labels": labels})
    return out


def _batch(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["ids"]), torch.tensor(e["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _order(n: int, epoch: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def _matmul_gflops(repeats: int = 5) -> float:
    """This worker's matmul ceiling, measured where it runs (with the threads it trains on)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best / 1e9


def _eval_loss(model, examples: list[dict], pad_id: int, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            part = examples[i:i + batch_size]
            batch = _batch(part, pad_id)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    model.train()
    return total / max(count, 1)


def _train_loop(config: dict) -> None:
    """Runs on every worker (Ray Train calls it; the same code resumes after a failure)."""
    import ray.train
    import torch.distributed as dist
    from ray.train import CheckpointUploadMode
    from ray.train.torch import prepare_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tokenizer = AutoTokenizer.from_pretrained(config["base_path"], local_files_only=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train = _examples(tokenizer, config["train_rows"], config["seq_len"])
    held_out = _examples(tokenizer, config["eval_rows"], config["seq_len"])
    torch.manual_seed(config["seed"])
    model = AutoModelForCausalLM.from_pretrained(config["base_path"], dtype=torch.float32, local_files_only=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.0)
    start, history, eval_before = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            meta = checkpointing.load(folder, model, optimizer)
        start, history, eval_before = meta["step"], meta["history"], meta["eval_before"]
    if eval_before is None:
        eval_before = _eval_loss(model, held_out, pad_id, config["batch_size"])
    # DDP over gloo (CPU) or NCCL (GPU). The rotary frequencies are constant buffers: broadcasting
    # them (DDP's default) would start every forward with a collective and hide a straggler's
    # own time inside everyone's forward.
    ddp = prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})  # (1 worker: model itself)
    device = next(ddp.parameters()).device
    gflops = _matmul_gflops()
    per_step = config["batch_size"] * world
    steps_per_epoch = len(train) // per_step
    total = config["max_steps"] or steps_per_epoch * config["epochs"]
    flops_per_token = config["flops_per_token"]
    # Rank 0 writes the checkpoints (DDP replicas are identical) straight into the run's folder,
    # so Ray Train registers them where they are (NO_UPLOAD) instead of copying 1.6 GB again.
    saver = checkpointing.Checkpointer(Path(ctx.get_storage().experiment_fs_path) / f"attempt-{time.time_ns()}",
                                       mode=config["checkpoint_mode"]) if rank == 0 else None
    ddp.train()
    for step in range(start, total):
        epoch, within = divmod(step, steps_per_epoch)
        order = _order(len(train), epoch, config["seed"])
        mine = order[within * per_step + rank * config["batch_size"]:][:config["batch_size"]]
        batch = {k: v.to(device) for k, v in _batch([train[i] for i in mine], pad_id).items()}
        t0 = time.perf_counter()
        if rank == config["slow_rank"]:
            time.sleep(config["slow_s"])  # a slower GPU, a noisy neighbour, a throttled CPU
        loss = ddp(**batch).loss
        forward_s = time.perf_counter() - t0
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_s = time.perf_counter() - t0
        tokens = int(batch["attention_mask"].sum())
        stats = torch.zeros(4 * world, dtype=torch.float64)
        stats[rank * 4:(rank + 1) * 4] = torch.tensor([float(loss), forward_s, tokens, gflops], dtype=torch.float64)
        dist.all_reduce(stats)  # every rank's numbers, on every rank (a gather by sum)
        stats = stats.view(world, 4)
        row = {"step": step + 1, "epoch": epoch, "loss": float(stats[:, 0].mean()), "step_s": step_s,
               "tokens_per_s": float(stats[:, 2].sum()) / step_s, "rank_forward_s": stats[:, 1].tolist(),
               "pid": os.getpid(), "rank": rank}
        row["mfu"] = row["tokens_per_s"] * flops_per_token / (float(stats[:, 3].sum()) * 1e9)
        history.append({k: v for k, v in row.items() if k not in ("pid", "rank")})
        last = step + 1 == total
        row.update(stall_s=0.0, eval_before=eval_before, eval_after=None)
        done = []
        if saver:
            if (step + 1) % config["checkpoint_every"] == 0 or last:
                if last:
                    row["eval_after"] = _eval_loss(model, held_out, pad_id, config["batch_size"])
                meta = {"step": step + 1, "history": history, "eval_before": eval_before,
                        "eval_after": row["eval_after"]}
                row["stall_s"] = saver.save(step + 1, model, optimizer, meta)
            done = saver.finish() if last else saver.completed()
            if last and config["save_to"]:
                model.save_pretrained(config["save_to"])
                tokenizer.save_pretrained(config["save_to"])
        # Ray Train takes one checkpoint per report: the newest completed one. An older one done
        # in the same step (the last step of an async run) is superseded: it is removed, not leaked.
        for old in done[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        row["checkpoint_step"] = int(done[-1].name.split("-")[1]) if done else None
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(done[-1]) if done else None,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


def finetune(*, base: str = "smollm2-135m-instruct", dataset: str = "workshop_qa", name: str | None = None,
             num_workers: int = 2, epochs: int = 3, max_steps: int | None = None, batch_size: int = 4,
             seq_len: int = 128, lr: float = 5e-5, checkpoint_every: int = 4,
             checkpoint_mode: checkpointing.Mode = "blocking", max_failures: int = 2,
             storage: str | Path | None = None, slow_rank: int | None = None, slow_s: float = 0.0,
             use_gpu: bool | None = None, seed: int = 0, save: bool = True,
             on_step: Callable[[dict], None] | None = None, progress: bool = True) -> FinetuneResult:
    """Fine-tune ``base`` (a model-store name) on ``dataset`` with ``num_workers`` data-parallel
    workers; save the result into the store as ``name`` (default ``<base>-<dataset>``; a model
    saved earlier under the same name is replaced, so a notebook cell can be re-run).

    ``batch_size`` is per worker (the global batch is ``batch_size x num_workers``); ``max_steps``
    overrides ``epochs``. Each worker gets ``cpus // num_workers`` torch threads on CPU.
    ``checkpoint_mode`` is ``"blocking"`` or ``"async"`` (see ``labkit.checkpointing``); each
    history row's ``stall_s`` is how long that step's checkpoint held training up, and
    ``received_s`` when the driver saw the row (seconds since the call began). Checkpoints go
    under ``storage`` (default ``train/`` in labkit's home, ``$LABKIT_HOME``); with ``save=True`` the last one is
    removed once the model is in the store.
    """
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue
    from tqdm.auto import tqdm

    from labkit import estimate, store
    from labkit.data import read_instructions
    from labkit.ray_runtime import init_ray

    for label, value in (("num_workers", num_workers), ("epochs", epochs), ("batch_size", batch_size),
                         ("seq_len", seq_len), ("checkpoint_every", checkpoint_every)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if max_steps is not None and not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps must be a positive integer or None, got {max_steps!r}")
    checkpointing.check_mode(checkpoint_mode)  # here too, so a typo fails before Ray starts
    if slow_rank is not None and not 0 <= slow_rank < num_workers:
        raise ValueError(f"slow_rank must be a worker rank, 0 to {num_workers - 1}, got {slow_rank!r}")
    base_path = store.model_path(base)
    train_rows, eval_rows = read_instructions(dataset), read_instructions(dataset, split="eval")
    if len(train_rows) < batch_size * num_workers:
        raise ValueError(f"{len(train_rows)} training rows cannot fill one step of {batch_size} x {num_workers}; "
                         "lower batch_size or num_workers")
    name = store.check_trained_name(name or f"{base}-{dataset.replace('_', '-')}")
    init_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if (cpus if not gpu else gpus) < num_workers:
        have = f"{gpus} GPUs" if gpu else f"{cpus} CPUs"
        raise ValueError(f"{num_workers} workers need one {'GPU' if gpu else 'CPU'} each and this Ray cluster has "
                         f"{have}; lower num_workers (Ray Train would otherwise wait for them)")
    storage = Path(storage or store.labkit_home() / "train").resolve()
    run_name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    staging = store.models_dir() / f".staging-{run_name}" if save else None
    shape = estimate.ModelShape.from_config(base_path)
    config = {"base_path": str(base_path), "train_rows": train_rows, "eval_rows": eval_rows, "seq_len": seq_len,
              "batch_size": batch_size, "epochs": epochs, "max_steps": max_steps, "lr": lr, "seed": seed,
              "checkpoint_every": checkpoint_every, "checkpoint_mode": checkpoint_mode,
              "slow_rank": slow_rank, "slow_s": slow_s,
              "threads": max(1, cpus // num_workers), "save_to": str(staging) if staging else None,
              "flops_per_token": estimate.training_flops(shape, tokens=1, seq_len=seq_len)}
    queue = Queue()

    class _Forward(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            row = dict(metrics[0])
            row["pids"] = [m["pid"] for m in metrics]
            queue.put(row)

    trainer = TorchTrainer(
        _train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": 0 if gpu else config["threads"]}),
        run_config=RunConfig(name=run_name, storage_path=str(storage), callbacks=[_Forward()],
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),  # resuming needs the latest
    )
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread below)
            outcome["error"] = exc
        finally:
            queue.put(None)

    t0 = time.perf_counter()
    threading.Thread(target=fit, daemon=True).start()
    history, replaced, restarts, last_pids = [], [], 0, None
    bar = tqdm(desc=f"fine-tuning {base} on {num_workers} workers", unit="step", disable=not progress)
    while (row := queue.get()) is not None:
        if last_pids and row["pids"] != last_pids:
            # A new worker group (new processes), resumed from the last checkpoint: the steps seen
            # since were lost and are done again (none, if it checkpointed every step).
            restarts += 1
            replaced += [h for h in history if h["step"] >= row["step"]]
            history = [h for h in history if h["step"] < row["step"]]
        last_pids = row["pids"]
        row["received_s"] = time.perf_counter() - t0
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        if on_step:
            on_step(row)
    bar.close()
    if "error" in outcome:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)  # a half-written model must not linger in the store
        raise RuntimeError(f"training failed: {outcome['error']}") from outcome["error"]
    result = outcome["result"]
    with result.checkpoint.as_directory() as folder:
        state = checkpointing.read_meta(folder)  # the small part: no need to load the weights here
    saved = None
    if save:
        store.save_trained(staging, name, base=base, data=dataset, license=store.read_manifest(base)["license"])
        saved = name
        # The model is in the store now; the run's last checkpoint (weights and optimizer states:
        # 1.6 GB for the chat model) would only fill the disk. Ray Train's run records stay.
        for folder in (storage / run_name).glob("attempt-*"):
            shutil.rmtree(folder, ignore_errors=True)
    return FinetuneResult(name=saved, history=history, eval_loss_before=state["eval_before"],
                          eval_loss_after=state["eval_after"], restarts=restarts,
                          wall_s=time.perf_counter() - t0, storage=storage / run_name,
                          extra={"checkpoint_history": state["history"], "replaced": replaced})



def miniature(base: str = "smollm2-135m-instruct", *, name: str | None = None, hidden_size: int = 64,
              num_layers: int = 2, seed: int = 0) -> str:
    """Save a miniature of ``base`` into the store and return its name (default ``<base>-miniature``).

    Same architecture and tokenizer, random weights, ``hidden_size`` wide and ``num_layers`` deep
    (about 6M parameters for the chat model, most of them its embeddings). For rehearsing
    distributed training where the full model would take too long: Ray Train, checkpoints and
    failures behave the same at any size, and the loss falls fast from random weights.

    Example:
        >>> finetune(base=miniature(), max_steps=4, save=False).history[-1]["step"]  # doctest: +SKIP
        4
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from labkit import store

    name = store.check_trained_name(name or f"{base}-miniature")
    base_path = store.model_path(base)
    config = AutoConfig.from_pretrained(base_path, local_files_only=True)
    heads = max(1, hidden_size // 16)
    kv_heads = max(1, heads * getattr(config, "num_key_value_heads", config.num_attention_heads)
                   // config.num_attention_heads)
    config.update({"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": num_layers,
                   "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden_size // heads})
    if hasattr(config, "layer_types"):  # Qwen-style configs list one attention type per layer
        config.layer_types = config.layer_types[:num_layers]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    staging = store.models_dir() / f".staging-{name}-{os.getpid()}"
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(base_path, local_files_only=True).save_pretrained(staging)
    store.save_trained(staging, name, base=base, data="none (random weights)",
                       license=store.read_manifest(base)["license"])
    return name
