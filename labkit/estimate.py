"""What training or serving a model costs, computed before you buy the GPUs.

Back-of-the-envelope arithmetic that large-model teams do first, in one place and checked against
measurement (``labkit.measure`` runs the same quantities for real; ``tests/test_estimate.py``
holds both to within 15%, and to the papers' own figures):

* **model state**: weights, gradients and optimizer states, by precision and optimizer, sharded
  across ``devices`` by ZeRO's stages (Rajbhandari et al., SC'20; FSDP's ``FULL_SHARD`` is stage
  3). Mixed-precision Adam keeps 16 bytes per parameter: 2 (bf16 weights) + 2 (bf16 gradients) +
  12 (fp32 master weights, momentum, variance);
* **activations** saved for the backward pass of a Llama-style decoder layer, counted tensor by
  tensor as transformers' implementation keeps them (SDPA attention), or only each layer's input
  with full recomputation (``recompute=True``), plus the logits, which at a 49k-152k vocabulary
  are often the largest single tensor;
* **KV cache**: 2 (keys and values) x layers x KV heads x head size x tokens x bytes;
* **FLOPs**: 2 per weight per token forward and 4 backward (the "6ND" rule), plus attention's
  score and value products (PaLM's convention, ``12 x layers x seq x attention width`` per
  token, causal masking not discounted); a generated token costs ``2 x weights`` plus attention
  over its context;
* **time and cost**: FLOPs / (GPUs x peak x MFU), and GPU-hours x price;
* **parallel plans**: tensor x pipeline x data parallel, what each GPU holds, and the pipeline
  bubble ``(p - 1) / (m + p - 1)`` (GPipe; 1F1B has the same bubble with less memory).

Why our own and not a library's: DeepSpeed ships ``estimate_zero3_model_states_mem_needs`` and
accelerate ``estimate-memory``, but each covers one slice (model states, or weights) and needs
its framework installed; the lab wants the whole chain in formulas a student can read.

Example:
    >>> shape = ModelShape(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
    ...                    intermediate_size=11008)                   # Llama 2 7B
    >>> round(shape.params / 1e9, 2)
    6.74
    >>> state = model_state_bytes(shape, precision="mixed", optimizer="adamw")
    >>> round(state.total / 1e9)                                      # 16 bytes per parameter
    108
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

Precision = Literal["fp32", "bf16", "mixed"]
Optimizer = Literal["adamw", "sgd", "sgd-momentum", "adamw-8bit"]

BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1, "int8": 1}

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (no sparsity): what MFU is measured against.
GPU_PEAK_TFLOPS = {"A100": 312.0, "H800": 989.0, "H100": 989.0, "H200": 989.0, "L40S": 362.0}


class EstimateInputError(ValueError):
    """A number the estimator cannot use; the message names it and says what it must be."""


def _explain(exc: ValidationError, what: str) -> EstimateInputError:
    """pydantic's first complaint about an estimator input, worded for people."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or what
    hint = err["msg"].removeprefix("Value error, ")
    got = "" if not err["loc"] else f" (got {err.get('input')!r})"
    return EstimateInputError(f"{where}: {hint}{got}")


