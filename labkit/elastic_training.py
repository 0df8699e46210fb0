"""Training that yields to inference: an elastic Ray Train job and an inference-first rule.

One pool of accelerators serves traffic and trains. Inference comes first: its latency is what
users see, and a training step can wait. So when traffic peaks and Serve wants another replica,
training gives up a worker; when the peak is over, training takes it back.

How the two meet in Ray (2.60). Ray Train's elastic mode (``ScalingConfig(num_workers=(min,
max))``) sizes its worker group from what Ray's *AutoscalingCoordinator* reserves for it: one actor
per cluster that hands out the cluster's resources to requesters, highest priority first and, at
equal priority, first come first served, and forwards everyone's demand to the autoscaler (so the
autoscaler adds nodes for training, too). Every ``elastic_resize_monitor_interval_s`` the job
compares what it holds with what it could hold and, if they differ, restarts its workers at the
new size from the latest checkpoint. Serve's replicas do not register with the coordinator, so on
their own they are invisible to training: training would keep its workers and a new replica would
wait. :class:`InferenceFirst` is the missing piece, and the reason this module exists: it watches
Serve's replicas (running, starting or pending) and holds their resources in the coordinator,
registered before the training job and at the same (highest) priority, so inference's share is
always reserved first and training is sized from what is left.

The coordinator is Ray's internal API (``ray.data._internal.cluster_autoscaler``; Ray Data and
Ray Train share it). labkit pins Ray's version, and :func:`coordinator` says plainly when it moves.

On this machine the pool's "GPUs" are logical (``labkit.elastic``'s laptop cluster): Ray counts
them and schedules by them, and each training step stands for its accelerator time with a sleep
of ``step_s`` beside a real (tiny) model update; there is no device to keep busy, and two jobs
computing on two shared cores would measure the cores, not the policy.

Example:
    >>> from labkit.elastic_training import InferenceFirst, train_elastic
    >>> with InferenceFirst({"ChatServer": {"GPU": 0.5}}):            # doctest: +SKIP
    ...     result = train_elastic(min_workers=1, max_workers=3, steps=300)
    >>> result.world_sizes()                                           # doctest: +SKIP
    [3, 1, 3]
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import labkit.ray_runtime  # noqa: F401  (sets Ray's auth mode before anything imports ray)

INFERENCE_REQUESTER = "labkit-inference"
_HELD_STATES = {"STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION"}  # not STOPPING


def coordinator():
    """Ray's AutoscalingCoordinator actor (created on first use) and its priority type."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            ResourceRequestPriority,
            get_or_create_autoscaling_coordinator,
        )
    except ImportError as exc:  # pragma: no cover - only with another Ray than the lock's
        raise RuntimeError(f"this Ray has no AutoscalingCoordinator where labkit expects it ({exc}); "
                           "install the Ray version in requirements.lock (`make setup`)") from None
    return get_or_create_autoscaling_coordinator(), ResourceRequestPriority


def held_replicas(deployments: Mapping[str, object]) -> dict[str, int]:
    """Replicas per watched deployment that hold (or are waiting for) their resources: running,
    starting (which includes waiting to be placed), updating or recovering; stopping ones do not."""
    from labkit.serve import replica_states

    states = replica_states()
    return {name: sum(n for state, n in states.get(name, {}).items() if state in _HELD_STATES)
            for name in deployments}


