"""DistServe's idea on Ray: prompts on one worker, replies on another, the KV cache in between.

In one engine, a prompt that arrives while others stream is prefilled in an iteration of its own
(or beside their decode step), and every running stream waits for it: prefill-decode interference,
seen as spikes in time per output token (``benchmarks/bench_scheduling.py``, prefill modes).
DistServe (Zhong et al., OSDI 2024) gives each phase its own GPUs, sized for its own objective
(time to first token for prefill, time per output token for decode), and ships each request's
KV cache from one to the other. Splitwise (Patel et al., ISCA 2024) does the same across machine
types.

Here each phase is a Ray actor running a ``labkit.engine.Engine`` in its role (``"prefill"``
or ``"decode"``) with its own CPU threads. The prefill actor returns a ``KVHandoff`` (the prompt's
keys and values as CPU tensors); the driver passes that object reference straight to the decode
actor, so the tensors go through Ray's object store, never through the driver.
``DisaggregatedEngine`` looks like an engine to ``labkit.loadtest.replay``, so one trace can be
replayed on a single engine and on the pair.

Written here rather than taken from a library: vLLM's disaggregated prefill needs GPUs and its own
KV connectors; Ray Serve's LLM APIs wrap vLLM. The point of the lab is to see the split itself.

Example:
    >>> pair = DisaggregatedEngine(profile="cpu", prefill_cpus=1, decode_cpus=1)        # doctest: +SKIP
    >>> report = replay(pair, ["What is Ray?"], lengths=[32] * 8, rate=1.0)             # doctest: +SKIP
    >>> pair.stop()                                                                       # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import labkit.ray_runtime  # noqa: F401  (sets Ray's auth mode before anything imports ray)
from labkit.chat_request import SamplingParams


def _to_perf(wall: float) -> float:
    """A ``time.time()`` stamp (any process on this machine) as this process's ``perf_counter``."""
    return wall - (time.time() - time.perf_counter())


class _PhaseWorker:
    """One phase's engine in a Ray actor (made into one by ``DisaggregatedEngine``)."""

    def __init__(self, role: str, profile: str | None, max_batch: int, threads: int, dtype: str | None = None):
        import torch

        from labkit.engine import Engine
        from labkit.llm import load_chat_model

        torch.set_num_threads(threads)
        lm = load_chat_model(profile, dtype=dtype)
        self.engine = Engine(lm.model, lm.tokenizer, max_batch=max_batch, max_queue=4096, role=role).start()

    def ready(self) -> bool:
        return True

    def prefill(self, text: str, params: SamplingParams, request_id: str):
        """The first token and the prompt's KV (a ``KVHandoff``), or the whole reply if that was all."""
        handle = self.engine.submit(text, params, request_id=request_id)
        handle.result()
        request = handle.request
        if request.finish_reason != "prefilled":
            return self._reply(request)
        handoff, request.handoff = request.handoff, None  # the engine keeps finished requests: not their KV
        return handoff

    def decode(self, handoff, params: SamplingParams, request_id: str) -> dict:
        """The rest of the reply to a ``KVHandoff`` (Ray has fetched it from the object store)."""
        if isinstance(handoff, dict):  # finished at its first token (or cancelled): nothing to decode
            return handoff
        handle = self.engine.submit(handoff, params, request_id=request_id)
        handle.result()
        return {**self._reply(handle.request), "kv_bytes": handoff.nbytes,
                "first_token_time": handoff.first_token_time}

    def cancel(self, request_id: str) -> None:
        self.engine.cancel(request_id)

    @staticmethod
    def _reply(request) -> dict:
        offset = time.time() - time.perf_counter()  # wall-clock stamps: the driver is another process
        return {"tokens": request.generated, "finish_reason": request.finish_reason,
                "token_times": [t + offset for t in request.token_times]}


@dataclass(eq=False)
class _PairRequest:
    """What ``replay`` reads from a request (the same fields as ``labkit.engine.Request``)."""

    arrived: float = field(default_factory=time.perf_counter)
    generated: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    kv_bytes: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class _PairHandle:
    def __init__(self, request: _PairRequest, request_id: str, actors: tuple):
        self.request, self.id, self._actors = request, request_id, actors

    def cancel(self) -> None:
        """Stop it in whichever phase has it (a request not yet in an engine is not caught)."""
        for actor in self._actors:
            actor.cancel.remote(self.id)