def _checked(model: type[BaseModel], **values: Any) -> Any:
    """The one place estimator settings are validated (pydantic)."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise _explain(exc, model.__name__) from None


class ModelShape(BaseModel):
    """The numbers of a decoder-only transformer that decide its cost.

    ``gated_mlp`` is the Llama/Qwen/Mistral MLP (gate, up and down projections); GPT-2/3 use two.
    Build one from a Hugging Face config with ``ModelShape.from_config``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: PositiveInt
    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    intermediate_size: PositiveInt
    num_kv_heads: PositiveInt | None = None  # None: as many as query heads (no GQA)
    head_dim: PositiveInt | None = None  # None: hidden_size / num_heads
    gated_mlp: bool = True
    tie_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has biases on q, k and v
    name: str = ""

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _explain(exc, "ModelShape") from None

    @model_validator(mode="after")
    def _consistent(self) -> ModelShape:
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads "
                             f"{self.num_heads}; give head_dim explicitly")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.kv_heads}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def attention_width(self) -> int:
        """Query heads x head size: the width of the attention products."""
        return self.num_heads * self.dim

    def layer_params(self) -> int:
        h, q, kv = self.hidden_size, self.attention_width, self.kv_heads * self.dim
        attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.attention_bias else 0)
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        return attention + mlp + 2 * h  # two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        """All parameters, counted once (a tied output head shares the embedding)."""
        head = 0 if self.tie_embeddings else self.embedding_params
        return self.embedding_params + self.num_layers * self.layer_params() + self.hidden_size + head

    @property
    def matmul_params(self) -> int:
        """Weights that multiply activations: all but the input embedding (a lookup, no FLOPs)."""
        return self.num_layers * self.layer_params() + self.embedding_params

    @classmethod
    def from_config(cls, source: str | Path | dict | Any) -> ModelShape:
        """From a ``config.json`` (its path or folder), a dict, a transformers config, a model-store
        name (``"smollm2-135m-instruct"``) or a hub id already in the local cache (``AutoConfig``)."""
        name = ""
        if isinstance(source, (str, Path)):
            name = str(source)
            source = _load_config(source)
        cfg = source if isinstance(source, dict) else source.to_dict()
        cfg = {**cfg, **(cfg.get("text_config") or {})}  # multimodal configs nest the language model
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
                   if cfg.get(k) is None]
        if missing:
            raise EstimateInputError(f"the config has no {', '.join(missing)}: is it a decoder-only language model?")
        gated = cfg.get("model_type") not in ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon")
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
            intermediate_size=cfg.get("intermediate_size") or 4 * cfg["hidden_size"],
            num_kv_heads=cfg.get("num_key_value_heads"), head_dim=cfg.get("head_dim"),
            gated_mlp=gated, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
            name=name or cfg.get("_name_or_path", ""),
        )


def _load_config(source: str | Path) -> dict:
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json":
        if not path.exists():
            raise EstimateInputError(f"no config at {path}: give a config.json, its folder, or a model name")
        return json.loads(path.read_text())
    from labkit import store

    try:
        return json.loads((store.model_path(str(source)) / "config.json").read_text())
    except (KeyError, FileNotFoundError, store.ModelNotPulled):
        pass
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(source), local_files_only=True).to_dict()
    except OSError as exc:
        raise EstimateInputError(
            f"no config for {source!r}: not a file, not in the model store (`labkit models`), and not in "
            f"the local Hugging Face cache; give explicit numbers with ModelShape(...) instead") from exc


def _shape(model: ModelShape | str | Path | dict | Any) -> ModelShape:
    return model if isinstance(model, ModelShape) else ModelShape.from_config(model)


