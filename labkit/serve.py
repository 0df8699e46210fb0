"""Online serving with Ray Serve: OpenAI-compatible chat and image endpoints.

Two Serve applications, each scaled and placed on its own:

- ``chat``   at ``/v1/chat``:   ``POST /v1/chat/completions`` (``"stream": true`` gives server-sent events)
- ``images`` at ``/v1/images``: ``POST /v1/images/generations`` (base64 PNGs)

The chat replica batches in one of two ways (``batching``):

- ``"continuous"`` (the default): every request, streamed or not, goes to one engine loop
  (``labkit.engine``) that adds and removes requests at every decode step, over a paged KV cache,
  under a named scheduling policy. A full queue answers 429 with ``Retry-After``; a client that
  hangs up frees its slot.
- ``"static"``: requests that arrive within ``batch_wait_timeout_s`` of each other run as one
  ``generate`` (``@serve.batch``) until the longest reply ends; kept for the serving lab's comparison.

Every bad request gets a 4xx with an OpenAI-style error body; nothing a client sends can take a
replica down. The HTTP proxy listens on 127.0.0.1 only (see the README for exposing it safely).

Example:
    >>> from labkit.serve import ServeSettings, deploy
    >>> deploy(ServeSettings(max_batch_size=8))        # doctest: +SKIP
    >>> # curl http://127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'
"""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` class in the
# route signatures (defined inside functions, so string annotations could not be resolved).
import asyncio
import base64
import functools
import io
import json
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

from labkit import profiles
from labkit.chat_request import InvalidRequest, parse_chat_completion
from labkit.ray_runtime import LOOPBACK, init_ray

MAX_BODY_BYTES = 64 * 1024  # a chat request is a few KB; anything far larger is a mistake or an attack


@dataclass
class ServeSettings:
    """Everything a deployment needs; also what the exported Serve config is made from."""

    profile: str | None = None
    host: str = LOOPBACK
    port: int = 8000
    chat: bool = True
    images: bool = True
    chat_replicas: int = 1
    chat_max_replicas: int | None = None  # > chat_replicas turns on autoscaling between the two
    image_replicas: int = 1
    image_max_replicas: int | None = None  # > image_replicas turns on autoscaling between the two
    # Autoscaling (Serve's autoscaling_config): replicas are added when the ongoing requests per
    # replica stay above the target for upscale_delay_s, removed when below for downscale_delay_s.
    chat_target_ongoing_requests: float | None = None  # None: max_batch_size (a full batch per replica)
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    chat_num_cpus: float = 1
    image_num_cpus: float = 1
    chat_num_gpus: float = 0  # 0.5 + image_num_gpus=0.5: both models share one GPU
    image_num_gpus: float = 0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    max_tokens_limit: int = 512
    default_max_tokens: int = 128
    max_images: int = 4
    fast_generation: bool = False  # compiled decoding: static KV cache (static batching, labkit.fastgen) or
    #                                the engine's compiled decode step (continuous); compiled at start-up
    batching: str = "continuous"  # or "static" (@serve.batch)
    scheduler: str = "fcfs"  # continuous only: "fcfs" or "mlfq" (labkit.scheduling)
    prefill_mode: str = "prefill-first"  # or "decode-first", "chunked"
    max_queue: int = 64  # continuous only: requests waiting to start before 429s
    dtype: str | None = None  # None: the machine's choice (labkit.profiles.pick_device_dtype); "float32" etc.

    def check(self) -> None:
        for name in ("chat_replicas", "image_replicas", "max_batch_size", "max_tokens_limit", "max_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for app in ("chat", "image"):
            top = getattr(self, f"{app}_max_replicas")
            if top is not None and (not isinstance(top, int) or top < getattr(self, f"{app}_replicas")):
                raise ValueError(f"{app}_max_replicas must be a whole number >= {app}_replicas, got {top!r}")
        if self.chat_target_ongoing_requests is not None and not self.chat_target_ongoing_requests > 0:
            raise ValueError(f"chat_target_ongoing_requests must be > 0, got {self.chat_target_ongoing_requests!r}")
        for name in ("chat_num_gpus", "image_num_gpus", "chat_num_cpus", "image_num_cpus", "batch_wait_timeout_s",
                     "upscale_delay_s", "downscale_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError("default_max_tokens must be between 1 and max_tokens_limit")
        from labkit.scheduling import POLICIES, PREFILL_MODES

        for name, allowed in (("batching", ("continuous", "static")), ("scheduler", tuple(POLICIES)),
                              ("prefill_mode", PREFILL_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise ValueError(f"max_queue must be a positive integer, got {self.max_queue!r}")
        if self.dtype is not None:
            profiles.pick_device_dtype(device="cpu", dtype=self.dtype)  # the one dtype check: raises on a bad name


class RequestError(Exception):
    """A client mistake (4xx) or a server fault (5xx): becomes an OpenAI-style error body."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.param, self.status, self.retry_after_s = param, status, retry_after_s


def error_response(exc: RequestError):
    from fastapi.responses import JSONResponse

    kind = {429: "rate_limit_error"}.get(exc.status, "server_error" if exc.status >= 500 else "invalid_request_error")
    headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else None
    return JSONResponse({"error": {"message": str(exc), "type": kind, "param": exc.param, "code": None}},
                        status_code=exc.status, headers=headers)


async def read_json_body(request) -> dict:
    """The request's JSON object, or a RequestError (413 when too large, 400 when not a JSON object)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestError(f"request body is {int(declared):,} bytes; the limit is {MAX_BODY_BYTES:,}", status=413)
    raw = b""
    async for chunk in request.stream():  # counted as it arrives: a missing Content-Length cannot get around it
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise RequestError(f"request body is over the {MAX_BODY_BYTES:,}-byte limit", status=413)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return body


def _number(body: dict, name: str, default, *, low: float, high: float, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}",
                           param=name)
    if not low <= value <= high:
        raise RequestError(f"'{name}' must be between {low:g} and {high:g}, got {value}", param=name)
    return value


def parse_chat_request(body: dict, *, max_tokens_limit: int, default_max_tokens: int) -> dict:
    """An OpenAI chat-completions body, checked by ``labkit.chat_request`` (the one check every door
    shares): the messages, the ``SamplingParams`` to run with, and how to answer."""
    try:
        req = parse_chat_completion(body)
        params = req.sampling(default_max_tokens=default_max_tokens, max_tokens_limit=max_tokens_limit)
    except InvalidRequest as exc:
        raise RequestError(str(exc), param=exc.param) from None
    return {"messages": req.message_dicts(), "params": params, "stream": req.stream,
            "include_usage": req.include_usage}


def parse_image_request(body: dict, *, sizes: list[int], max_images: int) -> dict:
    """Validate an OpenAI images-generations body; ``size`` is "WxH" with W == H, one of ``sizes``."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("'prompt' must be a non-empty string", param="prompt")
    n = _number(body, "n", 1, low=1, high=max_images, integer=True)
    size = body.get("size")
    allowed = [f"{s}x{s}" for s in sizes]
    if size is None:
        size = allowed[0]
    if size not in allowed:
        raise RequestError(f"size {json.dumps(size)} is not supported by this model: use one of {', '.join(allowed)}",
                           param="size")
    fmt = body.get("response_format", "b64_json")
    if fmt != "b64_json":
        raise RequestError("only response_format 'b64_json' is served (no image URLs are hosted)",
                           param="response_format")
    return {"prompt": prompt, "n": n, "size": int(size.split("x")[0]),
            "seed": _number(body, "seed", 0, low=0, high=2**32 - 1, integer=True)}


def _sse_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None = None) -> str:
    """One server-sent event of an OpenAI chat-completion stream."""
    return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]},
                                 ensure_ascii=False) + "\n\n"


# --- the deployments ----------------------------------------------------------------------------

def _chat_deployment():
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from ray import serve

    api = FastAPI(title="labkit chat")

    # Serve asks ``check_health`` every 2 s: a replica whose engine died is replaced within seconds.
    @serve.deployment(name="ChatServer", max_ongoing_requests=64, health_check_period_s=2)
    @serve.ingress(api)
    class ChatServer:
        def __init__(self, settings: dict):
            from labkit import store
            from labkit.cpu_runtime import release_openmp_threads
            from labkit.llm import ChatModel

            self.s = ServeSettings(**settings)
            spec = profiles.model_for("chat", self.s.profile)
            device = _replica_device(self.s.chat_num_gpus)
            self.lm = ChatModel.from_pretrained(store.pull(spec.name, progress=False)[0], device=device,
                                                dtype=self.s.dtype, name=spec.name)
            self.engine = None
            if self.s.batching == "continuous":
                from labkit.engine import Engine

                self.engine = Engine(self.lm.model, self.lm.tokenizer, max_batch=self.s.max_batch_size,
                                     max_context=min(self.lm.context_length, 2048), max_queue=self.s.max_queue,
                                     policy=self.s.scheduler, prefill=self.s.prefill_mode,
                                     compile=self.s.fast_generation)
                if self.s.fast_generation:
                    self.engine.warm_up()  # the compile, before the first request
                self.engine.start()
            elif self.s.fast_generation:  # every batch padded to max_batch_size: one shape, compiled now
                self.lm.set_fast(True, pad_batch_to=self.s.max_batch_size)
                self.lm.warm_up(batch_size=self.s.max_batch_size, max_new_tokens=self.s.default_max_tokens)
            self.generate_batch.set_max_batch_size(self.s.max_batch_size)
            self.generate_batch.set_batch_wait_timeout_s(self.s.batch_wait_timeout_s)
            self.batches: list[int] = []  # sizes of the model batches run, for the lab's plot
            # The model's work runs on one thread of its own (the engine's loop, or this executor's
            # one worker), and this loading thread lets go of its OpenMP workers: two idle-spinning
            # pools on two cores make every op wait for a wake-up (labkit.cpu_runtime).
            self.compute = None if self.engine else ThreadPoolExecutor(1, thread_name_prefix="labkit-generate")
            release_openmp_threads()

        def check_health(self) -> None:
            """Serve's health check: once the engine has failed, this replica answers 503 until
            Serve replaces it with a fresh one."""
            if self.engine is not None and self.engine.error is not None:
                raise RuntimeError(f"the engine stopped after an error: {self.engine.error!r}")

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
        async def generate_batch(self, jobs: list[dict]) -> list:
            self.batches.append(len(jobs))
            return await asyncio.get_running_loop().run_in_executor(self.compute, self._run, jobs)

        def _run(self, jobs: list[dict]) -> list:
            """One model call per group of jobs with the same settings (all of them, in a load test)."""
            results: list = [None] * len(jobs)
            groups: dict[tuple, list[int]] = {}
            for i, job in enumerate(jobs):
                p = job["params"]
                groups.setdefault((p.temperature, p.top_p, p.seed), []).append(i)
            for (temperature, top_p, seed), idx in groups.items():
                # As static batching does: the batch runs until its longest reply; each reply is then
                # cut to its own max_tokens.
                prompts = [self.lm.format_chat(jobs[i]["messages"]) for i in idx]
                params = [jobs[i]["params"] for i in idx]
                gens = self.lm.generate(prompts, chat=False, max_new_tokens=max(p.max_tokens for p in params),
                                        min_new_tokens=max(p.min_tokens for p in params),
                                        temperature=temperature, top_p=top_p, seed=seed, batch_size=len(prompts),
                                        progress=False)
                for i, g in zip(idx, gens, strict=True):
                    results[i] = self._cut(g, jobs[i]["params"].max_tokens)
            return results

        def _cut(self, gen, max_tokens: int):
            if gen.new_tokens <= max_tokens:
                return gen
            ids = self.lm.tokenizer(gen.text, add_special_tokens=False)["input_ids"][:max_tokens]
            return replace(gen, text=self.lm.tokenizer.decode(ids), new_tokens=max_tokens, finish_reason="length")

        @api.post("/completions")
        async def completions(self, request: Request):
            try:
                body = await read_json_body(request)
                job = parse_chat_request(body, max_tokens_limit=self.s.max_tokens_limit,
                                         default_max_tokens=self.s.default_max_tokens)
                self.lm.format_chat(job["messages"])  # template errors surface here, as a 400
            except RequestError as exc:
                return error_response(exc)
            except ValueError as exc:
                return error_response(RequestError(str(exc)))
            rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            if self.engine is not None:
                tokens: asyncio.Queue = asyncio.Queue()
                loop = asyncio.get_running_loop()
                try:
                    handle = self._submit(job, rid, lambda t: loop.call_soon_threadsafe(tokens.put_nowait, t))
                except RequestError as exc:
                    return error_response(exc)
                if job["stream"]:
                    return StreamingResponse(self._engine_sse(handle, tokens, rid, created, job["include_usage"]),
                                             media_type="text/event-stream")
                try:
                    while await tokens.get() is not None:
                        pass
                finally:  # cancelled (the client hung up) before the end: free the slot
                    if handle.request.finish_reason is None:
                        handle.cancel()
                if handle.request.finish_reason == "error":  # the engine failed under it: a server error, not a reply
                    return error_response(RequestError(f"the model failed while generating: {self.engine.error!r}",
                                                       status=500))
                return self._engine_reply(handle, rid, created)
            if job["stream"]:
                return StreamingResponse(self._sse(job, rid, created), media_type="text/event-stream")
            gen = await self.generate_batch(job)
            return {"id": rid, "object": "chat.completion", "created": created, "model": self.lm.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                                 "finish_reason": gen.finish_reason}],
                    "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.new_tokens,
                              "total_tokens": gen.prompt_tokens + gen.new_tokens}}

        def _submit(self, job: dict, rid: str, on_token):
            from labkit.engine import QueueFull

            try:
                return self.engine.submit(self.lm.format_chat(job["messages"]), job["params"], request_id=rid,
                                          on_token=on_token)
            except QueueFull as exc:
                raise RequestError(str(exc), status=429, retry_after_s=exc.retry_after_s) from None
            except RuntimeError as exc:  # the engine stopped after an error: this replica cannot serve
                raise RequestError(str(exc), status=503) from None
            except ValueError as exc:
                raise RequestError(str(exc), param="messages") from None

        def _engine_reply(self, handle, rid: str, created: int) -> dict:
            r = handle.request
            text = self.lm.tokenizer.decode(r.generated, skip_special_tokens=True)
            return {"id": rid, "object": "chat.completion", "created": created, "model": self.lm.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": r.finish_reason}],
                    "usage": self._usage(handle)}

        @staticmethod
        def _usage(handle) -> dict:
            r = handle.request
            return {"prompt_tokens": r.prompt_tokens, "completion_tokens": len(r.generated),
                    "total_tokens": len(r.tokens), "time_to_first_token_s": handle.ttft_s}

        async def _engine_sse(self, handle, tokens: asyncio.Queue, rid: str, created: int, include_usage: bool):
            """Tokens as the engine makes them; the text sent is what is decodable so far (a character
            split over two tokens waits for its second half: the tokenizers library's incremental
            decoder, so each token costs the same however long the reply has grown)."""
            from tokenizers.decoders import DecodeStream

            chunk = functools.partial(_sse_chunk, rid, created, self.lm.name)
            r, decoder = handle.request, DecodeStream(skip_special_tokens=True)
            try:
                yield chunk({"role": "assistant", "content": ""})
                while (token := await tokens.get()) is not None:
                    if piece := decoder.step(self.lm.tokenizer.backend_tokenizer, token):
                        yield chunk({"content": piece})
                yield chunk({}, r.finish_reason)
                if include_usage:  # OpenAI's stream_options: a last chunk with the usage and no choices
                    yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                                 "model": self.lm.name, "choices": [],
                                                 "usage": self._usage(handle)}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:  # also when the client disconnects mid-stream: the engine frees its blocks
                if r.finish_reason is None:
                    handle.cancel()

        async def _sse(self, job: dict, rid: str, created: int):
            from starlette.concurrency import iterate_in_threadpool

            chunk = functools.partial(_sse_chunk, rid, created, self.lm.name)

            yield chunk({"role": "assistant", "content": ""})
            p = job["params"]
            pieces = self.lm.stream(job["messages"], max_new_tokens=p.max_tokens, temperature=p.temperature,
                                    top_p=p.top_p, seed=p.seed)
            async for piece in iterate_in_threadpool(pieces):
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        @api.get("/stats")
        def stats(self) -> dict:
            """Model batch sizes this replica has run (for the lab's batching plot); with the engine,
            the rows of each decode step, and its KV blocks."""
            if self.engine is None:
                return {"batching": "static", "batches": self.batches, "max_batch_size": self.s.max_batch_size}
            timeline = list(self.engine.timeline)
            return {"batching": "continuous", "batches": [row["decode_rows"] for row in timeline if row["decode_rows"]],
                    "max_batch_size": self.s.max_batch_size, "scheduler": self.s.scheduler,
                    "live": len(self.engine.live), "blocks_used": self.engine.blocks.used,
                    "cancelled": sum(r.finish_reason == "cancelled" for r in list(self.engine.finished)),
                    "blocks_total": self.engine.blocks.num_blocks - 1}

    return ChatServer


def _image_deployment():
    from fastapi import FastAPI, Request
    from ray import serve

    api = FastAPI(title="labkit images")

    @serve.deployment(name="ImageServer", max_ongoing_requests=16)
    @serve.ingress(api)
    class ImageServer:
        def __init__(self, settings: dict):
            from labkit import diffusion, store

            self.s = ServeSettings(**settings)
            store.pull(profiles.model_for("image", self.s.profile).name, progress=False)
            self.pipe = diffusion.load_image_pipeline(self.s.profile,
                                                      device=_replica_device(self.s.image_num_gpus))
            self.sizes = diffusion.supported_sizes(self.pipe)
            self.lock = asyncio.Lock()  # one pipeline call at a time; requests queue here

        @api.post("/generations")
        async def generations(self, request: Request):
            from labkit import diffusion

            try:
                job = parse_image_request(await read_json_body(request), sizes=self.sizes,
                                          max_images=self.s.max_images)
            except RequestError as exc:
                return error_response(exc)
            async with self.lock:
                images = await asyncio.to_thread(diffusion.generate, self.pipe, job["prompt"], n=job["n"],
                                                 size=job["size"], seed=job["seed"], progress=False)
            data = []
            for img in images:
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                data.append({"b64_json": base64.b64encode(buf.getvalue()).decode("ascii")})
            return {"created": int(time.time()), "data": data}

    return ImageServer


def _replica_device(num_gpus: float) -> str:
    """A replica given GPUs uses CUDA; one given only logical GPUs (a laptop's autoscaling cluster,
    ``labkit.elastic``) has no CUDA device and runs on the CPU."""
    import torch

    if num_gpus and not torch.cuda.is_available():
        warnings.warn(f"this replica was given {num_gpus:g} GPU(s) but torch sees no CUDA device (logical GPUs "
                      "of a laptop cluster?): it runs on the CPU", stacklevel=2)
        return "cpu"
    return "cuda" if num_gpus else "cpu"


def chat_app(args: dict):
    """Serve application builder (``import_path: labkit.serve:chat_app``); ``args`` are ServeSettings fields."""
    s = ServeSettings(**args)
    s.check()
    options = _replica_options(s, s.chat_replicas, s.chat_max_replicas,
                               s.chat_target_ongoing_requests or s.max_batch_size)
    options["ray_actor_options"] = {"num_cpus": s.chat_num_cpus, "num_gpus": s.chat_num_gpus}
    return _chat_deployment().options(**options).bind(asdict(s))


def _replica_options(s: ServeSettings, replicas: int, max_replicas: int | None, target: float) -> dict:
    """A fixed number of replicas, or Serve's autoscaling between ``replicas`` and ``max_replicas``."""
    if not max_replicas or max_replicas <= replicas:
        return {"num_replicas": replicas}
    return {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                   "target_ongoing_requests": target, "upscale_delay_s": s.upscale_delay_s,
                                   "downscale_delay_s": s.downscale_delay_s}}


def images_app(args: dict):
    """Serve application builder (``import_path: labkit.serve:images_app``)."""
    s = ServeSettings(**args)
    s.check()
    # An image request holds its replica for its whole run (one pipeline call at a time): one ongoing
    # request per replica is a full replica.
    return _image_deployment().options(
        **_replica_options(s, s.image_replicas, s.image_max_replicas, 1),
        ray_actor_options={"num_cpus": s.image_num_cpus, "num_gpus": s.image_num_gpus}).bind(asdict(s))


APPS = {"chat": ("/v1/chat", chat_app), "images": ("/v1/images", images_app)}


def serve_config(settings: ServeSettings | None = None) -> dict:
    """The deployment as a Serve config (what ``serve deploy`` and KubeRay's ``serveConfigV2`` take).

    Validated against Ray Serve's own config schema before it is returned.
    """
    from ray.serve.schema import ServeDeploySchema

    s = settings or ServeSettings()
    s.check()
    apps = []
    for name, (prefix, _) in APPS.items():
        if getattr(s, name):
            apps.append({"name": name, "route_prefix": prefix, "import_path": f"labkit.serve:{name}_app",
                         "args": asdict(s)})
    config = {"proxy_location": "HeadOnly", "http_options": {"host": s.host, "port": s.port},
              "applications": apps}
    ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    return config


def serve_config_yaml(settings: ServeSettings | None = None) -> str:
    import yaml

    return yaml.safe_dump(serve_config(settings), sort_keys=False)


def free_port(preferred: int = 8000) -> int:
    """``preferred`` if nothing listens on it on loopback, else a free port chosen by the OS."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, preferred))
            return preferred
        except OSError:
            sock.bind((LOOPBACK, 0))
            return sock.getsockname()[1]


def wait_ready(url: str, *, timeout_s: float = 180) -> None:
    """Block until the chat route answers (the proxy starts before the replicas have loaded models)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/v1/chat/stats", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready in {timeout_s:.0f}s ({last}); see `labkit serve status`")


def deploy(settings: ServeSettings | None = None, *, address: str | None = None) -> str:
    """Start Serve on loopback (or the given host) and deploy the apps; returns the base URL."""
    from ray import serve

    s = settings or ServeSettings()
    s.check()
    init_ray(address=address)
    serve.start(http_options={"host": s.host, "port": s.port})
    for name, (prefix, builder) in APPS.items():
        if getattr(s, name):
            serve.run(builder(asdict(s)), name=name, route_prefix=prefix, blocking=False)
    return f"http://{s.host}:{s.port}"


def status() -> dict:
    """Application and deployment states, as plain data."""
    from ray import serve

    st = serve.status()
    return {name: {"status": str(app.status.value if hasattr(app.status, "value") else app.status),
                   "deployments": {d: str(dep.status.value if hasattr(dep.status, "value") else dep.status)
                                   for d, dep in app.deployments.items()}}
            for name, app in st.applications.items()}


def replica_states() -> dict[str, dict[str, int]]:
    """Replicas per deployment and state, e.g. ``{"ChatServer": {"RUNNING": 1, "STARTING": 1}}``
    (Serve's states: STARTING, which includes waiting for resources, UPDATING, RECOVERING,
    RUNNING, STOPPING)."""
    from ray import serve

    states: dict[str, dict[str, int]] = {}
    for app in serve.status().applications.values():
        for name, deployment in app.deployments.items():
            mine = states.setdefault(name, {})
            for state, n in (deployment.replica_states or {}).items():
                key = str(getattr(state, "value", state))
                mine[key] = mine.get(key, 0) + n
    return states


def running_replicas() -> dict[str, int]:
    """Replicas in the RUNNING state per deployment, e.g. ``{"ChatServer": 2, "ImageServer": 1}``
    (what autoscaling changes; starting and stopping replicas are not counted)."""
    return {name: states.get("RUNNING", 0) for name, states in replica_states().items()}


def shutdown() -> None:
    """Delete the apps and stop Serve (Ray keeps running)."""
    from ray import serve

    serve.shutdown()
