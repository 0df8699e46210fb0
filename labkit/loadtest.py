"""Load for the serving lab: a small, bounded HTTP load tester (``labkit serve bench``), and
``replay``, which sends the same kind of trace straight into an in-process engine.

It sends ``requests`` chat requests, at most ``concurrency`` at a time, to a server on this
machine, and reports throughput, latency percentiles and errors. It refuses any host but loopback:
it is a lab instrument, not a way to hammer someone else's server.

Example:
    >>> from labkit.loadtest import load_test
    >>> report = load_test("http://127.0.0.1:8000", requests=64, concurrency=16)   # doctest: +SKIP
    >>> report["errors"], round(report["p99_s"], 2)                                 # doctest: +SKIP
    (0, 4.1)

Two ways to send load (``mode``): ``"closed"`` keeps ``concurrency`` requests in flight (each new
one starts when one ends: a fixed number of users), ``"open"`` starts requests at Poisson arrival
times at ``rate`` per second whatever the server does (real traffic: the server can fall behind).
With ``stream=True`` every request streams, and each row records time to first token (TTFT),
time per output token after it (TPOT) and end-to-end latency; ``goodput`` counts the requests per
second that met the SLO (both ``slo_ttft_s`` and ``slo_tpot_s``), the measure DistServe argues for.
``heavy_tailed_lengths`` draws output lengths the way chat traffic has them: mostly short, a few long.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Sequence
from urllib.parse import urlparse

from tqdm.auto import tqdm

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS = 10_000
MAX_CONCURRENCY = 256

CHAT_PATH = "/v1/chat/completions"


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"the load tester only targets this machine (127.0.0.1 / localhost), not {host!r}")
    return url.rstrip("/")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def chat_body(prompt: str, *, max_tokens: int = 32) -> dict:
    return {"model": "labkit", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}


def heavy_tailed_lengths(n: int, *, low: int = 8, high: int = 256, alpha: float = 1.2, seed: int = 0) -> list[int]:
    """``n`` output lengths from a Pareto distribution (shape ``alpha``) cut to ``low..high``:
    most replies short, a few long, as in chat traces (ShareGPT, Azure's LLM traces)."""
    rng = random.Random(seed)
    return [min(high, int(low * (1 - rng.random()) ** (-1 / alpha))) for _ in range(n)]


def load_test(url: str, *, requests: int = 64, concurrency: int = 16, max_tokens: int = 32,
              prompts: list[str] | None = None, bodies: list | None = None, timeout_s: float = 300,
              mode: str = "closed", rate: float | None = None, stream: bool = False,
              lengths: list[int] | None = None, slo_ttft_s: float = 2.0, slo_tpot_s: float = 0.2,
              seed: int = 0, progress: bool = True, phases: Sequence[tuple[float, float]] | None = None) -> dict:
    """Send the requests and measure (see the module docstring for ``mode``, ``stream`` and the SLO).

    ``bodies`` (dicts, or raw bytes for broken JSON) replace the default chat bodies; each result
    row then says which status it got. ``lengths``: each request's exact reply length (``max_tokens``
    and ``min_tokens``), e.g. from ``heavy_tailed_lengths``. ``phases``: a load curve instead of
    one rate, ``[(seconds, requests per second), ...]`` (open loop; see ``phased_arrivals``); the
    number of requests is then what the curve draws, and each row records its ``start_s``.
    """
    base = check_loopback(url)
    starts = None
    if phases is not None:
        if mode != "open" or rate is not None:
            raise ValueError("phases is a load curve for the open loop: use mode='open' and leave rate unset")
        starts = phased_arrivals(phases, seed=seed)
        if not starts:
            raise ValueError("these phases draw no requests at all: give at least one phase a rate above 0")
        requests = len(starts)
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be between 1 and {MAX_REQUESTS}, got {requests}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")
    if mode not in ("closed", "open"):
        raise ValueError(f"mode must be 'closed' (fixed concurrency) or 'open' (Poisson arrivals), got {mode!r}")
    if mode == "open" and phases is None and not (rate and 0 < rate <= 1000):
        raise ValueError("open-loop mode needs a rate between 0 and 1000 requests per second")
    if bodies is None:
        from labkit.data import read_prompts

        prompts = prompts or [r["prompt"] for r in read_prompts("prompts_500")]
        bodies = []
        for i in range(requests):
            body = chat_body(prompts[i % len(prompts)], max_tokens=lengths[i] if lengths else max_tokens)
            if lengths:
                body["min_tokens"] = lengths[i]
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            bodies.append(body)
    bodies = bodies[:requests]
    if mode == "open" and starts is None:
        starts = poisson_arrivals(len(bodies), rate=rate, seed=seed)
    # Open loop: every request may be in flight at once (bounded by the request count and the cap).
    gate = MAX_CONCURRENCY if mode == "open" else concurrency
    report = _run_to_completion(_run(base + CHAT_PATH, bodies, gate, timeout_s, progress, starts))
    report.update(mode=mode, rate=rate, concurrency=concurrency if mode == "closed" else None,
                  phases=[list(p) for p in phases] if phases is not None else None)
    if starts is not None:
        for row in report["rows"]:
            row["start_s"] = starts[row["index"]]
    if any("ttft_s" in r for r in report["rows"] if r["status"] == 200):
        report.update(slo_summary(report["rows"], report["seconds"], slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s))
    return report


def poisson_arrivals(n: int, *, rate: float, seed: int = 0) -> list[float]:
    """``n`` start times (seconds from 0) of a Poisson process at ``rate`` per second: exponential gaps."""
    rng, clock, starts = random.Random(seed), 0.0, []
    for _ in range(n):
        starts.append(clock)
        clock += rng.expovariate(rate)
    return starts


def phased_arrivals(phases: Sequence[tuple[float, float]], *, seed: int = 0) -> list[float]:
    """Start times of Poisson arrivals whose rate changes from phase to phase: a load curve such as
    ``[(60, 0.2), (60, 2.0), (60, 0.2)]`` (quiet, peak, quiet), a day of traffic in minutes.

    A rate of 0 is a silent phase. The draw is the same for the same ``phases`` and ``seed``.

    Example:
        >>> starts = phased_arrivals([(10, 0.5), (10, 4.0), (10, 0.5)], seed=1)
        >>> sum(10 <= t < 20 for t in starts) > sum(t < 10 for t in starts)
        True
    """
    rng, starts, offset = random.Random(seed), [], 0.0
    for i, phase in enumerate(phases):
        if len(phase) != 2:
            raise ValueError(f"phase {i} must be (seconds, requests per second), got {phase!r}")
        seconds, rate = phase
        if not (isinstance(seconds, int | float) and 0 < seconds <= 24 * 3600):
            raise ValueError(f"phase {i}: seconds must be between 0 and a day, got {seconds!r}")
        if not (isinstance(rate, int | float) and 0 <= rate <= 1000):
            raise ValueError(f"phase {i}: the rate must be between 0 and 1000 requests per second, got {rate!r}")
        clock = rng.expovariate(rate) if rate else seconds
        while clock < seconds:
            starts.append(offset + clock)
            clock += rng.expovariate(rate)
        offset += seconds
        if len(starts) > MAX_REQUESTS:
            raise ValueError(f"these phases draw more than {MAX_REQUESTS} requests: shorten them or lower the rates")
    return starts


def slo_summary(rows: list[dict], seconds: float, *, slo_ttft_s: float, slo_tpot_s: float) -> dict:
    """TTFT and TPOT percentiles of the successful rows, and goodput: requests per second that met
    both the TTFT and the TPOT objective (DistServe's measure)."""
    ok = [r for r in rows if r["status"] == 200]
    out: dict = {}
    for key in ("ttft_s", "tpot_s"):
        values = [r[key] for r in ok if r.get(key) is not None]
        out.update({f"{key}_p{q}": percentile(values, q) for q in (50, 95, 99)})
    good = [r for r in ok if r.get("ttft_s") is not None and r["ttft_s"] <= slo_ttft_s
            and (r.get("tpot_s") is None or r["tpot_s"] <= slo_tpot_s)]
    out.update(slo={"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s}, met_slo=len(good), goodput_rps=len(good) / seconds)
    return out


def replay(engine, prompts: list[str], *, lengths: list[int], rate: float | None = None, seed: int = 0,
           slo_ttft_s: float = 2.0, slo_tpot_s: float = 0.2, timeout_s: float = 1800, progress: bool = True) -> dict:
    """The same kind of trace, straight into an in-process ``labkit.engine.Engine``: no HTTP, no Serve.

    Request ``i`` asks ``prompts[i % len(prompts)]`` as a user turn for exactly ``lengths[i]``
    tokens (greedy), arriving at Poisson times at ``rate`` per second (``None``: all at once).
    Give two engines the same arguments and they get the very same trace, so what differs between
    them is the engine's doing (its policy, its prefill mode), not the arrival draw or the network.
    Rows carry TTFT, TPOT and completion time per request; the report adds ``slo_summary``, the
    throughput, and the engine's iterations during the run (``timeline``, for occupancy plots).

    Example:
        >>> report = replay(engine, ["What is Ray?"], lengths=[16] * 8, rate=2.0)   # doctest: +SKIP
        >>> report["goodput_rps"], report["mean_s"]                                # doctest: +SKIP
    """
    from labkit.engine import QueueFull, SamplingParams

    n = len(lengths)
    if not prompts or n < 1:
        raise ValueError("replay needs at least one prompt and one length")
    if rate is not None and not 0 < rate <= 1000:
        raise ValueError(f"rate must be between 0 and 1000 requests per second (or None: all at once), got {rate}")
    starts = poisson_arrivals(n, rate=rate, seed=seed) if rate else [0.0] * n
    texts = [engine.tokenizer.apply_chat_template([{"role": "user", "content": prompts[i % len(prompts)]}],
                                                  tokenize=False, add_generation_prompt=True) for i in range(n)]
    bar = tqdm(total=n, desc="replay", unit="req", disable=not progress)
    engine.start()
    handles: list = []
    t0 = time.perf_counter()
    for i, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        time.sleep(max(0.0, t0 + start - time.perf_counter()))
        try:
            handles.append(engine.submit(texts[i], SamplingParams(max_tokens=length, min_tokens=length),
                                         on_token=lambda token: token is None and bar.update(1)))
        except QueueFull:
            handles.append(None)
            bar.update(1)
    rows = []
    for i, handle in enumerate(handles):
        if handle is None:
            rows.append({"index": i, "status": 429, "latency_s": 0.0, "tokens": 0})
            continue
        handle.request.done.wait(max(1.0, t0 + timeout_s - time.perf_counter()))
        r, times = handle.request, handle.request.token_times
        status = {"stop": 200, "length": 200, None: 0}.get(r.finish_reason, 500)
        rows.append({"index": i, "status": status, "tokens": len(times), "arrival_s": r.arrived - t0,
                     "latency_s": (times[-1] if times else time.perf_counter()) - r.arrived,
                     "ttft_s": times[0] - r.arrived if times else None,
                     "tpot_s": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None})
        if status == 0:
            handle.cancel()
    seconds = time.perf_counter() - t0
    bar.close()
    ok = [r for r in rows if r["status"] == 200]
    latencies = [r["latency_s"] for r in ok]
    return {"requests": n, "ok": len(ok), "errors": n - len(ok), "seconds": seconds, "rate": rate,
            "tokens_per_s": sum(r["tokens"] for r in ok) / seconds, "requests_per_s": len(ok) / seconds,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "mean_s": statistics.fmean(latencies) if latencies else float("nan"), "rows": rows,
            "timeline": [{**row, "t": row["t"] - t0} for row in list(getattr(engine, "timeline", ()))
                         if row["t"] >= t0],
            **slo_summary(rows, seconds, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)}


def _run_to_completion(coro):
    """asyncio.run, also from inside Jupyter (whose event loop is already running: use a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _send(client, url: str, content: bytes) -> dict:
    """One request; a streamed one is read chunk by chunk, timing the first token and the rest."""
    t0 = time.perf_counter()
    async with client.stream("POST", url, content=content, headers={"Content-Type": "application/json"}) as r:
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            raw = await r.aread()
            row = {"status": r.status_code, "latency_s": time.perf_counter() - t0}
            data = json.loads(raw) if r.headers.get("content-type", "").startswith("application/json") else {}
            row["tokens"] = (data.get("usage") or {}).get("completion_tokens", 0)
            row["error"] = (data.get("error") or {}).get("message") if r.status_code >= 400 else None
            return row
        first, pieces, tokens = None, 0, None
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or ():
                if choice.get("delta", {}).get("content"):
                    pieces += 1
                    first = first or time.perf_counter()
        end = time.perf_counter()
    tokens = pieces if tokens is None else tokens
    ttft = (first or end) - t0
    return {"status": r.status_code, "latency_s": end - t0, "tokens": tokens, "error": None, "ttft_s": ttft,
            "tpot_s": (end - first) / (tokens - 1) if first and tokens > 1 else None}


async def _run(url: str, bodies: list, concurrency: int, timeout_s: float, progress: bool,
               starts: list[float] | None = None) -> dict:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    rows: list[dict] = []
    bar = tqdm(total=len(bodies), desc="requests", unit="req", disable=not progress)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def one(i: int, body) -> None:
            if starts is not None:
                await asyncio.sleep(max(0.0, t_start + starts[i] - time.perf_counter()))
            async with gate:
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                t0 = time.perf_counter()
                try:
                    row = {"index": i, **await _send(client, url, content)}
                except (httpx.HTTPError, json.JSONDecodeError) as exc:
                    row = {"index": i, "status": 0, "latency_s": time.perf_counter() - t0, "tokens": 0,
                           "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                bar.update(1)

        t0 = t_start = time.perf_counter()
        tasks = [asyncio.create_task(one(i, b)) for i, b in enumerate(bodies)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:  # bounded in time: whatever is left is cancelled and counted
            task.cancel()
        seconds = time.perf_counter() - t0
    bar.close()
    finished = {r["index"] for r in rows}
    rows += [{"index": i, "status": 0, "latency_s": timeout_s, "tokens": 0, "error": "cancelled: time limit"}
             for i in range(len(bodies)) if i not in finished]
    rows.sort(key=lambda r: r["index"])
    ok = [r for r in rows if r["status"] == 200]
    latencies = [r["latency_s"] for r in ok]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {"requests": len(rows), "concurrency": concurrency, "ok": len(ok), "errors": len(rows) - len(ok),
            "statuses": statuses, "seconds": seconds, "requests_per_s": len(ok) / seconds,
            "tokens_per_s": sum(r["tokens"] for r in ok) / seconds,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "p99_s": percentile(latencies, 99), "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
            "rows": rows}


def plot_reports(reports: list[dict], *, title: str = ""):
    """Goodput and TTFT against arrival rate (several open-loop runs), or the latency distribution
    of one run; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if len(reports) > 1 and all(r.get("rate") for r in reports):
        rates = [r["rate"] for r in reports]
        axes[0].plot(rates, [r.get("goodput_rps", float("nan")) for r in reports], "o-", label="goodput (met SLO)")
        axes[0].plot(rates, [r["requests_per_s"] for r in reports], "s--", label="throughput (all ok)")
        axes[0].set(xlabel="arrival rate (requests/s)", ylabel="requests/s")
        for q, style in ((50, "o-"), (99, "s--")):
            axes[1].plot(rates, [r.get(f"ttft_s_p{q}", float("nan")) for r in reports], style, label=f"TTFT p{q}")
        axes[1].set(xlabel="arrival rate (requests/s)", ylabel="seconds", yscale="log")
    else:
        for r in reports:
            ok = sorted(row["latency_s"] for row in r["rows"] if row["status"] == 200)
            axes[0].plot(ok, [(i + 1) / len(ok) for i in range(len(ok))], label=r.get("label", "end to end"))
            ttft = sorted(row["ttft_s"] for row in r["rows"] if row.get("ttft_s") is not None)
            if ttft:
                axes[1].plot(ttft, [(i + 1) / len(ttft) for i in range(len(ttft))], label=r.get("label", "TTFT"))
        axes[0].set(xlabel="end-to-end latency (s)", ylabel="fraction of requests")
        axes[1].set(xlabel="time to first token (s)", ylabel="fraction of requests")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def mixed_bodies(n: int, *, seed: int = 0, max_tokens: int = 8) -> list[tuple[object, bool]]:
    """``n`` request bodies, about half of them broken in one of many ways, with whether each is good."""
    rng = random.Random(seed)
    good = chat_body("Say hello to the workshop.", max_tokens=max_tokens)
    broken = [
        b"{not json", b"", b"[1, 2, 3]", b'"just a string"',
        {"messages": []}, {"messages": "hello"}, {"max_tokens": 8},
        {"messages": [{"role": "user"}]}, {"messages": [{"role": "user", "content": ""}]},
        {"messages": [{"role": "user", "content": 42}]}, {"messages": [{"role": "wizard", "content": "hi"}]},
        {**good, "max_tokens": 100_000}, {**good, "max_tokens": 0}, {**good, "max_tokens": "ten"},
        {**good, "temperature": -1}, {**good, "temperature": "hot"}, {**good, "stream": "yes"}, {**good, "n": 3},
        {"messages": [{"role": "user", "content": "x" * 70_000}]},
    ]
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append((good, True))
        else:
            out.append((rng.choice(broken), False))
    return out