@dataclass(frozen=True)
class Bytes:
    """A memory estimate, per device, in bytes; ``total`` sums the parts."""

    weights: float = 0
    gradients: float = 0
    optimizer: float = 0
    activations: float = 0
    logits: float = 0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}

    def __add__(self, other: Bytes) -> Bytes:
        return Bytes(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


class _StateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Precision
    optimizer: Optimizer
    zero_stage: int = Field(ge=0, le=3)
    devices: PositiveInt


# Optimizer bytes per parameter, beyond the weights: Adam's momentum and variance in fp32, 8-bit
# Adam's in one byte each (bitsandbytes), SGD with momentum one buffer, plain SGD none.
_OPTIMIZER_BYTES = {"adamw": 8, "adamw-8bit": 2, "sgd-momentum": 4, "sgd": 0}


def model_state_bytes(model: ModelShape | int | str | dict | Any, *, precision: Precision = "mixed",
                      optimizer: Optimizer = "adamw", zero_stage: int = 0, devices: int = 1) -> Bytes:
    """Weights, gradients and optimizer states per device (ZeRO stage 1 shards the optimizer
    states across ``devices``, stage 2 the gradients too, stage 3 the weights too).

    ``precision="mixed"``: bf16 weights and gradients, fp32 master weights kept with the optimizer
    (ZeRO's K = 12 for Adam). ``"fp32"`` and ``"bf16"``: everything in that type, no master copy.
    ``model`` may be a bare parameter count.
    """
    s = _checked(_StateSettings, precision=precision, optimizer=optimizer, zero_stage=zero_stage, devices=devices)
    if isinstance(model, bool) or (isinstance(model, (int, float)) and not model > 0):
        raise EstimateInputError(f"a parameter count must be a positive number, got {model!r}")
    n = model if isinstance(model, (int, float)) else _shape(model).params
    width = 2 if s.precision in ("bf16", "mixed") else 4
    opt = _OPTIMIZER_BYTES[s.optimizer]
    if s.precision == "bf16" and s.optimizer in ("adamw", "sgd-momentum"):
        opt //= 2  # pure bf16 keeps the states in bf16 too
    if s.precision == "mixed":
        opt += 4  # the fp32 master copy of the weights
    shard = [1.0, 1.0, 1.0]  # weights, gradients, optimizer
    for stage in range(1, s.zero_stage + 1):
        shard[3 - stage] = 1.0 / s.devices
    return Bytes(weights=n * width * shard[0], gradients=n * width * shard[1], optimizer=n * opt * shard[2])


def activation_bytes(model: ModelShape | str | dict | Any, *, batch_size: int, seq_len: int,
                     dtype: str = "bf16", recompute: bool = False) -> Bytes:
    """What the forward pass keeps for the backward pass, for one micro-batch on one device.

    Per layer and token, a Llama-style layer in transformers keeps (elements): each RMSNorm's
    input and output and its normalised value, which it computes in fp32 whatever the model's
    dtype; the rotated queries, the keys and values, and the attention output, which the output
    projection keeps too (SDPA's flash kernel, on CPU and GPU, keeps no ``seq x seq`` matrix); and
    in the MLP the gate, its SiLU, the up projection and their product (4 x intermediate).
    Cross-entropy runs in fp32: at the peak about 12 bytes per vocabulary entry per token (the
    head's output, the log-softmax and its gradient), counted as ``logits``.

    ``recompute=True`` keeps only each layer's input; one layer's full set is live again while
    that layer is recomputed in the backward pass, after the logits are freed, so only the larger
    of the two counts.
    """
    if not (isinstance(batch_size, int) and batch_size > 0 and isinstance(seq_len, int) and seq_len > 0):
        raise EstimateInputError(f"batch_size and seq_len must be positive integers, got {batch_size!r}, {seq_len!r}")
    shape, width = _shape(model), _dtype_bytes(dtype)
    tokens = batch_size * seq_len
    h, q, kv, i = shape.hidden_size, shape.attention_width, shape.kv_heads * shape.dim, shape.intermediate_size
    mlp = 4 * i if shape.gated_mlp else 2 * i
    norm = h * (2 * width + 4)
    full_layer = 2 * norm + (2 * q + 2 * kv + mlp) * width + (shape.num_heads + 2) * 4  # + log-sum-exp, 1/rms
    logits = tokens * shape.vocab_size * 12
    if not recompute:
        return Bytes(activations=tokens * (shape.num_layers * full_layer + norm), logits=logits)
    kept = tokens * (shape.num_layers * h * width + norm)
    return Bytes(activations=kept + max(0, tokens * full_layer - logits), logits=logits)


@dataclass(frozen=True)
class StepBytes(Bytes):
    """A training step's memory. Gradients and activations are not all live at once (each layer's
    gradients appear as its activations are freed, and gradients are freed before the next
    forward), so the peak is weights + optimizer states + the larger of the two."""

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + max(self.gradients, self.activations + self.logits)


def training_step_bytes(model: ModelShape | str | dict | Any, *, batch_size: int, seq_len: int,
                        precision: Precision = "mixed", optimizer: Optimizer = "adamw", zero_stage: int = 0,
                        devices: int = 1, recompute: bool = False) -> StepBytes:
    """Peak memory of one training step on one device: model state plus one micro-batch's
    activations (see ``StepBytes`` for how they overlap)."""
    state = model_state_bytes(model, precision=precision, optimizer=optimizer, zero_stage=zero_stage, devices=devices)
    act = activation_bytes(model, batch_size=batch_size, seq_len=seq_len, recompute=recompute,
                           dtype="fp32" if precision == "fp32" else "bf16")
    return StepBytes(weights=state.weights, gradients=state.gradients, optimizer=state.optimizer,
                     activations=act.activations, logits=act.logits)


def kv_cache_bytes(model: ModelShape | str | dict | Any, *, batch_size: int, seq_len: int, dtype: str = "bf16") -> int:
    """Keys and values of ``batch_size`` sequences of ``seq_len`` tokens, all layers."""
    shape = _shape(model)
    if not (isinstance(batch_size, int) and batch_size > 0 and isinstance(seq_len, int) and seq_len > 0):
        raise EstimateInputError(f"batch_size and seq_len must be positive integers, got {batch_size!r}, {seq_len!r}")
    return 2 * shape.num_layers * shape.kv_heads * shape.dim * batch_size * seq_len * _dtype_bytes(dtype)


def _dtype_bytes(dtype: str) -> int:
    key = str(dtype).removeprefix("torch.")
    if key not in BYTES:
        raise EstimateInputError(f"unknown dtype {dtype!r}; use one of {', '.join(BYTES)}")
    return BYTES[key]


def training_flops(model: ModelShape | str | dict | Any, *, tokens: float, seq_len: int = 2048,
                   attention: bool = True) -> float:
    """FLOPs to train on ``tokens`` tokens: 6 per matmul weight per token, plus attention
    (``12 x layers x seq_len x attention width`` per token; ``attention=False`` gives the bare
    "6ND" that many papers quote). Recomputation adds a forward (not counted: MFU counts the
    model's FLOPs, not the hardware's)."""
    shape = _shape(model)
    if not (tokens > 0 and seq_len > 0):
        raise EstimateInputError(f"tokens and seq_len must be positive, got {tokens!r}, {seq_len!r}")
    attn = 12 * shape.num_layers * seq_len * shape.attention_width if attention else 0
    return tokens * (6 * shape.matmul_params + attn)


def generation_flops_per_token(model: ModelShape | str | dict | Any, *, context: int) -> float:
    """One generated token: 2 per matmul weight, plus scores and values over ``context`` tokens."""
    shape = _shape(model)
    return 2 * shape.matmul_params + 4 * shape.num_layers * context * shape.attention_width


def training_days(flops: float, *, gpus: int, mfu: float, gpu: str = "H100", peak_tflops: float | None = None) -> float:
    """Wall-clock days for ``flops`` on ``gpus`` accelerators running at ``mfu`` of their peak."""
    peak = _peak(gpu, peak_tflops)
    if not (0 < mfu <= 1) or gpus < 1:
        raise EstimateInputError(f"mfu must be in (0, 1] and gpus >= 1, got mfu={mfu!r}, gpus={gpus!r}")
    return flops / (gpus * peak * mfu) / 86400


def gpu_hours(flops: float, *, mfu: float, gpu: str = "H100", peak_tflops: float | None = None) -> float:
    """GPU-hours for ``flops`` at ``mfu``; multiply by a price per GPU-hour for the bill."""
    return training_days(flops, gpus=1, mfu=mfu, gpu=gpu, peak_tflops=peak_tflops) * 24


def mfu(tokens_per_s: float, model: ModelShape | str | dict | Any, *, gpus: int, seq_len: int = 2048,
        gpu: str = "H100", peak_tflops: float | None = None) -> float:
    """Model FLOPs utilisation: the training FLOPs the tokens needed over what the chips could do."""
    return training_flops(model, tokens=tokens_per_s, seq_len=seq_len) / (gpus * _peak(gpu, peak_tflops))


def _peak(gpu: str, peak_tflops: float | None) -> float:
    if peak_tflops is not None:
        if not peak_tflops > 0:
            raise EstimateInputError(f"peak_tflops must be positive, got {peak_tflops!r}")
        return peak_tflops * 1e12
    if gpu not in GPU_PEAK_TFLOPS:
        raise EstimateInputError(f"unknown GPU {gpu!r}; use one of {', '.join(GPU_PEAK_TFLOPS)} or give peak_tflops")
    return GPU_PEAK_TFLOPS[gpu] * 1e12


@dataclass(frozen=True)
class ParallelPlan:
    """One way to split a training job: ``tensor x pipeline x data = gpus``."""

    tensor: int
    pipeline: int
    data: int
    micro_batches: int
    bubble: float  # fraction of a step the pipeline's stages sit idle
    per_gpu: Bytes  # memory on one GPU

    def as_dict(self) -> dict:
        return {**asdict(self), "per_gpu": self.per_gpu.as_dict()}


def parallel_plan(model: ModelShape | str | dict | Any, *, gpus: int, tensor: int = 1, pipeline: int = 1,
                  micro_batches: int = 1, micro_batch_size: int = 1, seq_len: int = 2048,
                  zero_stage: int = 1, recompute: bool = True) -> ParallelPlan:
    """Megatron-style 3D parallelism: tensor parallel splits each layer's matmuls (and its
    activations) ``tensor`` ways, pipeline parallel splits the layers into ``pipeline`` stages, data
    parallel replicates the rest and ZeRO shards the optimizer states across the replicas. 1F1B
    keeps ``pipeline`` micro-batches' activations on the first stage."""
    shape = _shape(model)
    for name, value in (("gpus", gpus), ("tensor", tensor), ("pipeline", pipeline), ("micro_batches", micro_batches)):
        if not (isinstance(value, int) and value >= 1):
            raise EstimateInputError(f"{name} must be a positive integer, got {value!r}")
    if gpus % (tensor * pipeline):
        raise EstimateInputError(f"gpus ({gpus}) must be a multiple of tensor x pipeline ({tensor} x {pipeline})")
    if shape.num_heads % tensor or shape.kv_heads % tensor:
        raise EstimateInputError(f"tensor parallel {tensor} must divide the heads ({shape.num_heads} query, "
                                 f"{shape.kv_heads} KV)")
    if shape.num_layers % pipeline:
        raise EstimateInputError(f"pipeline {pipeline} must divide the layers ({shape.num_layers})")
    data = gpus // (tensor * pipeline)
    state = model_state_bytes(shape, zero_stage=zero_stage, devices=data)
    act = activation_bytes(shape, batch_size=micro_batch_size, seq_len=seq_len, recompute=recompute)
    in_flight = min(pipeline, micro_batches)
    split = tensor * pipeline
    per_gpu = Bytes(weights=state.weights / split, gradients=state.gradients / split,
                    optimizer=state.optimizer / split,
                    activations=act.activations / split * in_flight, logits=act.logits / tensor)
    bubble = (pipeline - 1) / (micro_batches + pipeline - 1)
    return ParallelPlan(tensor=tensor, pipeline=pipeline, data=data, micro_batches=micro_batches,
                        bubble=bubble, per_gpu=per_gpu)


def report(model: ModelShape | str | dict | Any, *, batch_size: int = 1, seq_len: int = 2048,
           precision: Precision = "mixed", optimizer: Optimizer = "adamw", zero_stage: int = 0, devices: int = 1,
           recompute: bool = False, tokens: float | None = None, gpus: int = 1, gpu: str = "H100",
           mfu: float = 0.4) -> dict:
    """Everything above for one model and one setting, as a dict (what ``labkit estimate`` prints)."""
    shape = _shape(model)
    step = training_step_bytes(shape, batch_size=batch_size, seq_len=seq_len, precision=precision,
                               optimizer=optimizer, zero_stage=zero_stage, devices=devices, recompute=recompute)
    kv_dtype = "fp32" if precision == "fp32" else "bf16"
    out = {"model": shape.name or "(explicit numbers)", "params": shape.params,
           "training_step_per_device": step.as_dict(),
           "kv_cache": kv_cache_bytes(shape, batch_size=batch_size, seq_len=seq_len, dtype=kv_dtype),
           "generation_flops_per_token": generation_flops_per_token(shape, context=seq_len)}
    if tokens is not None:
        flops = training_flops(shape, tokens=tokens, seq_len=seq_len)
        out.update(training_flops=flops, gpus=gpus, gpu=gpu, mfu=mfu,
                   training_days=training_days(flops, gpus=gpus, mfu=mfu, gpu=gpu),
                   gpu_hours=gpu_hours(flops, mfu=mfu, gpu=gpu))
    return out


def format_report(r: dict) -> str:
    """``report()`` as lines for a terminal."""
    lines = [f"{r['model']}: {r['params'] / 1e6:,.1f}M parameters", "training step, per device:"]
    lines += [f"  {k:<12} {gib(v):>14}" for k, v in r["training_step_per_device"].items()]
    lines[-1] += "  (weights + optimizer + the larger of gradients and activations + logits)"
    lines.append(f"KV cache     {gib(r['kv_cache']):>14}")
    lines.append(f"one generated token: {r['generation_flops_per_token'] / 1e9:,.2f} GFLOP")
    if "training_flops" in r:
        days = r["training_days"]
        took = f"{days:,.1f} days" if days >= 1 else f"{days * 24:,.2f} hours"
        lines.append(f"training: {r['training_flops']:.3g} FLOPs = {took} on {r['gpus']:,} {r['gpu']} at "
                     f"{r['mfu']:.0%} MFU ({r['gpu_hours']:,.1f} GPU-hours)")
    return "\n".join(lines)


def gib(n: float) -> str:
    """Bytes as GiB, for tables: ``gib(2**31)`` -> ``'2.00 GiB'``."""
    return f"{n / 2**30:,.2f} GiB" if n >= 2**28 else f"{n / 2**20:,.1f} MiB"


__all__ = ["ModelShape", "Bytes", "StepBytes", "ParallelPlan", "EstimateInputError", "GPU_PEAK_TFLOPS",
           "model_state_bytes", "activation_bytes", "training_step_bytes", "kv_cache_bytes", "training_flops",
           "generation_flops_per_token", "training_days", "gpu_hours", "mfu", "parallel_plan", "report",
           "format_report", "gib"]
