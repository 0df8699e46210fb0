"""Text-to-image generation with diffusers: the profile's image pipeline, seeds, schedulers, film strips.

On the ``cpu`` profile the pipeline is the kit's own tiny Stable-Diffusion-shaped model trained on
the Shapes dataset (it ships with labkit); on ``gpu`` it is a real hub model (sd-turbo). Both are
plain diffusers pipelines, so everything here works the same on either.

Example:
    >>> from labkit import diffusion
    >>> pipe = diffusion.load_image_pipeline("cpu")                      # doctest: +SKIP
    >>> images = diffusion.generate(pipe, "a red circle on a white background", seed=0, n=4)  # doctest: +SKIP
    >>> diffusion.image_grid(images, cols=4)                              # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from labkit import profiles, store
from labkit.shapes import image_grid  # noqa: F401  (re-exported: the grid helper for notebooks)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "ddpm": "DDPMScheduler",
}


def load_image_pipeline(profile: str | None = None, *, model: str | None = None, device: str | None = None,
                        dtype: str | None = None, scheduler: str | None = None, attention_slicing: bool = False,
                        vae_tiling: bool = False):
    """Load the profile's text-to-image pipeline (or the catalogue's ``model``) from the model
    store (pull it first).

    GPU: fp16, the precision SD-family checkpoints ship in. CPU: fp32, since these small
    convolutional models gain little from bf16 on CPUs. ``attention_slicing`` and ``vae_tiling``
    trade speed for memory on big models and small GPUs.
    """
    from diffusers import DiffusionPipeline

    spec = profiles.model_for("image", profile) if model is None else profiles.CATALOGUE.get(model)
    if spec is None or spec.task != "image":
        names = sorted(n for n, s in profiles.CATALOGUE.items() if s.task == "image")
        raise ValueError(f"{model!r} is not an image model of the catalogue; use one of {', '.join(names)}")
    path = store.model_path(spec.name)
    placement = profiles.pick_device_dtype(device, dtype or _default_dtype(device))
    variant = "fp16" if any(path.glob("*/*.fp16.safetensors")) else None
    pipe = DiffusionPipeline.from_pretrained(path, dtype=placement.dtype, variant=variant,
                                             local_files_only=True)
    pipe = pipe.to(placement.device)
    pipe.set_progress_bar_config(desc="denoise", leave=False)
    if attention_slicing:
        pipe.enable_attention_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if scheduler:
        set_scheduler(pipe, scheduler)
    pipe.labkit_model = spec.name
    return pipe


def _default_dtype(device: str | None) -> str | None:
    if os.environ.get("LABKIT_DTYPE"):
        return None  # the user's choice wins
    target = device or os.environ.get("LABKIT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return "float16" if target.startswith("cuda") else "float32"  # SD-family checkpoints ship fp16


def set_scheduler(pipe, name: str):
    """Swap the sampler (``ddim``, ``euler``, ``dpm``, ``ddpm``), keeping the model's noise schedule."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)
    return pipe


