"""Text generation: load the profile's chat model from the store, chat, batch, stream, measure.

Batches are left-padded (a decoder continues from the right end of each row) and prompts are
sorted by length before they are cut into batches, so little padding is computed and results
come back in input order.

Example:
    >>> from labkit.llm import load_chat_model
    >>> lm = load_chat_model()                                   # doctest: +SKIP
    >>> lm.generate(["What is Ray?"], max_new_tokens=32)[0].text  # doctest: +SKIP
    'Ray is an open-source framework ...'
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from labkit import profiles, store
from labkit.chat_request import check_generation, check_messages, check_prompt
from labkit.cpu_runtime import pack_linear_weights, release_openmp_threads, unpack_linear_weights
from labkit.fastgen import FastDecoder, suggest_batch_size

Messages = list[dict[str, str]]


@dataclass
class Generation:
    """One prompt's result. ``seconds`` is the wall time of the batch it ran in."""

    prompt: str
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    finish_reason: str  # "stop" (end-of-turn token) or "length" (hit max_new_tokens)
    batch: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def tokens_per_second(generations: Sequence[Generation]) -> float:
    """Aggregate throughput: all new tokens over the wall time of all batches (each counted once)."""
    batch_seconds = {g.batch: g.seconds for g in generations}
    total = sum(batch_seconds.values())
    return sum(g.new_tokens for g in generations) / total if total > 0 else float("nan")


