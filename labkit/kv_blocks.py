"""Paged KV cache: fixed-size blocks handed out as sequences grow, and attention that reads them.

A padded cache reserves ``batch x longest possible sequence`` up front, so most of it holds
nothing: a reply that stops after 20 tokens still owns room for 512. vLLM's PagedAttention
(Kwon et al., SOSP 2023) stores keys and values in blocks of ``block_size`` tokens instead, like
pages of virtual memory: a sequence gets a block when it needs one, a block table maps its
logical positions to physical blocks, and a finished request returns its blocks at once. Memory
then limits how many requests run together by what they *use*, not by what they *might* use.

Three roles, each small:

* ``BlockManager``: bookkeeping only (which blocks each request holds, which are free).
* ``PagedKVPool``: the physical tensors, one ``[kv heads, blocks x block_size, head size]`` pair
  per layer, and ``step_inputs``, which turns block tables into the indices a forward pass needs.
  Heads come first so that a row's gathered context is one contiguous matrix per head: batched
  matmuls over strided bf16 matrices ran several times slower on the CPU.
* ``paged_attention``: registered with transformers as the ``"labkit_paged"`` attention, so the
  model's own layers run unchanged. It writes the step's new keys and values into their slots,
  gathers each row's context through its block table, and attends.

Why our own instead of transformers' continuous batching (``generate_batch``, ``paged|sdpa``):
on the kit's 2-core CPU in fp32 it ran at 0.34x to 0.74x the speed of one plain padded
``generate`` of the same requests, and its scheduler cannot be swapped for the policies the
serving lab compares (``benchmarks/bench_engine.py``, ``docs/benchmarks.md``). vLLM reads blocks
in place with a fused kernel; PyTorch has none for CPUs, so we gather each row's blocks into one
tensor per step: a copy, yet the engine's eager decode steps ran at 0.82x to 1.16x labkit's
compiled fast path at batch 4 and 16 on an AVX2 CPU in fp32, and at 0.66x to 0.78x on an AMX CPU
in bf16, where ``Engine(compile=True)`` brings them to 0.92x to 1.04x.

Example:
    >>> blocks = BlockManager(num_blocks=8, block_size=16)
    >>> blocks.grow("a", 20)         # 20 tokens need 2 blocks
    True
    >>> blocks.used, blocks.free_blocks
    (2, 5)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SCRATCH_BLOCK = 0  # pads the context of shorter decode rows (masked out); no sequence owns it


class BlockManager:
    """Which KV blocks each request holds. Block 0 is kept back as scratch (see ``SCRATCH_BLOCK``)."""

    def __init__(self, *, num_blocks: int, block_size: int = 16):
        if num_blocks < 2 or block_size < 1:
            raise ValueError("a paged cache needs at least 2 blocks (one is scratch) of at least 1 token")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = list(range(num_blocks - 1, 0, -1))  # a stack: the lowest numbers are used first
        self.tables: dict[object, list[int]] = {}

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.num_blocks - 1 - len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def grow(self, request_id, tokens: int) -> bool:
        """Make ``request_id``'s table cover ``tokens`` tokens; False (and nothing taken) if the
        free blocks do not suffice."""
        table = self.tables.setdefault(request_id, [])
        extra = self.blocks_for(tokens) - len(table)
        if extra > len(self._free):
            if not table:
                del self.tables[request_id]
            return False
        table.extend(self._free.pop() for _ in range(max(0, extra)))
        return True

    def release(self, request_id) -> int:
        """Return a request's blocks to the free list; returns how many."""
        table = self.tables.pop(request_id, [])
        self._free.extend(reversed(table))
        return len(table)


@dataclass
class StepKV:
    """What ``paged_attention`` needs for one forward pass over a packed batch.

    The step's new tokens, every row's, sit side by side in one sequence of ``T`` tokens (no
    padding: vLLM's flattened batch), so a prompt chunk and the decode rows share every matmul.
    ``write_index`` [T]: flat pool slots for their new keys and values. Rows with one new token
    (decode) attend together: ``decode_tokens`` [D] (their places in the packed sequence),
    ``decode_read`` [D x context] (each row's context slots, padded with scratch) and
    ``decode_mask`` [1 x D x 1 x context]. Rows with several (a prompt or a chunk of one) each get
    their own attention: ``prompts`` holds (offset in the packed sequence, new tokens, first new
    position, context slots).
    """

    pool: PagedKVPool
    write_index: torch.Tensor
    decode_tokens: torch.Tensor | None = None
    decode_read: torch.Tensor | None = None
    decode_mask: torch.Tensor | None = None
    prompts: list[tuple[int, int, int, torch.Tensor]] = field(default_factory=list)