def supported_sizes(pipe) -> list[int]:
    """Image sizes (square, in pixels) the pipeline's UNet and VAE can produce."""
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if native <= 64:  # a tiny model trained at one size only
        return [native]
    step = 8 * pipe.vae_scale_factor
    return list(range(max(step, native // 2), native * 2 + 1, step))


class DenoisingRecorder:
    """A ``callback_on_step_end`` that keeps the latents of every step, for a denoising film strip.

    Example:
        >>> rec = DenoisingRecorder()                                          # doctest: +SKIP
        >>> generate(pipe, "a blue star on a gray background", callback=rec)   # doctest: +SKIP
        >>> frames = rec.images(pipe)                                          # doctest: +SKIP
    """

    def __init__(self):
        self.latents: list[torch.Tensor] = []
        self.timesteps: list[int] = []

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        self.latents.append(callback_kwargs["latents"].detach().clone())
        self.timesteps.append(int(timestep))
        return callback_kwargs

    def images(self, pipe, index: int = 0) -> list[Image.Image]:
        """Decode the recorded latents of image ``index`` (first of the batch by default)."""
        if not self.latents:
            raise ValueError("nothing recorded yet: pass the recorder as callback= to generate()")
        frames = []
        with torch.no_grad():
            for lat in self.latents:
                lat = lat[index:index + 1].to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
                frames.extend(pipe.image_processor.postprocess(pipe.vae.decode(lat).sample, output_type="pil"))
        return frames


def default_sampling(pipe) -> tuple[int, float]:
    """(steps, guidance) the pipeline's model was made for (20 and 4.0 when unknown)."""
    name = getattr(pipe, "labkit_model", None)
    spec = profiles.CATALOGUE.get(name) if name else None
    return spec.sampling if spec and spec.sampling else (20, 4.0)


def generate(pipe, prompt: str | Sequence[str], *, negative_prompt: str | None = None, steps: int | None = None,
             guidance: float | None = None, seed: int = 0, n: int = 1, size: int | None = None,
             batch_size: int = 16, callback: DenoisingRecorder | None = None,
             progress: bool = True) -> list[Image.Image]:
    """Generate ``n`` images for each prompt. Image ``i`` of a prompt always starts from the noise of
    seed ``seed + i``, so results do not depend on ``n`` or ``batch_size`` (beyond float rounding:
    other batch sizes run other kernel shapes, which can move a pixel by one level of 255).

    ``steps`` and ``guidance`` default to what the model was made for (``default_sampling``).
    An empty prompt is allowed and gives an unconditional sample (with a note). Bad values raise
    a ValueError that says what to change, before any work starts.
    """
    default_steps, default_guidance = default_sampling(pipe)
    steps = default_steps if steps is None else steps
    guidance = default_guidance if guidance is None else guidance
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("no prompt given: pass a string or a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} must be a string, got {type(p).__name__}")
    if any(not p.strip() for p in prompts):
        warnings.warn("empty prompt: the model draws an unconditional sample (whatever it likes)", stacklevel=2)
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0 (0 or 1 turns classifier-free guidance off), got {guidance}")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    sizes = supported_sizes(pipe)
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor  # the size it was trained at
    if size not in sizes:
        raise ValueError(f"size {size} is not supported by {getattr(pipe, 'labkit_model', 'this model')}: "
                         f"use one of {sizes}")
    _check_memory(pipe, min(batch_size, n * len(prompts)), size)

    jobs = [(p, seed + i) for p in prompts for i in range(n)]
    device = pipe.device
    images: list[Image.Image] = []
    pipe.set_progress_bar_config(disable=not progress, desc="denoise", leave=False)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
        latents = torch.stack([
            torch.randn(pipe.unet.config.in_channels, size // pipe.vae_scale_factor,
                        size // pipe.vae_scale_factor, generator=g) for g in generators
        ]).to(device=device, dtype=pipe.unet.dtype)
        out = pipe(
            [p for p, _ in chunk], negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
            num_inference_steps=steps, guidance_scale=guidance, height=size, width=size, latents=latents,
            callback_on_step_end=callback,
        )
        images.extend(out.images)
    return images


def _check_memory(pipe, batch: int, size: int) -> None:
    """Refuse batches that clearly cannot fit, before the first step runs out of memory."""
    latent = size // pipe.vae_scale_factor
    # Rough peak: UNet activations ~ 2 (CFG) x batch x channels x latent^2 x a few layers, in bytes.
    channels = max(pipe.unet.config.block_out_channels)
    need = 2 * batch * channels * latent * latent * 48 * torch.finfo(pipe.unet.dtype).bits // 8
    if pipe.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(pipe.device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    if need > 0.8 * free:
        raise ValueError(f"a batch of {batch} images at {size}px needs about {need / 2**30:.1f} GiB, more than "
                         f"the {free / 2**30:.1f} GiB free: lower batch_size (images still come out the same)")


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) or (3, H, W) tensor in [-1, 1] as a PIL image (noisy ones are clipped)."""
    x = pixels[0] if pixels.dim() == 4 else pixels
    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def save_images(images: Sequence[Image.Image], folder: str | Path, *, prefix: str = "image") -> list[Path]:
    """Write PNGs into ``folder`` all or nothing: a failure leaves no partial set behind."""
    if not images:
        raise ValueError("no images to save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".saving-"))
    try:
        names = [f"{prefix}-{i:03d}.png" for i in range(len(images))]
        for img, name in zip(images, names, strict=True):
            img.save(tmp / name)
        paths = []
        for name in names:
            os.replace(tmp / name, folder / name)
            paths.append(folder / name)
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
