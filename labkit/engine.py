"""A continuous-batching engine: requests join and leave the running batch at every decode step.

``@serve.batch`` collects the requests that arrive within a few milliseconds and runs them as one
``generate``: the batch lasts as long as its longest reply, and whoever arrives meanwhile waits
for all of it. This engine instead runs one *iteration* at a time (Orca's iteration-level
scheduling): each iteration its policy (``labkit.scheduling``) picks which live requests run, new
prompts are prefilled, every running request gets one new token, and finished ones leave at once.
Keys and values live in a paged cache (``labkit.kv_blocks``), so memory goes to what requests use.

Per request: its own sampling settings and its own ``torch.Generator`` (a seeded request samples
the same reply whatever else runs beside it; nothing touches the global RNG), token-by-token
output from the same loop, and ``cancel()`` (a client that hangs up frees its blocks at the next
iteration). The queue is bounded: ``submit`` raises ``QueueFull`` rather than buffering without limit.

Roles as in vLLM, each small: the engine loop (here), the scheduler (``labkit.scheduling``), the
block manager and KV pool (``labkit.kv_blocks``), and the model's own forward as the worker.

Example:
    >>> from labkit.llm import load_chat_model
    >>> lm = load_chat_model()                                          # doctest: +SKIP
    >>> engine = Engine(lm.model, lm.tokenizer, max_batch=8)            # doctest: +SKIP
    >>> engine.start()                                                  # doctest: +SKIP
    >>> handle = engine.submit(lm.format_chat("What is Ray?"), SamplingParams(max_tokens=32))  # doctest: +SKIP
    >>> "".join(handle)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from labkit.chat_request import SamplingParams  # the one checked settings type (re-exported here)
from labkit.cpu_runtime import release_openmp_threads, unpack_linear_weights
from labkit.fastgen import top_p_probs
from labkit.kv_blocks import BlockManager, KVHandoff, PagedKVPool, StepKV, register_paged_attention
from labkit.scheduling import PREFILL_MODES, Scheduled, make_policy

# "both": prefill and decode here. DistServe splits them: a "prefill" engine ends each request after
# its first token and hands its KV over (``Request.handoff``); a "decode" engine takes such handoffs.
ROLES = ("both", "prefill", "decode")


class QueueFull(RuntimeError):
    """The engine's waiting queue is full: retry after ``retry_after_s`` (HTTP 429 + Retry-After)."""

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Request:
    """A request as the engine tracks it. Times are ``time.perf_counter()`` seconds."""

    id: str
    tokens: list[int]  # the prompt, then each generated token
    prompt_tokens: int
    params: SamplingParams
    generator: torch.Generator
    sched: Scheduled
    computed: int = 0  # tokens whose keys and values are in the pool
    arrived: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length", "cancelled"
    outbox: queue.Queue = field(default_factory=queue.Queue)  # new token ids, then None at the end
    done: threading.Event = field(default_factory=threading.Event)
    on_token: Callable[[int | None], None] | None = None  # also told each token, then None (an event loop's bridge)
    handoff: KVHandoff | None = None  # prefilled elsewhere (arriving), or for elsewhere (leaving a prefill engine)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_tokens:]


class RequestHandle:
    """The caller's side of a request: iterate (once) for token ids as they come, or wait for them
    all with ``result()``; ``cancel()`` to stop."""

    def __init__(self, engine: Engine, request: Request):
        self._engine, self.request = engine, request

    @property
    def id(self) -> str:
        return self.request.id

    def __iter__(self) -> Iterator[int]:
        while (token := self.request.outbox.get()) is not None:
            yield token

    def result(self, timeout: float | None = None) -> list[int]:
        """Wait for the whole reply; its token ids (end-of-turn included when it came)."""
        if not self.request.done.wait(timeout):
            raise TimeoutError(f"{self.id} did not finish in {timeout} s")
        return list(self.request.generated)

    def cancel(self) -> None:
        self._engine.cancel(self.request.id)

    @property
    def ttft_s(self) -> float | None:
        t = self.request.token_times
        return t[0] - self.request.arrived if t else None


