"""A small, bounded HTTP load tester for the serving lab (``labkit serve bench``).

It sends ``requests`` chat requests, at most ``concurrency`` at a time, to a server on this
machine, and reports throughput, latency percentiles and errors. It refuses any host but loopback:
it is a lab instrument, not a way to hammer someone else's server.

Example:
    >>> from labkit.loadtest import load_test
    >>> report = load_test("http://127.0.0.1:8000", requests=64, concurrency=16)   # doctest: +SKIP
    >>> report["errors"], round(report["p99_s"], 2)                                 # doctest: +SKIP
    (0, 4.1)
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
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


def load_test(url: str, *, requests: int = 64, concurrency: int = 16, max_tokens: int = 32,
              prompts: list[str] | None = None, bodies: list | None = None, timeout_s: float = 300,
              progress: bool = True) -> dict:
    """Send the requests and measure. ``bodies`` (dicts, or raw bytes for broken JSON) replace the
    default chat bodies; each result row then says which status it got.
    """
    base = check_loopback(url)
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be between 1 and {MAX_REQUESTS}, got {requests}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")
    if bodies is None:
        from labkit.data import read_prompts

        prompts = prompts or [r["prompt"] for r in read_prompts("prompts_500")]
        bodies = [chat_body(prompts[i % len(prompts)], max_tokens=max_tokens) for i in range(requests)]
    bodies = bodies[:requests]
    return _run_to_completion(_run(base + CHAT_PATH, bodies, concurrency, timeout_s, progress))


def _run_to_completion(coro):
    """asyncio.run, also from inside Jupyter (whose event loop is already running: use a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _run(url: str, bodies: list, concurrency: int, timeout_s: float, progress: bool) -> dict:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    rows: list[dict] = []
    bar = tqdm(total=len(bodies), desc="requests", unit="req", disable=not progress)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def one(i: int, body) -> None:
            async with gate:
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=content, headers={"Content-Type": "application/json"})
                    row = {"index": i, "status": r.status_code, "latency_s": time.perf_counter() - t0}
                    data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    row["tokens"] = (data.get("usage") or {}).get("completion_tokens", 0)
                    row["error"] = (data.get("error") or {}).get("message") if r.status_code >= 400 else None
                except httpx.HTTPError as exc:
                    row = {"index": i, "status": 0, "latency_s": time.perf_counter() - t0, "tokens": 0,
                           "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                bar.update(1)

        t0 = time.perf_counter()
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