@dataclass
class KVHandoff:
    """A prefilled request on its way from a prefill engine to a decode engine (DistServe).

    ``tokens``: the prompt, then the first reply token; ``keys``/``values``: the prompt's, per
    layer, ``[prompt tokens, kv heads, head size]`` on the CPU, so that Ray's object store can carry
    them to another process. ``first_token_time``: when the first token was made (``time.time()``).
    """

    tokens: list[int]
    prompt_tokens: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    first_token_time: float

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class PagedKVPool:
    """The physical KV memory: per layer, keys and values for ``num_blocks x block_size`` tokens."""

    def __init__(self, config, *, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (heads, num_blocks * block_size, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.block_size = block_size
        self.bytes_per_block = 2 * config.num_hidden_layers * block_size * heads * head_dim * dtype.itemsize

    @staticmethod
    def bytes_per_token(config, dtype: torch.dtype) -> int:
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 2 * config.num_hidden_layers * heads * head_dim * dtype.itemsize

    def slots(self, table: list[int], start: int, stop: int) -> list[int]:
        """Flat pool slots of logical positions ``start..stop-1`` of a sequence with this table."""
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]

    def read(self, table: list[int], tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of the keys and values of a sequence's first ``tokens`` positions, per layer, as
        ``[tokens, kv heads, head size]`` on the CPU."""
        index = torch.tensor(self.slots(table, 0, tokens), dtype=torch.long, device=self.keys[0].device)
        return ([k[:, index].transpose(0, 1).cpu() for k in self.keys],
                [v[:, index].transpose(0, 1).cpu() for v in self.values])

    def write(self, table: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Put keys and values made elsewhere (``read`` on another pool) at a sequence's first positions."""
        if len(keys) != len(self.keys) or keys[0].shape[1:] != self.keys[0].shape[::2]:
            raise ValueError("these keys and values come from a different model (layers or heads differ)")
        index = torch.tensor(self.slots(table, 0, keys[0].shape[0]), dtype=torch.long, device=self.keys[0].device)
        for pool, new in zip((*self.keys, *self.values), (*keys, *values), strict=True):
            pool.index_copy_(1, index, new.transpose(0, 1).to(device=pool.device, dtype=pool.dtype))

    def step_inputs(self, rows: list[tuple[list[int], int, int]], *, device) -> tuple[StepKV, torch.Tensor,
                                                                                       torch.Tensor]:
        """For rows of (block table, first new position, number of new tokens): the StepKV, the
        position ids [1 x T] of the packed sequence, and the packed index of each row's last token."""
        write, positions, last = [], [], []
        decode_rows, decode_at, prompts = [], [], []
        for table, start, n in rows:
            offset = len(positions)
            write += self.slots(table, start, start + n)
            positions += range(start, start + n)
            last.append(offset + n - 1)
            if n == 1:
                decode_rows.append((table, start))
                decode_at.append(offset)
            else:
                read = torch.tensor(self.slots(table, 0, start + n), dtype=torch.long, device=device)
                prompts.append((offset, n, start, read))
        step = StepKV(self, torch.tensor(write, dtype=torch.long, device=device), prompts=prompts)
        if decode_rows:
            context = max(start + 1 for _, start in decode_rows)
            scratch = SCRATCH_BLOCK * self.block_size
            read = [self.slots(table, 0, start + 1) + [scratch] * (context - start - 1) for table, start in decode_rows]
            lengths = torch.tensor([start + 1 for _, start in decode_rows])
            step.decode_tokens = torch.tensor(decode_at, dtype=torch.long, device=device)
            step.decode_read = torch.tensor(read, dtype=torch.long, device=device)
            step.decode_mask = (torch.arange(context)[None, :] < lengths[:, None])[None, :, None, :].to(device)
        return (step, torch.tensor([positions], dtype=torch.long, device=device),
                torch.tensor(last, dtype=torch.long, device=device))


def paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *,
                    labkit_kv: StepKV | None = None, **kwargs):
    """Attention over a paged cache for a packed step (see ``StepKV``); the model's own
    ``attention_mask`` is not used: each row's context comes from its block table."""
    if labkit_kv is None:  # the same model used outside the engine (generate, the fast decoder)
        from labkit.fastgen import decode_attention

        return decode_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    _, heads, tokens, dim = query.shape  # [1, heads, T, dim]: one packed sequence
    kv_heads = key.shape[1]
    pool_k, pool_v = labkit_kv.pool.keys[module.layer_idx], labkit_kv.pool.values[module.layer_idx]
    pool_k.index_copy_(1, labkit_kv.write_index, key[0])
    pool_v.index_copy_(1, labkit_kv.write_index, value[0])
    scale = scaling if scaling is not None else dim ** -0.5
    q = query[0].transpose(0, 1)  # [T, heads, dim]
    out = torch.empty_like(q)
    if labkit_kv.decode_tokens is not None:  # one query per row: two small matmuls per KV head group
        rows, context = labkit_kv.decode_read.shape
        qd = q[labkit_kv.decode_tokens].reshape(rows, kv_heads, heads // kv_heads, dim).transpose(0, 1)
        read = labkit_kv.decode_read.flatten()  # the gather: [kv heads, rows, context, dim], contiguous
        k = pool_k.index_select(1, read).view(kv_heads, rows, context, dim)
        v = pool_v.index_select(1, read).view(kv_heads, rows, context, dim)
        scores = torch.matmul(qd, k.transpose(2, 3)) * scale  # [kv heads, rows, group, context]
        scores = scores.masked_fill(~labkit_kv.decode_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        out[labkit_kv.decode_tokens] = torch.matmul(probs, v).transpose(0, 1).reshape(rows, heads, dim)
    for offset, n, start, read in labkit_kv.prompts:  # a prompt (or a chunk of one) attends on its own
        k = pool_k[:, read][None]  # [1, kv heads, start + n, dim]
        v = pool_v[:, read][None]
        qp = query[:, :, offset:offset + n]
        if start == 0:
            o = torch.nn.functional.scaled_dot_product_attention(qp, k, v, is_causal=True, scale=scale,
                                                                 enable_gqa=kv_heads != heads)
        else:  # a later chunk: its query i sees the cached prefix and its own first i + 1 tokens
            mask = torch.ones(n, start + n, dtype=torch.bool, device=query.device).tril(start)
            o = torch.nn.functional.scaled_dot_product_attention(qp, k, v, attn_mask=mask, scale=scale,
                                                                 enable_gqa=kv_heads != heads)
        out[offset:offset + n] = o[0].transpose(0, 1)
    return out[None], None


def register_paged_attention() -> str:
    """Register ``paged_attention`` with transformers; returns its name for ``set_attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("labkit_paged", paged_attention)
    AttentionMaskInterface.register("labkit_paged", sdpa_mask)  # unused: the engine passes a 4D mask
    return "labkit_paged"