class ChatModel:
    """A causal LM with its tokenizer, placed on a device, with guard rails on every input."""

    def __init__(self, model, tokenizer, *, name: str, placement: profiles.Placement, fast: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name
        self.placement = placement
        self.decoder: FastDecoder | None = None
        self.set_fast(fast)

    def set_fast(self, enabled: bool = True, *, compile: bool = True, pad_batch_to: int = 1) -> None:
        """Switch ``generate`` to labkit's fast decoder (static KV cache + compiled step) or back.

        The first batch of each new shape pays the compile (printed when it happens); call
        ``warm_up`` to pay it up front. ``pad_batch_to``: pad smaller batches up to this many rows
        so that one compiled shape serves them all (servers, batch jobs). See ``labkit.fastgen``.
        Without it, bf16 layers on the CPU multiply with pre-packed weights (``labkit.cpu_runtime``);
        the fast decoder gets the plain layers, since its compile packs them itself.
        """
        if enabled:
            unpack_linear_weights(self.model)
        else:
            pack_linear_weights(self.model)
        self.decoder = FastDecoder(self.model, compile=compile, pad_batch_to=pad_batch_to) if enabled else None

    def warm_up(self, *, batch_size: int = 1, max_new_tokens: int = 64) -> float:
        """Compile the fast decoder for this batch size now; returns the seconds it took."""
        if self.decoder is None:
            raise RuntimeError("warm_up needs the fast decoder: load with fast=True or call set_fast()")
        return self.decoder.warm_up(batch_size=batch_size, max_new_tokens=max_new_tokens)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | None = None, dtype: str | None = None,
                        name: str | None = None, fast: bool = False) -> ChatModel:
        """Load from a local folder (no network is touched). ``fast=True``: see ``set_fast``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        placement = profiles.pick_device_dtype(device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=placement.dtype, attn_implementation="sdpa", local_files_only=True
        ).to(placement.device)
        return cls(model, tokenizer, name=name or Path(path).name, placement=placement, fast=fast)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def __repr__(self) -> str:
        p = self.placement
        return f"ChatModel({self.name!r}, device={p.device}, dtype={str(p.dtype).removeprefix('torch.')})"

    # --- tokens and templates -------------------------------------------------------------

    def tokenize(self, text: str) -> list[tuple[int, str]]:
        """(id, piece) pairs, to see how the model splits text."""
        check_prompt(text, "text")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [(i, self.tokenizer.decode([i])) for i in ids]

    def format_chat(self, messages: str | Messages, *, system: str | None = None) -> str:
        """Render messages with the model's own chat template, ready for generation."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        messages = check_messages(messages)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # --- generation -----------------------------------------------------------------------

    def generate(self, prompts: str | Sequence[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, batch_size: int | None = None, chat: bool = True,
                 system: str | None = None, min_new_tokens: int = 0, progress: bool = True) -> list[Generation]:
        """Generate for each prompt; greedy when ``temperature == 0``.

        ``chat=True`` wraps each prompt as a user turn in the chat template. Prompts too long for
        the context are cut from the left (the end of a prompt matters most) with a warning.
        A ``seed`` makes sampling repeatable for the same prompts and batch size.
        ``min_new_tokens`` holds back the end-of-turn token that long (benchmarks use it so every
        row generates the same number of tokens). ``batch_size=None`` picks one from free memory
        (``labkit.fastgen.suggest_batch_size``).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given: pass a string or a non-empty list of strings")
        for i, p in enumerate(prompts):
            check_prompt(p, f"prompt {i}")
        check_generation(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                         min_new_tokens=min_new_tokens)
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size <= 0):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_new_tokens >= self.context_length:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the "
                             f"{self.context_length}-token context: use fewer new tokens")
        texts = [self.format_chat(p, system=system) if chat else p for p in prompts]
        ids = [self._encode(t, i, max_new_tokens) for i, t in enumerate(texts)]
        if batch_size is None:
            batch_size = min(len(ids), suggest_batch_size(self.model, prompt_tokens=max(map(len, ids)),
                                                          max_new_tokens=max_new_tokens))
        if seed is not None:
            torch.manual_seed(seed)

        # Longest first, so each batch holds similar lengths and padding stays small.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        results: list[Generation | None] = [None] * len(ids)
        bar = tqdm(total=len(ids), desc="generate", unit="prompt", disable=not progress or len(ids) <= batch_size)
        for b, start in enumerate(range(0, len(order), batch_size)):
            chunk = order[start:start + batch_size]
            outs, seconds = self._generate_batch([ids[i] for i in chunk], max_new_tokens, temperature, top_p,
                                                 min_new_tokens)
            for i, new in zip(chunk, outs, strict=True):
                stop = self._stop_index(new)
                results[i] = Generation(
                    prompt=prompts[i], text=self.tokenizer.decode(new[:stop], skip_special_tokens=True),
                    prompt_tokens=len(ids[i]), new_tokens=min(stop + 1, len(new)), seconds=seconds,
                    finish_reason="stop" if stop < len(new) else "length", batch=b)
            bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def chat(self, messages: str | Messages, **kwargs) -> Generation:
        """One reply to a conversation (a list of {"role", "content"} dicts, or one user string)."""
        text = self.format_chat(messages, system=kwargs.pop("system", None))
        return self.generate([text], chat=False, progress=False, **kwargs)[0]

    def stream(self, messages: str | Messages, *, max_new_tokens: int = 128, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, system: str | None = None) -> Iterator[str]:
        """Yield the reply piece by piece as it is generated (for a chat widget)."""
        from transformers import TextIteratorStreamer

        check_generation(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        ids = self._encode(self.format_chat(messages, system=system), 0, max_new_tokens)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        if seed is not None:
            torch.manual_seed(seed)
        kwargs = dict(self._batch_inputs([ids]), streamer=streamer,
                      **self._sampling_kwargs(max_new_tokens, temperature, top_p))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                if self.decoder is not None:  # the same path (and kernels) as generate()
                    self.decoder.generate([ids], max_new_tokens=max_new_tokens, eos_token_ids=self._eos_ids(),
                                          pad_token_id=self.tokenizer.pad_token_id, temperature=temperature,
                                          top_p=top_p, streamer=streamer)
                    return
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        release_openmp_threads()  # this thread waits while the worker computes: the CPUs are the worker's
        worker.start()
        yield from (piece for piece in streamer if piece)
        worker.join()
        if errors:
            raise errors[0]

    # --- internals ------------------------------------------------------------------------

    def _encode(self, text: str, index: int, max_new_tokens: int) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = self.context_length - max_new_tokens
        if len(ids) > room:
            warnings.warn(f"prompt {index} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} only "
                          f"{room} fit the {self.context_length}-token context, so its first "
                          f"{len(ids) - room} tokens were dropped", stacklevel=3)
            ids = ids[-room:]
        return ids

    def _batch_inputs(self, batch: list[list[int]]) -> dict[str, torch.Tensor]:
        padded = self.tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
        return {k: v.to(self.placement.device) for k, v in padded.items()}

    def _sampling_kwargs(self, max_new_tokens: int, temperature: float, top_p: float) -> dict:
        kw = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _generate_batch(self, batch: list[list[int]], max_new_tokens: int, temperature: float,
                        top_p: float, min_new_tokens: int) -> tuple[list[list[int]], float]:
        if self.decoder is not None:
            t0 = time.perf_counter()
            outs = self.decoder.generate(batch, max_new_tokens=max_new_tokens, eos_token_ids=self._eos_ids(),
                                         pad_token_id=self.tokenizer.pad_token_id, temperature=temperature,
                                         top_p=top_p, min_new_tokens=min_new_tokens)
            return outs, time.perf_counter() - t0
        inputs = self._batch_inputs(batch)
        kwargs = self._sampling_kwargs(max_new_tokens, temperature, top_p)
        if min_new_tokens:
            kwargs["min_new_tokens"] = min(min_new_tokens, max_new_tokens)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - t0
        width = inputs["input_ids"].shape[1]
        return [row[width:].tolist() for row in out], seconds

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def _stop_index(self, new: list[int]) -> int:
        """Index of the first end-of-turn token in ``new`` (len(new) when there is none)."""
        eos = self._eos_ids()
        return next((i for i, t in enumerate(new) if t in eos), len(new))


def load_chat_model(profile: str | None = None, *, model: str | None = None, device: str | None = None,
                    dtype: str | None = None, fast: bool = False) -> ChatModel:
    """Load the profile's chat model from the store (pull it first with ``labkit models pull``),
    or the store's model named ``model`` (one fine-tuned here, for example).

    ``fast=True`` decodes with a static KV cache and a compiled step (``labkit.fastgen``).
    """
    name = model or profiles.model_for("chat", profile).name
    return ChatModel.from_pretrained(store.model_path(name), device=device, dtype=dtype, name=name, fast=fast)


def measure_throughput(lm: ChatModel, prompts: Sequence[str], *, batch_sizes: Sequence[int] = (1, 8, 32),
                       max_new_tokens: int = 64, repeats: int = 1, progress: bool = True) -> list[dict]:
    """Tokens/s at each batch size, greedy, on the same prompts: rows ready for a plot or a table.

    Every row generates exactly ``max_new_tokens`` (end-of-turn is held back), so batch sizes
    compare like for like. Each batch size runs once to warm up, then ``repeats`` times; the
    median is reported. (``labkit.roofline.bench_generate`` does the measuring, for several
    models at once and against the machine's ceilings.)
    """
    from labkit.roofline import bench_generate

    rows = bench_generate({lm.name: lm}, prompts, batch_sizes=batch_sizes, max_new_tokens=max_new_tokens,
                          repeats=repeats, progress=progress)
    return [{"batch_size": r["batch_size"], "tokens_per_s": r["tokens_per_s"], "ms_per_step": r["ms_per_step"],
             "new_tokens": r["batch_size"] * max_new_tokens} for r in rows]