class InferenceFirst:
    """Reserve the watched Serve deployments' resources ahead of training, as long as it runs.

    ``replica_resources`` maps a deployment's name to one replica's resources (as given to Serve:
    ``{"CPU": 1, "GPU": 0.5}``). Start it before the training job: the coordinator breaks ties by
    who asked first. ``poll_s`` is how often Serve's replicas are counted; the coordinator is told
    only when the count changes (and every ``expire_s / 3`` seconds, so the hold stays alive).
    """

    def __init__(self, replica_resources: Mapping[str, Mapping[str, float]], *, poll_s: float = 1.0,
                 expire_s: float = 60.0):
        if not replica_resources:
            raise ValueError("name at least one Serve deployment and one replica's resources, "
                             "e.g. {'ChatServer': {'GPU': 0.5}}")
        for name, res in replica_resources.items():
            if not res or any(not isinstance(v, (int, float)) or v < 0 for v in res.values()):
                raise ValueError(f"{name}: a replica's resources must be non-negative numbers, "
                                 f"e.g. {{'GPU': 0.5}}; got {dict(res)!r}")
        if poll_s <= 0 or expire_s <= 3 * poll_s:
            raise ValueError(f"poll_s must be > 0 and expire_s more than 3 polls; got {poll_s}, {expire_s}")
        self.replica_resources = {k: dict(v) for k, v in replica_resources.items()}
        self.poll_s, self.expire_s = poll_s, expire_s
        self.history: list[tuple[float, dict[str, int]]] = []  # (time.time(), held replicas) at each change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._actor = self._priority = None

    def bundles(self, held: Mapping[str, int]) -> list[dict[str, float]]:
        """One resource bundle per held replica: what the coordinator reserves for inference."""
        return [dict(self.replica_resources[name]) for name, n in held.items() for _ in range(n)]

    def _tell(self, held: Mapping[str, int]) -> None:
        import ray

        ray.get(self._actor.request_resources.remote(
            requester_id=INFERENCE_REQUESTER, resources=self.bundles(held), expire_after_s=self.expire_s,
            priority=self._priority.HIGH), timeout=30)  # HIGH is Ray Train's own: we win ties by asking first

    def start(self) -> InferenceFirst:
        self._actor, self._priority = coordinator()
        held = held_replicas(self.replica_resources) if _serve_running() else dict.fromkeys(self.replica_resources, 0)
        self._tell(held)
        self.history.append((time.time(), held))
        self._thread = threading.Thread(target=self._watch, name="labkit-inference-first", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        last, told = self.history[-1][1], time.monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                held = held_replicas(self.replica_resources)
            except Exception:  # noqa: BLE001  (Serve busy or restarting: count again next poll)
                continue
            if held != last or time.monotonic() - told > self.expire_s / 3:
                try:
                    self._tell(held)
                except Exception:  # noqa: BLE001  (coordinator restarting: it is retried next poll)
                    continue
                told = time.monotonic()
                if held != last:
                    self.history.append((time.time(), held))
                last = held

    def stop(self) -> None:
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._actor is not None:
            ray.get(self._actor.cancel_request.remote(requester_id=INFERENCE_REQUESTER), timeout=30)

    def __enter__(self) -> InferenceFirst:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve_running() -> bool:
    from ray import serve

    try:
        serve.status()
        return True
    except Exception:  # noqa: BLE001
        return False


# --- the elastic training job ------------------------------------------------------------------

@dataclass
class ElasticRun:
    """What an elastic training run did: one row per step done (``t`` in seconds since the epoch,
    ``step``, ``world_size``, ``samples`` so far, ``loss``), and the checkpoints' steps."""

    rows: list[dict] = field(default_factory=list)
    progress_file: Path | None = None

    def world_sizes(self) -> list[int]:
        """The worker counts in the order the job ran with them, e.g. ``[2, 1, 2]``."""
        sizes: list[int] = []
        for row in self.rows:
            if not sizes or sizes[-1] != row["world_size"]:
                sizes.append(row["world_size"])
        return sizes

    def restarts(self) -> list[dict]:
        """Each restart: the step it resumed from (the checkpoint's, plus one), the size before and
        after, and how many steps had to be done again."""
        out = []
        for before, after in zip(self.rows, self.rows[1:], strict=False):
            if after["attempt"] != before["attempt"]:
                out.append({"t": after["t"], "from_size": before["world_size"], "to_size": after["world_size"],
                            "resumed_at": after["step"], "redone": before["step"] + 1 - after["step"],
                            "pause_s": after["t"] - before["t"]})
        return out

    @property
    def samples(self) -> int:
        return self.rows[-1]["samples"] if self.rows else 0


def _train_loop(config: dict) -> None:
    import os

    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    true_w = torch.randn(config["features"], 1)
    model = torch.nn.Linear(config["features"], 1)
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    step, samples = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a resize restarts every worker: go on from the latest checkpoint
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, samples = state["step"], state["samples"]
    if world > 1:  # on the CPU (the pool's GPUs here are logical): gloo, as TorchConfig says below
        model = torch.nn.parallel.DistributedDataParallel(model)
    attempt = f"{os.getpid()}-{time.time():.3f}"
    out = open(config["progress_file"], "a") if rank == 0 else None  # noqa: SIM115
    stop_file = Path(config["stop_file"]) if config["stop_file"] else None
    while step < config["steps"]:
        if stop_file and stop_file.exists():  # the driver's "enough": one last checkpoint, then end
            with _checkpoint_dir(rank, model, opt, step, samples) as folder:
                ray.train.report({"step": step, "samples": samples, "world_size": world},
                                 checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)
            break
        step += 1
        gen = torch.Generator().manual_seed(step * 1000 + rank)
        x = torch.randn(config["batch_size"], config["features"], generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), x @ true_w)
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over the workers
        opt.step()
        time.sleep(config["step_s"])  # the accelerator's time for the step (no GPU here)
        samples += config["batch_size"] * world
        if out:
            out.write(json.dumps({"t": time.time(), "step": step, "world_size": world, "samples": samples,
                                  "loss": round(loss.item(), 6), "attempt": attempt}) + "\n")
            out.flush()
        if step % config["checkpoint_every"] == 0 or step == config["steps"]:
            with _checkpoint_dir(rank, model, opt, step, samples) as folder:
                ray.train.report({"step": step, "samples": samples, "world_size": world},
                                 checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)


