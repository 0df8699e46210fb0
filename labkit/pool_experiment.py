"""One pool, two ways to run it: a static split against a shared elastic pool, on the same load.

The question from the cloud-native ML systems talk: a room has N accelerators, a chat service
whose traffic comes in waves, and a training job that would use every idle device. Either split
the pool (half serves, half trains, always) or share it (inference takes what its traffic needs,
first; training gets the rest and gives it back at a peak). :func:`run_pool` runs one day of load
(a quiet, peak, quiet curve) through one of the two on the laptop's autoscaling cluster
(``labkit.elastic``) and records, every second, who holds which device; :func:`summarize` turns
that into the figures the talk quotes: utilisation, inference SLO attainment, training samples and
the reaction times; :func:`plot_pool` draws it.

What is real: the Ray cluster and its nodes, Ray Serve's replicas and autoscaler, Ray Train's
workers, their resizes and checkpoints, the HTTP load (``labkit.loadtest``) and every timing.
What stands in for hardware: the pool's GPUs are logical (one per node) and a request or a
training step "computes" by holding its device for a fixed time (``service_s``, ``step_s``), since
there is no device here, and on two CPU cores real models would measure the cores' contention,
which a room of GPUs does not have. A replica serves one request at a time, as a GPU runs one
batch at a time, so a queue forms when the load outgrows the replicas.

Example:
    >>> from labkit.pool_experiment import run_pool, summarize
    >>> runs = [run_pool(mode) for mode in ("static", "shared")]      # doctest: +SKIP
    >>> [summarize(r)["slo_attainment"] for r in runs]                  # doctest: +SKIP
    [0.54, 0.82]
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from labkit import loadtest
from labkit.elastic import AutoscalingCluster
from labkit.k8s.spec import ClusterSpec, GroupSpec
from labkit.ray_runtime import LOOPBACK, free_port, init_ray

Mode = Literal["static", "shared"]
MODES: tuple[str, ...] = ("static", "shared")
DEFAULT_CURVE: tuple[tuple[float, float], ...] = ((30, 1.0), (60, 6.0), (60, 1.0))  # quiet, peak, quiet
DEPLOYMENT = "Inference"


def pool_cluster(gpus: int = 4) -> ClusterSpec:
    """A head and a pool of ``gpus`` nodes with one (logical) GPU each, all up from the start: the
    room's GPU pool at laptop size. The pool is fixed; what changes is who uses it."""
    if not (isinstance(gpus, int) and 2 <= gpus <= 8):
        raise ValueError(f"gpus must be a whole number from 2 to 8 (one Ray node each on this machine), got {gpus!r}")
    return ClusterSpec(name="labkit-pool", head=GroupSpec(cpus=1, memory="1Gi"),
                       workers=[GroupSpec(name="gpu", cpus=1, memory="1Gi", gpus=1, replicas=gpus,
                                          min_replicas=gpus, max_replicas=gpus, idle_timeout_s=60)])