class DisaggregatedEngine:
    """A prefill actor and a decode actor that together take ``submit`` like one ``Engine``.

    ``prefill_cpus`` and ``decode_cpus``: CPUs (and torch threads) for each actor; joins or starts
    Ray with ``labkit.ray_runtime.init_ray``. ``dtype`` (e.g. ``"float32"``) overrides the
    machine's choice in both actors. ``stop()`` ends the two actors (and nothing else).
    """

    def __init__(self, *, profile: str | None = None, prefill_cpus: int = 1, decode_cpus: int = 1,
                 max_batch: int = 16, dtype: str | None = None):
        import ray
        from transformers import AutoTokenizer

        from labkit import profiles
        from labkit.ray_runtime import init_ray
        from labkit.store import pull

        for name, value in (("prefill_cpus", prefill_cpus), ("decode_cpus", decode_cpus), ("max_batch", max_batch)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        info = init_ray()
        if info.resources.get("CPU", 0) < prefill_cpus + decode_cpus:
            raise ValueError(f"the two actors need {prefill_cpus + decode_cpus} CPUs but the Ray cluster has "
                             f"{info.resources.get('CPU', 0):g}: give them fewer")
        self.tokenizer = AutoTokenizer.from_pretrained(pull(profiles.model_for("chat", profile).name,
                                                            progress=False)[0])
        worker = ray.remote(_PhaseWorker)
        # Threaded actors: each call waits on its own request while the engine batches them all.
        self.prefill_actor = worker.options(num_cpus=prefill_cpus, max_concurrency=256).remote(
            "prefill", profile, max_batch, prefill_cpus, dtype)
        self.decode_actor = worker.options(num_cpus=decode_cpus, max_concurrency=256).remote(
            "decode", profile, max_batch, decode_cpus, dtype)
        try:  # a cluster whose CPUs are held by other actors would otherwise leave these pending forever
            ray.get([self.prefill_actor.ready.remote(), self.decode_actor.ready.remote()], timeout=600)
        except ray.exceptions.GetTimeoutError:
            self.stop()
            raise RuntimeError(f"the prefill and decode actors were not placed within 10 minutes: they need "
                               f"{prefill_cpus + decode_cpus} free CPUs and the cluster has "
                               f"{ray.available_resources().get('CPU', 0):g} free; end what holds them") from None
        self._ids = itertools.count(1)

    def start(self) -> DisaggregatedEngine:
        return self

    def submit(self, prompt: str, params: SamplingParams | None = None, *,
               on_token: Callable[[int | None], None] | None = None) -> _PairHandle:
        """Send a prompt through both phases; the handle's request fills in when the reply is done
        (``on_token`` is told ``None`` then: no streaming between the actors in this lab)."""
        params = SamplingParams() if params is None else params
        request, request_id = _PairRequest(), f"pair-{next(self._ids)}"
        handoff = self.prefill_actor.prefill.remote(prompt, params, request_id)
        reply = self.decode_actor.decode.remote(handoff, params, request_id)  # a reference: Ray moves the KV
        threading.Thread(target=self._collect, args=(request, reply, on_token), daemon=True).start()
        return _PairHandle(request, request_id, (self.prefill_actor, self.decode_actor))

    @staticmethod
    def _collect(request: _PairRequest, reply, on_token) -> None:
        import ray

        try:
            out = ray.get(reply)
            request.generated = list(out["tokens"])
            request.token_times = [_to_perf(t) for t in out["token_times"]]
            if "first_token_time" in out:
                request.token_times.insert(0, _to_perf(out["first_token_time"]))
            request.finish_reason, request.kv_bytes = out["finish_reason"], out.get("kv_bytes", 0)
        except Exception:  # noqa: BLE001 - an actor failed: this request ends as an error, not a hang
            request.finish_reason = "error"
        request.done.set()
        if on_token is not None:
            on_token(None)

    timeline: tuple = ()  # no single engine to read iterations from

    def stop(self) -> None:
        import ray

        for actor in (self.prefill_actor, self.decode_actor):
            ray.kill(actor)