class _checkpoint_dir:
    """Rank 0 writes the state to a fresh temporary folder for ``ray.train.report``; others none."""

    def __init__(self, rank, model, opt, step, samples):
        self.rank, self.state = rank, None
        if rank == 0:
            inner = getattr(model, "module", model)
            self.state = {"model": inner.state_dict(), "opt": opt.state_dict(), "step": step, "samples": samples}

    def __enter__(self):
        import tempfile

        import torch

        if self.state is None:
            return None
        self._tmp = tempfile.TemporaryDirectory(prefix="labkit-elastic-")
        torch.save(self.state, Path(self._tmp.name) / "state.pt")
        return self._tmp.name

    def __exit__(self, *exc):
        if self.state is not None:
            self._tmp.cleanup()


def train_elastic(*, min_workers: int = 1, max_workers: int = 2, steps: int = 200, step_s: float = 0.2,
                  batch_size: int = 32, features: int = 16, lr: float = 0.05, checkpoint_every: int = 5,
                  resources_per_worker: Mapping[str, float] | None = None, monitor_interval_s: float = 5.0,
                  storage: str | Path | None = None, name: str | None = None, max_failures: int = 3,
                  stop_file: str | Path | None = None) -> ElasticRun:
    """Train a small linear model data-parallel on ``min_workers`` to ``max_workers`` Ray Train
    workers, resizing whenever the pool changes, resuming from the latest checkpoint each time.

    Needs a running Ray cluster (``init_ray(address=...)``). Each worker takes
    ``resources_per_worker`` (default one logical GPU). ``steps`` counts optimizer steps; each
    step's global batch is ``batch_size x`` the workers of the moment, so ``samples`` measures
    progress. With ``min_workers == max_workers`` the job has a fixed size (a static split).
    Steps done since the last checkpoint are done again after a resize: ``checkpoint_every``
    trades checkpoint cost for lost work. The job ends after ``steps``, or earlier once
    ``stop_file`` exists (a file on the run's shared storage: how a driver says "enough").
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from labkit import store

    for label, value in (("min_workers", min_workers), ("max_workers", max_workers), ("steps", steps),
                         ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if min_workers > max_workers:
        raise ValueError(f"min_workers ({min_workers}) must not be above max_workers ({max_workers})")
    if step_s < 0 or monitor_interval_s <= 0:
        raise ValueError("step_s must be >= 0 and monitor_interval_s > 0")
    if not ray.is_initialized():
        raise RuntimeError("join the pool's Ray cluster first: labkit.ray_runtime.init_ray(address=...)")
    name = name or f"elastic-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = Path(storage or store.labkit_home() / "train").resolve()
    run_dir = storage / name
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = run_dir / "progress.jsonl"
    progress.unlink(missing_ok=True)
    workers = min_workers if min_workers == max_workers else (min_workers, max_workers)
    config = {"steps": steps, "step_s": step_s, "batch_size": batch_size, "features": features, "lr": lr,
              "checkpoint_every": checkpoint_every, "progress_file": str(progress),
              "stop_file": str(stop_file) if stop_file else None}
    resources = dict(resources_per_worker or {"CPU": 0, "GPU": 1})
    scaling = ScalingConfig(num_workers=workers, use_gpu=resources.get("GPU", 0) > 0,
                            resources_per_worker=resources, elastic_resize_monitor_interval_s=monitor_interval_s)
    trainer = TorchTrainer(_train_loop, train_loop_config=config, scaling_config=scaling,
                           torch_config=TorchConfig(backend="gloo"),
                           run_config=RunConfig(name=name, storage_path=str(storage),
                                                failure_config=FailureConfig(max_failures=max_failures),
                                                checkpoint_config=CheckpointConfig(num_to_keep=1)))
    trainer.fit()
    return read_progress(progress)


def read_progress(path: str | Path) -> ElasticRun:
    """An :class:`ElasticRun` from a run's ``progress.jsonl`` (also while it is still running)."""
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return ElasticRun(rows=rows, progress_file=path)