class Engine:
    """Continuous batching over a transformers causal LM (see the module docstring).

    ``max_batch``: most requests decoding together. ``num_blocks`` x ``block_size``: the KV pool
    (default: room for ``max_batch`` full contexts of ``max_context`` tokens). ``max_queue``: most
    requests waiting to start. ``policy``: ``"fcfs"`` or ``"mlfq"``; ``prefill``: one of
    ``labkit.scheduling.PREFILL_MODES``; ``chunk_tokens``: the prompt tokens per iteration in
    ``"chunked"`` mode. ``role``: see ``ROLES`` (``labkit.disaggregation`` pairs the two halves).
    ``compile``: run iterations that only decode through ``torch.compile`` (one graph for every
    batch and context size, with frozen, packed weights on the CPU); prompts stay eager. It costs
    one compile per process (97 s + 46 s for the cpu profile's model on 2 cores: a graph for several
    rows and one for a single row, paid by ``warm_up()`` or the first decodes) and made decode steps
    1.3-1.5x faster in bf16 (``benchmarks/bench_engine.py``). It switches ``model``'s layers back to
    plain weights (``labkit.cpu_runtime``), for every other user of the same model too.
    """

    def __init__(self, model, tokenizer, *, max_batch: int = 16, block_size: int = 16,
                 num_blocks: int | None = None, max_context: int = 1024, max_queue: int = 64,
                 policy: str = "fcfs", policy_options: dict | None = None, prefill: str = "prefill-first",
                 chunk_tokens: int = 64, prefill_tokens_per_step: int = 32, role: str = "both",
                 compile: bool = False):
        if prefill not in PREFILL_MODES:
            raise ValueError(f"unknown prefill mode {prefill!r}: use one of {', '.join(PREFILL_MODES)}")
        if role not in ROLES:
            raise ValueError(f"unknown engine role {role!r}: use one of {', '.join(ROLES)}")
        self.role = role
        self.model, self.tokenizer = model.eval(), tokenizer
        if not hasattr(model, "set_attn_implementation"):
            raise TypeError("the engine needs a transformers model (one with set_attn_implementation)")
        model.set_attn_implementation(register_paged_attention())
        self.device = next(model.parameters()).device
        self.max_batch, self.max_queue, self.prefill, self.chunk_tokens = max_batch, max_queue, prefill, chunk_tokens
        self.max_context = min(max_context, int(getattr(model.config, "max_position_embeddings", max_context)))
        if num_blocks is None:
            num_blocks = 1 + max_batch * -(-self.max_context // block_size)
        self.blocks = BlockManager(num_blocks=num_blocks, block_size=block_size)
        self.pool = PagedKVPool(model.config, num_blocks=num_blocks, block_size=block_size,
                                dtype=next(model.parameters()).dtype, device=self.device)
        self.policy = make_policy(policy, **(policy_options or {}))
        self._no_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self.device)
        self.prefill_tokens_per_step = prefill_tokens_per_step
        eos = model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.live: dict[str, Request] = {}
        self.finished: deque[Request] = deque(maxlen=4096)  # the latest, for statistics
        self.timeline: deque[dict] = deque(maxlen=100_000)  # one row per iteration, for the lab's plots
        self._arrivals = 0
        self.preemptions = 0  # requests that lost their blocks and will be prefilled again
        self._inbox: queue.Queue = queue.Queue()
        self._cancelled: set[str] = set()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.error: BaseException | None = None
        self.compile_seconds: dict[str, float] = {}  # "1 row" / "rows": the first call's seconds, compile included
        self.compile_fallback: str | None = None  # why decode runs eager after all (no compiler, ...)
        self._compiled = None
        if compile:
            # inductor packs the weights itself (freezing); labkit's eager packing would hide them from it
            unpack_linear_weights(model)
            self._compiled = torch.compile(self._decode_logits, dynamic=True)

    # --- the caller's side ----------------------------------------------------------------

    def submit(self, prompt: str | list[int] | KVHandoff, params: SamplingParams | None = None, *,
               request_id: str | None = None, on_token: Callable[[int | None], None] | None = None) -> RequestHandle:
        """Queue a prompt (text, or token ids); raises ``QueueFull`` or ``ValueError`` (too long).

        ``on_token`` is called from the engine's thread with each new token id and then ``None``;
        an asyncio server passes ``lambda t: loop.call_soon_threadsafe(queue.put_nowait, t)``.
        A ``KVHandoff`` from a ``role="prefill"`` engine continues that request here from its
        second token, with the keys and values it brought (no prefill; DistServe's decode side).
        """
        params = SamplingParams() if params is None else params
        handoff = prompt if isinstance(prompt, KVHandoff) else None
        if handoff is not None:
            ids = handoff.tokens[:handoff.prompt_tokens]
        elif isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = list(prompt)
        if not ids:
            raise ValueError("the prompt has no tokens")
        if len(ids) + params.max_tokens > self.max_context:
            raise ValueError(f"{len(ids)} prompt tokens + max_tokens {params.max_tokens} exceed this engine's "
                             f"{self.max_context}-token context: shorten the prompt or ask for fewer tokens")
        if self.blocks.blocks_for(len(ids) + params.max_tokens) > self.blocks.num_blocks - 1:
            raise ValueError("this request needs more KV blocks than the whole pool: give the engine more blocks")
        if self.error is not None:
            raise RuntimeError(f"the engine stopped after an error: {self.error!r}")
        with self._lock:
            # list(): a copy taken in one step, while the engine's thread may be changing the dict
            waiting = self._inbox.qsize() + sum(1 for r in list(self.live.values()) if not r.token_times)
            if waiting >= self.max_queue:
                raise QueueFull(f"{waiting} requests are already waiting (the limit is {self.max_queue}); "
                                "retry shortly", retry_after_s=max(1.0, self._seconds_per_iteration() * 8))
            self._arrivals += 1
            rid = request_id or f"req-{self._arrivals}"
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            generator = torch.Generator(device=self.device).manual_seed(seed)
            request = Request(rid, list(handoff.tokens) if handoff else ids, len(ids), params, generator,
                              Scheduled(rid, self._arrivals, len(ids)), on_token=on_token, handoff=handoff)
            self._inbox.put(request)
            self._lock.notify()
        return RequestHandle(self, request)

    def cancel(self, request_id: str) -> None:
        """Stop a request at the next iteration and free its blocks (a client hung up)."""
        with self._lock:
            self._cancelled.add(request_id)
            self._lock.notify()

    def start(self) -> Engine:
        """Run iterations on a background thread until ``stop()``. The calling thread lets go of
        its idle OpenMP workers first, so the engine's thread gets the CPUs (``labkit.cpu_runtime``)."""
        if self._thread is None:
            release_openmp_threads()
            self._thread = threading.Thread(target=self._loop, name="labkit-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def warm_up(self) -> dict[str, float]:
        """Pay the compile now (``compile=True``), before ``start()``: decode two rows, then one (a
        dynamic graph still specialises on a size of 1). Returns ``compile_seconds``."""
        if self._thread is not None:
            raise RuntimeError("warm_up() runs iterations itself: call it before start()")
        for rows in (2, 1):
            for _ in range(rows):
                self.submit([self.tokenizer.eos_token_id or 0] * 4, SamplingParams(max_tokens=3, min_tokens=3))
            self.run_until_idle()
        self.timeline.clear()
        self.finished.clear()
        return dict(self.compile_seconds)

    def run_until_idle(self, *, max_iterations: int = 1_000_000) -> None:
        """Run iterations on this thread until nothing is left (offline use, tests)."""
        for _ in range(max_iterations):
            if not self.step():
                return

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._stop and not self.live and self._inbox.empty():
                        self._lock.wait()
                    if self._stop:
                        break
                self.step()
        except BaseException as exc:  # the engine died: every caller gets an end, not a hang
            self.error = exc
            while not self._inbox.empty():
                request = self._inbox.get()
                self.live[request.id] = request
            for request in list(self.live.values()):
                self._finish(request, "error")
            raise

    # --- one iteration ----------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> bool:
        """One iteration: admit, rank, prefill and/or decode, emit. Returns whether work was left."""
        while not self._inbox.empty():
            request = self._inbox.get()
            self.policy.admit(request.sched, prefill_tokens_per_step=self.prefill_tokens_per_step)
            self.live[request.id] = request
            if request.handoff is not None:  # prefilled elsewhere: its keys and values go into our blocks
                if self.blocks.grow(request.id, request.prompt_tokens):  # else: prefilled here, like a preempted one
                    self.pool.write(self.blocks.tables[request.id], request.handoff.keys, request.handoff.values)
                    request.computed = request.prompt_tokens
                request.handoff = None
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
        for rid in cancelled & self.live.keys():
            self._finish(self.live[rid], "cancelled")
        if not self.live:
            return False
        t0 = time.perf_counter()
        chosen = self._choose()
        decoding = [r for r in chosen if len(r.tokens) - r.computed == 1]
        prefilling = [r for r in chosen if len(r.tokens) - r.computed > 1]
        if self.prefill == "prefill-first" and prefilling:
            decoding = []
        elif self.prefill == "decode-first" and decoding:
            prefilling = []
        budget = self.chunk_tokens if self.prefill == "chunked" else None
        new_tokens: dict[str, int] = {}
        chunks: list[tuple[Request, int]] = []  # (request, prompt tokens this iteration)
        for request in prefilling:
            todo = len(request.tokens) - request.computed
            n = todo if budget is None else min(todo, budget - sum(c for _, c in chunks))
            if n <= 0:
                break
            chunks.append((request, n))
        # One forward for the iteration: its prompts (or prompt chunks) and its decode rows packed
        # together, so a chunk shares the decode step's matmuls (Sarathi-Serve's point).
        rows = [r for r, _ in chunks] + decoding
        ran = [r.sched for r in rows]
        if rows:
            logits = self._forward(rows, [n for _, n in chunks] + [1] * len(decoding))
            ready = [i for i, r in enumerate(rows) if r.computed == len(r.tokens)]  # whole prompt in: a new token
            if ready:
                emitting = [rows[i] for i in ready]
                for request, token in zip(emitting, self._sample(emitting, logits[ready]), strict=True):
                    self._emit(request, token)
                    new_tokens[request.id] = 1
                    if self.role == "prefill" and request.finish_reason is None:
                        self._hand_off(request)
        prefilled = sum(n for _, n in chunks)
        self.policy.after_iteration(ran, [r.sched for r in self.live.values() if r.sched not in ran], new_tokens)
        self.timeline.append({"t": t0, "seconds": time.perf_counter() - t0, "decode_rows": len(decoding),
                              "prefill_tokens": prefilled, "live": len(self.live), "blocks_used": self.blocks.used,
                              "tokens_in_cache": sum(r.computed for r in self.live.values())})
        return True

    def _choose(self) -> list[Request]:
        """The policy's top requests that fit the batch and the KV blocks; lower-ranked requests lose
        their blocks (recomputed later, as vLLM does) when a higher-ranked one needs room."""
        ranked = [self.live[e.request_id] for e in self.policy.rank([r.sched for r in self.live.values()])]
        chosen: list[Request] = []
        for request in ranked:
            if len(chosen) == self.max_batch:
                break
            while not self.blocks.grow(request.id, self._tokens_after_step(request)):
                victims = [r for r in reversed(ranked) if r not in chosen and r is not request
                           and r.id in self.blocks.tables]
                if not victims:
                    break
                self.blocks.release(victims[0].id)
                self.preemptions += 1
                victims[0].computed = 0  # its prompt and reply so far are prefilled again when it runs
            else:
                chosen.append(request)
        return chosen

    def _tokens_after_step(self, request: Request) -> int:
        todo = len(request.tokens) - request.computed
        if todo > 1 and self.prefill == "chunked":
            return request.computed + min(todo, self.chunk_tokens)
        return len(request.tokens)

    def _forward(self, requests: list[Request], counts: list[int]) -> torch.Tensor:
        """One forward over the rows' new tokens packed into one sequence; each row's next-token logits."""
        rows = [(self.blocks.tables[r.id], r.computed, n) for r, n in zip(requests, counts, strict=True)]
        step, positions, last = self.pool.step_inputs(rows, device=self.device)
        new: list[int] = []
        for r, n in zip(requests, counts, strict=True):
            new += r.tokens[r.computed:r.computed + n]
            r.computed += n
        ids = torch.tensor([new], device=self.device)
        if self._compiled is not None and not step.prompts:
            return self._compiled_decode(ids, positions, step, last)
        return self._logits(ids, positions, step, last)

    def _logits(self, ids: torch.Tensor, positions: torch.Tensor, step: StepKV, last: torch.Tensor) -> torch.Tensor:
        # The decoder, then the vocabulary projection of each row's last token only (a prompt's
        # other positions would cost tokens x vocabulary floats for nothing). The mask argument is
        # a placeholder: the paged attention takes each row's context from ``step``.
        hidden = self.model.get_decoder()(input_ids=ids, position_ids=positions, attention_mask=self._no_mask,
                                          use_cache=False, labkit_kv=step).last_hidden_state
        logits = self.model.get_output_embeddings()(hidden[0, last])
        cap = getattr(self.model.config, "final_logit_softcapping", None)  # Gemma 2 does this after the head
        return torch.tanh(logits / cap) * cap if cap else logits

    def _decode_logits(self, ids, positions, write_index, decode_tokens, decode_read, decode_mask, last):
        """``_logits`` of a decode-only iteration, with plain tensors in and out (what gets compiled)."""
        return self._logits(ids, positions, StepKV(self.pool, write_index, decode_tokens, decode_read, decode_mask),
                            last)

    def _compiled_decode(self, ids, positions, step: StepKV, last) -> torch.Tensor:
        args = (ids, positions, step.write_index, step.decode_tokens, step.decode_read, step.decode_mask, last)
        import torch._inductor.config as inductor_config

        # The pool's tensors stay the same objects for the engine's life, so freezing may bake them
        # into the graph like the weights (in place, not copied) and pack the weights for oneDNN.
        # Patched on every call (about 13 us), so a recompile dynamo decides on later is frozen too.
        freezing = inductor_config.patch(freezing=self.device.type == "cpu")
        shape = "1 row" if len(last) == 1 else "rows"
        if shape in self.compile_seconds:
            with freezing:
                return self._compiled(*args)
        t0 = time.perf_counter()
        try:
            with freezing:
                logits = self._compiled(*args)
        except Exception as exc:  # no C++ compiler, an op inductor cannot lower, ...: decode eager
            self.compile_fallback = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            warnings.warn(f"torch.compile failed ({self.compile_fallback}); the engine decodes eagerly",
                          stacklevel=2)
            self._compiled = None
            return self._decode_logits(*args)
        self.compile_seconds[shape] = seconds = time.perf_counter() - t0
        tqdm.write(f"[labkit] compiled the engine's decode step ({shape}) in {seconds:.1f} s (once per process)")
        return logits

    def _sample(self, requests: list[Request], logits: torch.Tensor) -> list[int]:
        """Each request's next token from its row of ``logits`` (a copy, changed in place). One
        argmax for all rows (a row's argmax does not depend on the others); sampled rows draw with
        their own generator, so a seeded reply does not depend on its company."""
        eos = list(self.eos)
        for i, request in enumerate(requests):
            if len(request.generated) < request.params.min_tokens:
                logits[i, eos] = float("-inf")
        tokens = logits.argmax(dim=-1).tolist()
        for i, request in enumerate(requests):
            p = request.params
            if p.temperature != 0:
                tokens[i] = int(torch.multinomial(top_p_probs(logits[i], p.temperature, p.top_p), 1,
                                                  generator=request.generator))
        return tokens

    def _emit(self, request: Request, token: int) -> None:
        request.tokens.append(token)
        request.token_times.append(time.perf_counter())
        request.outbox.put(token)
        if request.on_token is not None:
            request.on_token(token)
        if token in self.eos:
            self._finish(request, "stop")
        elif len(request.generated) >= request.params.max_tokens:
            self._finish(request, "length")

    def _hand_off(self, request: Request) -> None:
        """A prefill engine's last act for a request: its prompt's keys and values leave with it."""
        keys, values = self.pool.read(self.blocks.tables[request.id], request.prompt_tokens)
        request.handoff = KVHandoff(list(request.tokens), request.prompt_tokens, keys, values,
                                    first_token_time=time.time())
        self._finish(request, "prefilled")

    def _finish(self, request: Request, reason: str) -> None:
        request.finish_reason = reason
        self.blocks.release(request.id)
        self.live.pop(request.id, None)
        self.finished.append(request)
        request.outbox.put(None)
        request.done.set()
        if request.on_token is not None:
            request.on_token(None)

    def _seconds_per_iteration(self) -> float:
        recent = list(self.timeline)[-32:]
        return sum(r["seconds"] for r in recent) / len(recent) if recent else 0.1
