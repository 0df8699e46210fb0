"""Fast decoding: transformers' static KV cache, a ``torch.compile``'d decode step, bucketed shapes.

Why plain ``generate`` is slow on a CPU: every step reads all the weights (270 MB for
SmolLM2-135M in bf16) and launches ~400 small PyTorch ops from Python. PyTorch's bf16
matrix-vector kernel streams weights at about a third of the memory bandwidth, small-batch
matmuls are not much better, and the attention kernels are built for long queries, not the one
new token of a decode step. This module keeps the model and changes how a step runs:

* ``StaticCache``: the KV cache is allocated once at a fixed length, so every decode step has the
  same shapes and can be compiled (a growing cache changes shapes every step).
* ``torch.compile`` of the decode step (prefill stays eager: its shapes change with every batch).
  Inductor fuses the small ops into a few C++ loops. At batch 1 it rewrites each matrix-vector
  product as a fused multiply-and-sum that streams bf16 weights about twice as fast
  (``decompose_mm_pass``); above batch 1 it "freezes" the weights into oneDNN's packed layout.
* ``decode_attention``: one query row per step attends with two small matmuls per KV head
  instead of copying KV heads for grouped-query attention.
* Bucketed shapes: a compiled graph is specialised to its (batch, cache length), so batches are
  padded up to a power of two and cache lengths to the next bucket. A handful of graphs serve
  every request; each is compiled once per process and the time is printed, not hidden. Inductor
  caches a batch-1 graph on disk for the next process; a frozen graph (CPU, batch > 1, below)
  holds oneDNN-packed weights, which its cache cannot store ("mkldnn tensors unpickleable"), so
  every process compiles those again (about 100 s for SmolLM2 at batch 4 on 2 cores).

Where a compiler is missing (no C++ toolchain) or compiling fails, decoding goes on with the
same static cache uncompiled, after one warning. Greedy output is the same token for token as
``model.generate`` in fp32; in bf16 both paths round differently, so near ties can go either way
(as they already do in ``generate`` between batch sizes): see ``tests/test_fastgen.py``. Frozen
weights are copied into the compiled graph: load a fresh model after changing its weights.

Example:
    >>> from labkit.llm import load_chat_model
    >>> lm = load_chat_model(fast=True)                       # doctest: +SKIP
    >>> lm.generate(["What is Ray?"] * 8, max_new_tokens=32)   # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from labkit.hf_compat import cache_argument

CACHE_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192)


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (n itself when it is larger than every bucket)."""
    return next((b for b in buckets if b >= n), n)


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for one new token per row (decode), without copying the KV heads.

    With grouped-query attention several query heads share one KV head. Library kernels either
    copy each KV head for every query head (``repeat_kv``) or run a flash kernel built for long
    queries; for a single query row both cost ~10x more than two small matmuls over the groups
    (measured here: 0.34 ms vs 4.1 ms for SDPA at batch 64). Prompts (several rows) go to SDPA.
    Registered with transformers as the ``"labkit_decode"`` attention implementation.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    if q_len != 1 or kwargs.get("sliding_window"):  # prompts, and windowed layers: the library's kernel
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    groups = heads // key.shape[1]
    q = query.reshape(batch, key.shape[1], groups, dim)
    scores = torch.matmul(q, key.transpose(2, 3)) * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:  # [batch, 1, 1, kv]: True (or 0.0) where a row may look
        mask = attention_mask[:, :, -1:, :key.shape[2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value)  # [batch, kv heads, groups, dim]
    return out.reshape(batch, 1, heads, dim), None


def _register_decode_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("labkit_decode", decode_attention)
    AttentionMaskInterface.register("labkit_decode", sdpa_mask)
    return "labkit_decode"


def _enable_gemv_decomposition(vocab_size: int) -> None:
    """Let inductor rewrite (1 x K) @ (K x N) products as fused multiply-sums on the CPU.

    The thresholds are read when inductor's pass module is imported; if something compiled
    before us in this process, the module's copy is raised too.
    """
    import torch._inductor.config as inductor_config

    options = {"cpu_max_other_dimension_decomposition": max(2048, vocab_size)}
    fusion = dict(inductor_config.post_grad_fusion_options)
    fusion["decompose_mm_pass"] = {**fusion.get("decompose_mm_pass", {}), **options}
    inductor_config.post_grad_fusion_options = fusion
    from torch._inductor.fx_passes import decompose_mem_bound_mm as pass_module

    pass_module.cpu_max_other_dimension_decomposition = max(
        pass_module.cpu_max_other_dimension_decomposition, options["cpu_max_other_dimension_decomposition"])


class FastDecoder:
    """Batched greedy or sampled decoding for a transformers causal LM, with a compiled step.

    ``generate`` takes unpadded token-id lists and returns the new tokens of each row (ending
    with the end-of-turn token when one was produced). Example:

        >>> dec = FastDecoder(model)                                    # doctest: +SKIP
        >>> dec.generate([[1, 2, 3]], max_new_tokens=8, eos_token_ids={2}, pad_token_id=0)  # doctest: +SKIP
    """

    def __init__(self, model, *, compile: bool = True, cache_buckets: Sequence[int] = CACHE_BUCKETS,
                 pad_batch_to: int = 1, verbose: bool = True):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.cache_buckets = tuple(sorted(cache_buckets))
        # A server or batch job whose batches vary in size pads them all to one size: one compile.
        self.pad_batch_to = next_power_of_two(pad_batch_to)
        self.verbose = verbose
        self.compile_seconds: dict[tuple[int, int], float] = {}  # (batch, cache length) -> first-step seconds
        # Kept on the model, shared by every decoder of it: inductor's freezing bakes the cache
        # tensors into the compiled graph (like weights), and dynamo reuses that graph for any
        # decoder of the same model, so a second set of caches would silently never be read.
        self._caches: dict[tuple[int, int], object] = model.__dict__.setdefault("_labkit_static_caches", {})
        self.fallback_reason: str | None = None if compile else "compile=False"
        self._cache_arg = cache_argument(model)  # `cache` from transformers 5.24, `past_key_values` before
        self._step = self._eager_step
        if getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager") and \
                hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(_register_decode_attention())
        if compile:
            self._step = self._make_compiled_step()

    @property
    def compiled(self) -> bool:
        return self.fallback_reason is None

    # --- the decode step ------------------------------------------------------------------

    def _eager_step(self, ids, positions, mask, cache):
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, **{self._cache_arg: cache},
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def _make_compiled_step(self):
        import torch._dynamo

        if self.device.type == "cpu":
            _enable_gemv_decomposition(int(self.model.config.vocab_size))
        # One graph per (batch, cache) bucket; the default limit of 8 would fall back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        # CUDA graphs remove the launch overhead that dominates small steps on a GPU.
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        return torch.compile(self._eager_step, fullgraph=True, dynamic=False, mode=mode)

    def _run_step(self, ids, positions, mask, cache, shape):
        if shape in self.compile_seconds or not self.compiled:
            return self._step(ids, positions, mask, cache)
        import torch._inductor.config as inductor_config

        t0 = time.perf_counter()
        try:
            # CPU, several rows: "freezing" lets inductor repack the weights for oneDNN's matmul
            # (about 1.8x at batch 4, 1.1x at 64; one packed copy per compiled shape). At batch 1
            # the multiply-sum rewrite is faster and freezing would replace it.
            with inductor_config.patch(freezing=self.device.type == "cpu" and shape[0] > 1):
                logits = self._step(ids, positions, mask, cache)
        except Exception as exc:  # no C++ compiler, an op inductor cannot lower, ...: decode uncompiled
            self.fallback_reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            warnings.warn(f"torch.compile failed ({self.fallback_reason}); decoding with the static KV cache "
                          "uncompiled, which is about as fast as plain generate", stacklevel=4)
            self._step = self._eager_step
            return self._step(ids, positions, mask, cache)
        self.compile_seconds[shape] = seconds = time.perf_counter() - t0
        if self.verbose:
            tqdm.write(f"[labkit] compiled the decode step for batch {shape[0]} x cache {shape[1]} in "
                       f"{seconds:.1f} s (once per process)")
        return logits

    def _cache(self, batch: int, length: int):
        from transformers import StaticCache

        key = (batch, length)
        if key not in self._caches:  # reused across calls: same tensors, so no recompiles
            self._caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        cache = self._caches[key]
        cache.reset()
        return cache

    # --- generation -----------------------------------------------------------------------

    def cache_length(self, prompt_tokens: int, max_new_tokens: int) -> int:
        context = int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        need = prompt_tokens + max_new_tokens
        if need > context:
            raise ValueError(f"{prompt_tokens} prompt tokens + {max_new_tokens} new tokens exceed the "
                             f"{context}-token context: shorten the prompt or ask for fewer tokens")
        return min(bucket(need, self.cache_buckets), context)

    @torch.inference_mode()
    def generate(self, batch: Sequence[Sequence[int]], *, max_new_tokens: int, eos_token_ids: set[int],
                 pad_token_id: int, temperature: float = 0.0, top_p: float = 1.0,
                 min_new_tokens: int = 0, streamer=None) -> list[list[int]]:
        """New tokens for each row of ``batch``; greedy when ``temperature == 0``.

        ``streamer`` (one row only): a transformers streamer, given the prompt and then each new
        token as it is picked, as ``generate`` does.
        """
        if streamer is not None and len(batch) != 1:
            raise ValueError("streaming takes exactly one prompt")
        if not batch or any(len(row) == 0 for row in batch):
            raise ValueError("every row needs at least one prompt token")
        rows, width = len(batch), max(len(row) for row in batch)
        padded_rows = max(next_power_of_two(rows), self.pad_batch_to)
        length = self.cache_length(width, max_new_tokens)
        # Left-pad (a decoder continues from the right end); extra rows copy row 0 and are dropped.
        full = list(batch) + [batch[0]] * (padded_rows - rows)
        ids = torch.full((padded_rows, width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((padded_rows, length), dtype=torch.long)
        for i, row in enumerate(full):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1  # real prompt tokens and every slot generation will fill
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)

        cache = self._cache(padded_rows, length)
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask[:, :width],
                         **{self._cache_arg: cache}, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
        next_pos = positions[:, -1:] + 1
        eos = torch.tensor(sorted(eos_token_ids), device=self.device)
        done = torch.zeros(padded_rows, dtype=torch.bool, device=self.device)
        new_tokens = []
        if streamer is not None:
            streamer.put(torch.tensor([batch[0]]))
        for step in range(max_new_tokens):
            token = self._pick(logits, step < min_new_tokens, eos, temperature, top_p)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            new_tokens.append(token)
            if streamer is not None and not bool(done[0]):
                streamer.put(token[:1].cpu())
            done |= torch.isin(token, eos)
            if step == max_new_tokens - 1 or bool(done[:rows].all()):
                break
            logits = self._run_step(token[:, None], next_pos, mask, cache, (padded_rows, length))
            next_pos = next_pos + 1
        if streamer is not None:
            streamer.end()
        tokens = torch.stack(new_tokens, 1)[:rows].tolist()
        return [_cut_after_eos(row, eos_token_ids) for row in tokens]

    @staticmethod
    def _pick(logits: torch.Tensor, hold_eos: bool, eos: torch.Tensor, temperature: float,
              top_p: float) -> torch.Tensor:
        logits = logits.float()
        if hold_eos:  # min_new_tokens: the end-of-turn token may not win yet
            logits[:, eos] = float("-inf")
        if temperature == 0:
            return logits.argmax(-1)
        return torch.multinomial(top_p_probs(logits, temperature, top_p), 1)[:, 0]

    def warm_up(self, *, batch_size: int, prompt_tokens: int = 64, max_new_tokens: int = 64) -> float:
        """Compile the step for this shape now (a Serve replica or Ray actor does it at start-up).

        Returns the seconds it took; 0 when the shape was already compiled.
        """
        rows = max(next_power_of_two(batch_size), self.pad_batch_to)
        shape = (rows, self.cache_length(prompt_tokens, max_new_tokens))
        if shape in self.compile_seconds:
            return 0.0
        self.generate([[0] * prompt_tokens] * batch_size, max_new_tokens=2, eos_token_ids=set(),
                      pad_token_id=0)
        return self.compile_seconds.get(shape, 0.0)


def top_p_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Sampling probabilities: softmax at ``temperature``, keeping the smallest set of tokens whose
    probabilities add up to ``top_p`` (nucleus sampling); works on the last dimension."""
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return probs


def _cut_after_eos(row: list[int], eos_token_ids: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in eos_token_ids:
            return row[:i + 1]
    return row


def suggest_batch_size(model, *, prompt_tokens: int = 256, max_new_tokens: int = 256,
                       memory_fraction: float = 0.25) -> int:
    """A batch size that fits in a quarter of the free memory (a power of two, 1 to 64 on CPU, 256 on GPU).

    Per row: the static KV cache (2 x layers x KV heads x head size x cache length) plus the
    logits (vocabulary x 4 bytes, twice). Beyond 64 rows a CPU's matrix units are already busy,
    so bigger batches only add latency. Example:

        >>> suggest_batch_size(lm.model)   # doctest: +SKIP
        64
    """
    import psutil

    cfg = model.config
    device = next(model.parameters()).device
    dtype_bytes = next(model.parameters()).element_size()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * heads * head_dim * dtype_bytes * (prompt_tokens + max_new_tokens)
    per_row = kv + 2 * 4 * cfg.vocab_size + 16 * cfg.hidden_size * 4 * (prompt_tokens + 1)
    if device.type == "cuda":
        free, cap = torch.cuda.mem_get_info(device)[0], 256
    else:
        free, cap = psutil.virtual_memory().available, 64
    fits = int(memory_fraction * free // per_row)
    return max(1, min(cap, 1 << max(0, fits.bit_length() - 1)))