def plan(mode: Mode, gpus: int) -> dict:
    """How each mode divides ``gpus``: inference replicas and training workers, (min, max) each.

    Static: half and half, fixed. Shared: inference from 1 to all but one, training from 1 to all
    but one; inference is reserved first (``labkit.elastic_training.InferenceFirst``)."""
    if mode == "static":
        serve_n = gpus // 2
        return {"inference": (serve_n, serve_n), "training": (gpus - serve_n, gpus - serve_n)}
    if mode == "shared":
        return {"inference": (1, gpus - 1), "training": (1, gpus - 1)}
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def inference_app(*, replicas: tuple[int, int], service_s: float, target_ongoing: float = 1.0,
                  upscale_delay_s: float = 2.0, downscale_delay_s: float = 10.0):
    """The Serve app: an OpenAI-style chat route whose replica holds one GPU and serves one request
    at a time for ``service_s`` (see the module docstring); autoscaled when ``replicas`` is a range."""
    import asyncio

    from ray import serve

    low, high = replicas
    options: dict = {"ray_actor_options": {"num_cpus": 0, "num_gpus": 1}, "max_ongoing_requests": 16}
    if low == high:
        options["num_replicas"] = low
    else:
        options["autoscaling_config"] = {"min_replicas": low, "initial_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": target_ongoing,
                                         # decide on the last 5 s of load, not Serve's default 30 s
                                         "metrics_interval_s": 1.0, "look_back_period_s": 5.0,
                                         "upscale_delay_s": upscale_delay_s, "downscale_delay_s": downscale_delay_s}

    @serve.deployment(name=DEPLOYMENT, **options)
    class Inference:
        def __init__(self):
            self.device = asyncio.Lock()  # one request on the device at a time

        async def __call__(self, request) -> dict:
            async with self.device:
                await asyncio.sleep(service_s)
            return {"choices": [{"message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"completion_tokens": 1}}

    return Inference.bind()


def run_pool(mode: Mode, *, gpus: int = 4, curve: Sequence[tuple[float, float]] = DEFAULT_CURVE,
             service_s: float = 0.25, slo_s: float = 1.0, step_s: float = 0.2, checkpoint_every: int = 25,
             monitor_interval_s: float = 5.0, upscale_delay_s: float = 2.0, downscale_delay_s: float = 10.0,
             seed: int = 0,
             storage: str | Path | None = None, progress: bool = True) -> dict:
    """Run ``curve`` (``[(seconds, requests per second), ...]``) against a pool of ``gpus`` run as
    ``mode`` while a training job runs beside it; returns the timeline and the raw rows.

    Starts its own autoscaling cluster and ends it (every process it started) before returning.
    The process must not be joined to another Ray cluster already (restart the kernel, or run it
    in a process of its own).
    """
    import ray

    from labkit import store
    from labkit.elastic_training import InferenceFirst, read_progress, train_elastic

    split = plan(mode, gpus)
    loadtest.phased_arrivals(curve)  # a bad curve fails here, before anything starts
    if not (0 < service_s <= 10 and 0 < slo_s and 0 <= step_s <= 10):
        raise ValueError("service_s and step_s must be between 0 and 10 seconds and slo_s above 0")
    if ray.is_initialized():
        raise RuntimeError("this process is already joined to a Ray cluster; the experiment starts a cluster of "
                           "its own: restart the kernel (or call ray.shutdown()) and run it again")
    storage = Path(storage or store.labkit_home() / "train").resolve()
    name = f"pool-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    stop_file = storage / name / "STOP"
    say = print if progress else (lambda *a, **k: None)
    out: dict = {"mode": mode, "gpus": gpus, "plan": split, "curve": [list(p) for p in curve],
                 "service_s": service_s, "slo_s": slo_s, "step_s": step_s}
    with AutoscalingCluster(pool_cluster(gpus)) as cluster:
        out["session_dir"] = str(cluster.head.temp_dir)  # every process of the pool names it
        say(f"[{mode}] starting a pool of {gpus} GPU nodes ...")
        cluster.wait_for_nodes({"gpu": gpus}, timeout_s=180)
        init_ray(address=cluster.address)
        from ray import serve

        arbiter = None
        try:
            port = free_port()
            serve.start(proxy_location="HeadOnly", http_options={"host": LOOPBACK, "port": port})
            if mode == "shared":  # before training asks: ties go to whoever asked first
                arbiter = InferenceFirst({DEPLOYMENT: {"CPU": 0, "GPU": 1}}, poll_s=0.5).start()
            serve.run(inference_app(replicas=split["inference"], service_s=service_s, upscale_delay_s=upscale_delay_s,
                                    downscale_delay_s=downscale_delay_s), name="inference", route_prefix="/")
            low, high = split["training"]
            trained: dict = {}

            def train() -> None:
                try:
                    trained["run"] = train_elastic(min_workers=low, max_workers=high, steps=10**6, step_s=step_s,
                                                   checkpoint_every=checkpoint_every, storage=storage, name=name,
                                                   monitor_interval_s=monitor_interval_s, stop_file=stop_file)
                except BaseException as exc:  # noqa: BLE001  (raised below, in the caller's thread)
                    trained["error"] = exc

            trainer = threading.Thread(target=train, name="labkit-pool-training", daemon=True)
            trainer.start()
            progress_file = storage / name / "progress.jsonl"
            say(f"[{mode}] waiting for training to reach {high} workers ...")
            _wait(lambda: (read_progress(progress_file).rows or [{}])[-1].get("world_size") == high
                  or "error" in trained, timeout_s=240, what=f"training at {high} workers")
            if "error" in trained:
                raise trained["error"]
            timeline, watching = [], threading.Event()

            def watch() -> None:
                while not watching.wait(1.0):
                    rows, now = read_progress(progress_file).rows, time.time()
                    # workers that stepped in the last two seconds (0 while the group restarts)
                    stepping = rows[-1]["world_size"] if rows and now - rows[-1]["t"] < 2.0 else 0
                    timeline.append({"t": now, "gpu_nodes": cluster.counts().get("gpu", 0),
                                     "replicas": _running(), "training": stepping})

            watcher = threading.Thread(target=watch, name="labkit-pool-watch", daemon=True)
            watcher.start()
            say(f"[{mode}] load curve {list(curve)} ...")
            out["t0"] = time.time()
            report = loadtest.load_test(f"http://{LOOPBACK}:{port}", mode="open", phases=curve, seed=seed,
                                        bodies=_bodies(curve, seed), progress=progress,
                                        timeout_s=sum(s for s, _ in curve) + 120)
            out["t_end"] = time.time()
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.touch()
            trainer.join(timeout=180)
            watching.set()
            watcher.join()
            if "error" in trained:
                raise trained["error"]
            out["requests"] = [{"start_s": r["start_s"], "latency_s": r["latency_s"], "ok": r["status"] == 200}
                               for r in report["rows"]]
            out["training_rows"] = read_progress(progress_file).rows
            out["timeline"] = timeline
            out["arbiter"] = arbiter.history if arbiter else []
        finally:
            if arbiter is not None:
                arbiter.stop()
            serve.shutdown()
            ray.shutdown()
    return out


def _bodies(curve, seed: int) -> list[dict]:
    n = len(loadtest.phased_arrivals(curve, seed=seed))
    return [loadtest.chat_body("hello", max_tokens=1) for _ in range(n)]


def _running() -> int:
    from labkit.serve import running_replicas

    try:
        return running_replicas().get(DEPLOYMENT, 0)
    except Exception:  # noqa: BLE001  (Serve busy or going away: none counted this second)
        return 0


def _wait(ready, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f}s")
        time.sleep(0.5)


def summarize(run: dict) -> dict:
    """The figures of one run: ``utilisation`` (device-seconds busy / pool device-seconds, over
    the curve), ``slo_attainment`` (requests answered within ``slo_s``; ``peak_slo_attainment``
    for those that arrived in the curve's busiest phase), ``training_samples`` done during the
    curve, and for a shared pool ``scale_up_s`` (peak start to one more replica serving) and
    ``training_back_s`` (peak end to training at its full size again)."""
    t0, t_end, gpus = run["t0"], run["t_end"], run["gpus"]
    bins = max(1, math.ceil(t_end - t0))
    busy = [0.0] * bins

    def add(start: float, end: float, weight: float = 1.0) -> None:
        for b in range(max(0, int(start - t0)), min(bins, int(end - t0) + 1)):
            lo, hi = max(start, t0 + b), min(end, t0 + b + 1)
            if hi > lo:
                busy[b] += (hi - lo) * weight

    for r in run["requests"]:
        if r["ok"]:
            end = t0 + r["start_s"] + r["latency_s"]
            add(end - run["service_s"], end)
    rows = run["training_rows"]
    for row in rows:  # each step held world_size devices for step_s
        add(row["t"] - run["step_s"], row["t"], row["world_size"])
    answered = [r for r in run["requests"] if r["ok"]]
    in_slo = [r for r in answered if r["latency_s"] <= run["slo_s"]]
    starts = _phase_starts(run["curve"])
    peak = max(range(len(run["curve"])), key=lambda i: run["curve"][i][1])
    peak_from, peak_to = starts[peak], starts[peak] + run["curve"][peak][0]
    in_peak = [r for r in run["requests"] if peak_from <= r["start_s"] < peak_to]

    def samples_at(t: float) -> int:
        done = [row["samples"] for row in rows if row["t"] <= t]
        return done[-1] if done else 0

    out = {"mode": run["mode"], "gpus": gpus, "seconds": t_end - t0,
           "utilisation": sum(busy) / (gpus * bins),
           "slo_attainment": len(in_slo) / len(run["requests"]) if run["requests"] else float("nan"),
           "peak_slo_attainment": (sum(r["ok"] and r["latency_s"] <= run["slo_s"] for r in in_peak) / len(in_peak)
                                   if in_peak else float("nan")),
           "requests": len(run["requests"]), "errors": sum(not r["ok"] for r in run["requests"]),
           "training_samples": samples_at(t_end) - samples_at(t0),
           "p50_latency_s": loadtest.percentile([r["latency_s"] for r in answered], 50),
           "restarts": sum(1 for a, b in zip(rows, rows[1:], strict=False) if a["attempt"] != b["attempt"])}
    if run["mode"] == "shared":
        timeline = run["timeline"]
        before = [s["replicas"] for s in timeline if s["t"] < t0 + peak_from]
        base = before[-1] if before else run["plan"]["inference"][0]
        up = [s["t"] for s in timeline if s["t"] >= t0 + peak_from and s["replicas"] > base]
        out["scale_up_s"] = up[0] - (t0 + peak_from) if up else None
        full = run["plan"]["training"][1]
        back = [row["t"] for row in rows if row["t"] >= t0 + peak_to and row["world_size"] == full]
        shrunk = any(row["world_size"] < full for row in rows if row["t"] >= t0 + peak_from)
        out["training_back_s"] = back[0] - (t0 + peak_to) if back and shrunk else None
    return out


def _phase_starts(curve) -> list[float]:
    starts, clock = [], 0.0
    for seconds, _ in curve:
        starts.append(clock)
        clock += seconds
    return starts


def plot_pool(runs: list[dict], *, title: str = ""):
    """Who holds the pool's devices over time, one panel per run: inference replicas and training
    workers stacked against the pool's size, the load curve on top, requests that missed the SLO
    as marks. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.6 * len(runs)), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        t0, summary = run["t0"], summarize(run)
        ts = [s["t"] - t0 for s in run["timeline"]]
        serve_n = [s["replicas"] for s in run["timeline"]]
        train_n = [s["training"] for s in run["timeline"]]
        ax.stackplot(ts, serve_n, train_n, labels=["inference replicas", "training workers"],
                     colors=["#d95f02", "#1b9e77"], alpha=0.8, step="post")
        ax.axhline(run["gpus"], color="k", lw=1, ls="--", label=f"pool: {run['gpus']} GPUs")
        late = [r["start_s"] for r in run["requests"] if not r["ok"] or r["latency_s"] > run["slo_s"]]
        ax.plot(late, [run["gpus"] + 0.3] * len(late), "|", color="crimson", label=f"over the {run['slo_s']:g} s SLO")
        load = ax.twinx()
        xs, ys, clock = [], [], 0.0
        for seconds, rate in run["curve"]:
            xs += [clock, clock + seconds]
            ys += [rate, rate]
            clock += seconds
        load.plot(xs, ys, color="0.4", lw=1)
        load.set_ylabel("req/s", color="0.4")
        ax.set_ylim(0, run["gpus"] + 0.6)
        ax.set_ylabel("GPUs")
        ax.set_title(f"{run['mode']}: utilisation {summary['utilisation']:.0%}, SLO met "
                     f"{summary['slo_attainment']:.0%}, {summary['training_samples']:,} training samples",
                     fontsize=10)
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=2)
    axes[-1, 0].set_xlabel("seconds since the load began")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
