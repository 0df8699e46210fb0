"""Offline batch inference with Ray Data: prompts in, one result row per prompt out, nothing lost.

The job is one pipeline::

    read rows (JSONL or Parquet)  ->  Ray Data map_batches(predictor class, ActorPoolStrategy)
                                  ->  driver writes Parquet shards, each renamed into place whole

A predictor is a class, so each Ray actor loads the model once and then serves many batches.
Rows that cannot be run (no id, empty or non-string prompt, invalid JSON, too long) become
``status="error"`` rows with the reason; they never stop the run. The driver writes results
itself, skipping any id it has already written, so a batch that Ray re-runs after an actor
died cannot appear twice, and a re-run with the same output folder only does what is missing.

Example:
    >>> from labkit.batch import run_batch
    >>> report = run_batch("prompts_500", "runs/batch", actors=2, max_new_tokens=32)  # doctest: +SKIP
    >>> report.ok, report.errors                                                      # doctest: +SKIP
    (500, 0)
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from labkit import data, profiles
from labkit.chat_request import check_generation
from labkit.ray_runtime import init_ray

MAX_PROMPT_CHARS = 20_000  # longer rows are refused before they reach a model (one would fill the context)

RESULT_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt", pa.string()), ("output", pa.string()), ("prompt_tokens", pa.int64()),
    ("tokens", pa.int64()), ("latency", pa.float64()), ("status", pa.string()), ("error", pa.string()),
    ("worker", pa.int64()),
])
IMAGE_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt", pa.string()), ("image", pa.string()), ("seed", pa.int64()),
    ("latency", pa.float64()), ("status", pa.string()), ("error", pa.string()), ("worker", pa.int64()),
])


# --- input -------------------------------------------------------------------------------------

def read_batch_input(source: str | Path) -> list[dict]:
    """Rows ``{"id", "prompt", "error"}`` from a dataset name, a ``.jsonl`` or a ``.parquet`` file.

    ``error`` is "" for a row that can run, else the reason it cannot.

    Unlike ``data.read_prompts`` this never raises on a bad row: the row comes back with an
    ``error`` so the job reports it. Ids become strings; a row without a usable id gets its
    position (``file:line``) as id, so it can still be reported and resumed.
    """
    path = Path(source)
    if not path.suffix:
        path = data.datasets_dir() / str(source) / "prompts.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no input file at {path}: give a .jsonl or .parquet file or a dataset name "
                                f"under datasets/ (for example prompts_500)")
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if "prompt" not in table.column_names:
            raise ValueError(f"{path} has no 'prompt' column (columns: {', '.join(table.column_names)})")
        ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
        raw = [({"id": i, "prompt": p}, f"{path.name}:row{n}", None)
               for n, (i, p) in enumerate(zip(ids, table.column("prompt").to_pylist(), strict=True))]
    elif path.suffix in (".jsonl", ".json"):
        raw = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj, problem = json.loads(line), None
            except json.JSONDecodeError as exc:
                obj, problem = {}, f"line {lineno} is not valid JSON ({exc.msg})"
            raw.append((obj if isinstance(obj, dict) else {}, f"{path.name}:{lineno}",
                        problem or (None if isinstance(obj, dict) else "line is not a JSON object")))
    else:
        raise ValueError(f"{path}: use a .jsonl or .parquet file")

    rows, seen = [], {}
    for obj, where, problem in raw:
        rid = obj.get("id")
        usable_id = isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip() != ""
        row_id = str(rid) if usable_id else where
        prompt = obj.get("prompt")
        if problem is None and not usable_id:
            problem = "row has no 'id' (add one so results can be matched to inputs)"
        if problem is None and row_id in seen:
            problem, row_id = f"duplicate id {rid!r} (first at {seen[row_id]})", where
        if problem is None and not isinstance(prompt, str):
            problem = f"'prompt' must be a string, got {type(prompt).__name__}"
        if problem is None and not prompt.strip():
            problem = "'prompt' is empty"
        if problem is None and len(prompt) > MAX_PROMPT_CHARS:
            problem = f"prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}"
        seen.setdefault(row_id, where)
        rows.append({"id": row_id, "prompt": prompt if isinstance(prompt, str) else None, "error": problem or ""})
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


# --- predictors: one instance per Ray actor, the model loaded once ------------------------------

class ChatPredictor:
    """Generates a reply for each row of a batch. Used by ``map_batches`` as a class (stateful)."""

    def __init__(self, model_name: str, *, device: str, dtype: str | None, max_new_tokens: int, temperature: float,
                 seed: int, min_new_tokens: int = 0, fast: bool = False, batch_size: int = 16):
        from labkit import store
        from labkit.llm import ChatModel

        path = store.pull(model_name, progress=False)[0]  # no-op when present; a new node fetches it once
        self.lm = ChatModel.from_pretrained(path, device=device, dtype=dtype, name=model_name)
        if fast:  # compile here, at actor start, for the one (padded) batch shape this job uses
            self.lm.set_fast(True, pad_batch_to=batch_size)
            self.lm.warm_up(batch_size=batch_size, max_new_tokens=max_new_tokens)
        self.kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                       min_new_tokens=min_new_tokens, progress=False)
        self.room = self.lm.context_length - max_new_tokens
        self.pid = os.getpid()

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, prompts, errors = _unpack(batch)
        out = {k: [None] * len(ids) for k in ("output", "prompt_tokens", "tokens", "latency")}
        for i, p in enumerate(prompts):
            if errors[i] is None:
                n = len(self.lm.tokenizer(self.lm.format_chat(p), add_special_tokens=False)["input_ids"])
                out["prompt_tokens"][i] = n
                if n > self.room:
                    errors[i] = (f"prompt has {n} tokens but only {self.room} fit beside "
                                 f"max_new_tokens={self.kw['max_new_tokens']}: shorten it")
        todo = [i for i in range(len(ids)) if errors[i] is None]
        for idx, result in _generate_isolating_failures(self.lm, [prompts[i] for i in todo], self.kw):
            i = todo[idx]
            if isinstance(result, Exception):
                errors[i] = f"{type(result).__name__}: {result}"
            else:
                out["output"][i], out["tokens"][i], out["latency"][i] = result.text, result.new_tokens, result.seconds
        status = ["ok" if e is None else "error" for e in errors]
        return pa.table({"id": ids, "prompt": prompts, **out, "status": status, "error": errors,
                         "worker": [self.pid] * len(ids)}, schema=RESULT_SCHEMA)


def _unpack(batch: pa.Table) -> tuple[list[str], list[str | None], list[str | None]]:
    """Columns of an input batch; ``error`` is "" for a good row (all-null columns lose their type)."""
    cols = batch.to_pydict()
    return cols["id"], cols["prompt"], [e or None for e in cols["error"]]


def _generate_isolating_failures(lm, prompts: list[str], kw: dict) -> Iterable[tuple[int, object]]:
    """Generate the batch at once; if that fails, one by one, so one bad row cannot sink the rest."""
    if not prompts:
        return
    try:
        yield from enumerate(lm.generate(prompts, batch_size=len(prompts), **kw))
    except Exception:  # noqa: BLE001 - a batch failure is retried row by row below
        for i, p in enumerate(prompts):
            try:
                yield i, lm.generate([p], batch_size=1, **kw)[0]
            except Exception as exc:  # noqa: BLE001 - reported in the row's error column
                yield i, exc


class ImagePredictor:
    """Draws one image per row and writes it as ``<output>/images/<id>.png`` (renamed into place)."""

    def __init__(self, model_name: str, *, profile: str, device: str, output_dir: str, seed: int,
                 steps: int | None = None, guidance: float | None = None):
        from labkit import diffusion, store

        store.pull(model_name, progress=False)
        self.pipe = diffusion.load_image_pipeline(profile, device=device)
        self.images = Path(output_dir) / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.kw = dict(steps=steps, guidance=guidance, progress=False)
        self.seed = seed
        self.pid = os.getpid()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from labkit import diffusion

        ids, prompts, errors = _unpack(batch)
        images, latency = [None] * len(ids), [None] * len(ids)
        todo = [i for i in range(len(ids)) if errors[i] is None]
        t0 = time.perf_counter()
        try:
            # Every row starts from the noise of ``seed``, so an image does not depend on which
            # batch or actor drew it (diffusion.generate gives prompt j's first image seed + 0).
            pics = diffusion.generate(self.pipe, [prompts[i] for i in todo], seed=self.seed,
                                      batch_size=max(1, len(todo)), **self.kw) if todo else []
        except Exception as exc:  # noqa: BLE001 - reported per row
            pics = [exc] * len(todo)
        seconds = time.perf_counter() - t0
        for i, pic in zip(todo, pics, strict=True):
            if isinstance(pic, Exception):
                errors[i] = f"{type(pic).__name__}: {pic}"
                continue
            name = f"{_safe_name(ids[i])}.png"
            tmp = self.images / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
            pic.save(tmp, format="PNG")
            os.replace(tmp, self.images / name)  # a retried batch overwrites the same file whole
            images[i], latency[i] = f"images/{name}", seconds
        status = ["ok" if e is None else "error" for e in errors]
        return pa.table({"id": ids, "prompt": prompts, "image": images, "seed": [self.seed] * len(ids),
                         "latency": latency, "status": status, "error": errors, "worker": [self.pid] * len(ids)},
                        schema=IMAGE_SCHEMA)


def _safe_name(row_id: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in row_id)
    return keep[:80] + ("-" + uuid.uuid5(uuid.NAMESPACE_URL, row_id).hex[:8] if keep != row_id else "")


# --- output: Parquet shards renamed into place, one row per id ----------------------------------

class ResultWriter:
    """Writes result batches as ``part-*.parquet`` shards; an id already written is never written again.

    Each shard is written to a hidden temporary file and renamed, so a crash leaves whole shards or
    nothing (readers such as pyarrow skip names starting with ``.`` or ``_``).
    """

    def __init__(self, folder: Path, schema: pa.Schema):
        self.folder, self.schema = folder, schema
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".part-*.tmp"):
            stale.unlink()
        self.done: set[str] = set(read_results(folder).column("id").to_pylist()) if any(folder.glob("part-*")) \
            else set()
        self.duplicates_dropped = 0

    def write(self, rows: dict) -> dict:
        """Write the rows whose ids are new; returns those rows (column lists)."""
        keep = [i for i, rid in enumerate(rows["id"]) if rid not in self.done]
        self.duplicates_dropped += len(rows["id"]) - len(keep)
        cols = {name: [rows[name][i] for i in keep] for name in self.schema.names}
        if not keep:
            return cols
        table = pa.table(cols, schema=self.schema)
        name = f"part-{time.time_ns():019d}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.folder / name)
        self.done.update(cols["id"])
        return cols


def read_results(folder: str | Path) -> pa.Table:
    """All result rows of a batch output folder as one Arrow table (``.to_pandas()`` for a DataFrame)."""
    folder = Path(folder)
    shards = sorted(folder.glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no results in {folder}")
    return pa.concat_tables([pq.read_table(s) for s in shards])


# --- the job -----------------------------------------------------------------------------------

@dataclass
class BatchReport:
    """What a run did. ``seconds`` counts from submitting the work to the last row written."""

    output_dir: str
    rows: int
    ok: int
    errors: int
    skipped: int  # already in the output folder from an earlier run (resume)
    seconds: float
    time_to_first_result: float | None
    new_tokens: int
    actors: int
    duplicates_dropped: int = 0
    workers: list[int] = field(default_factory=list)

    @property
    def prompts_per_s(self) -> float:
        done = self.rows - self.skipped
        return done / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def run_batch(source: str | Path, output_dir: str | Path, *, task: str = "chat", profile: str | None = None,
              actors: int = 1, batch_size: int = 16, num_cpus: float | None = None, num_gpus: float = 0,
              max_new_tokens: int = 64, min_new_tokens: int = 0, temperature: float = 0.0, seed: int = 0,
              overwrite: bool = False, limit: int | None = None, fast: bool = False,
              progress: bool = True) -> BatchReport:
    """Run the profile's chat (or image) model over every row of ``source`` and write the results.

    ``actors`` model copies run at once, each with ``num_cpus`` CPUs (default: the CPUs split
    evenly) and ``num_gpus`` GPUs; ``num_gpus=0.5`` puts two actors on one GPU. A second run with
    the same ``output_dir`` only does the ids not yet there; ``overwrite=True`` starts over.
    ``limit`` takes the first N input rows (for quick tries).
    """
    import ray

    if task not in ("chat", "image"):
        raise ValueError(f"task must be 'chat' or 'image', got {task!r}")
    for name, value in [("actors", actors), ("batch_size", batch_size)]:
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if task == "chat":  # before any actor starts: the same check the model itself makes
        check_generation(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         min_new_tokens=min_new_tokens)
    if num_gpus < 0 or (num_gpus > 1 and num_gpus != int(num_gpus)):
        raise ValueError(f"num_gpus must be >= 0, and a whole number above 1 (0.5 shares a GPU), got {num_gpus}")
    spec = profiles.model_for(task, profile)
    rows = read_batch_input(source)[:limit]
    info = init_ray()
    cpus = num_cpus or max(1.0, info.resources.get("CPU", 1) // actors)
    _check_fits(actors, cpus, num_gpus, info.resources)
    out = Path(output_dir)
    job = {"source": str(source), "task": task, "model": spec.name, "max_new_tokens": max_new_tokens,
           "temperature": temperature, "seed": seed, "limit": limit}
    _claim_output(out, job, overwrite=overwrite)
    writer = ResultWriter(out, RESULT_SCHEMA if task == "chat" else IMAGE_SCHEMA)
    skipped = sum(r["id"] in writer.done for r in rows)
    todo = [r for r in rows if r["id"] not in writer.done]

    # Each actor picks its dtype where it runs (the driver need not even import torch);
    # $LABKIT_DTYPE set in this process is passed on, since workers may have started before it was set.
    device, dtype = ("cuda" if num_gpus else "cpu"), os.environ.get("LABKIT_DTYPE")
    if task == "chat":
        predictor, kwargs = ChatPredictor, dict(
            model_name=spec.name, device=device, dtype=dtype,
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature, seed=seed,
            fast=fast, batch_size=batch_size)
    else:
        predictor, kwargs = ImagePredictor, dict(model_name=spec.name, profile=profiles.check_profile(profile),
                                                 device=device, output_dir=str(out.resolve()),
                                                 seed=seed)

    t0 = time.perf_counter()
    first = None
    new_tokens = 0
    workers: set[int] = set()
    bar = tqdm(total=len(rows), initial=skipped, desc=f"batch {task}", unit="row", disable=not progress)
    if todo:
        # One progress bar (ours, in rows) instead of Ray Data's per-operator log lines.
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # Similar lengths side by side, so each model batch pads little (results are keyed by id).
        todo.sort(key=lambda r: len(r["prompt"] or ""))
        ds = ray.data.from_items(todo).map_batches(
            predictor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=num_gpus)
        for result in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            first = first if first is not None else time.perf_counter() - t0
            written = writer.write(result.to_pydict())
            new_tokens += sum(t or 0 for t in written.get("tokens", []))
            workers.update(written["worker"])
            bar.update(len(written["id"]))
    bar.close()
    seconds = time.perf_counter() - t0

    table = read_results(out)
    _check_complete(table, rows, out)
    statuses = table.column("status").to_pylist()
    report = BatchReport(output_dir=str(out), rows=len(rows), ok=statuses.count("ok"),
                         errors=statuses.count("error"), skipped=skipped, seconds=seconds,
                         time_to_first_result=first, new_tokens=new_tokens, actors=actors,
                         duplicates_dropped=writer.duplicates_dropped, workers=sorted(workers))
    (out / "_report.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def _check_fits(actors: int, cpus: float, gpus: float, resources: dict) -> None:
    """A fixed-size actor pool that cannot be placed would wait forever: say so up front instead."""
    have_cpu, have_gpu = resources.get("CPU", 0), resources.get("GPU", 0)
    if actors * cpus > have_cpu:
        raise ValueError(f"{actors} actors x {cpus:g} CPUs need {actors * cpus:g} CPUs but the cluster has "
                         f"{have_cpu:g}: use fewer actors or a smaller num_cpus (e.g. {have_cpu / actors:g})")
    if actors * gpus > have_gpu:
        raise ValueError(f"{actors} actors x {gpus:g} GPUs need {actors * gpus:g} GPUs but the cluster has "
                         f"{have_gpu:g}: use fewer actors or num_gpus={have_gpu / actors:g} to share")


def _claim_output(out: Path, job: dict, *, overwrite: bool) -> None:
    """Refuse to mix results of different jobs in one folder; start over only when asked."""
    marker = out / "_job.json"
    if overwrite and out.exists():
        if not marker.is_file() and any(out.iterdir()):
            raise ValueError(f"{out} is not a labkit batch output folder; refusing to delete it. Pick another path.")
        from labkit.store import empty_folder

        empty_folder(out)
    elif marker.is_file():
        before = json.loads(marker.read_text())
        changed = {k: (before.get(k), v) for k, v in job.items() if before.get(k) != v}
        if changed:
            raise ValueError(f"{out} holds results of another job ({changed}); use a new output folder or "
                             f"overwrite=True (--overwrite) to start over")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a labkit batch output folder: pick an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(job, indent=2))


def _check_complete(table: pa.Table, rows: list[dict], out: Path) -> None:
    ids = table.column("id").to_pylist()
    if len(ids) != len(set(ids)):
        raise RuntimeError(f"{out} has duplicate ids: this should never happen, please report it")
    missing = [r["id"] for r in rows if r["id"] not in set(ids)]
    if missing:
        raise RuntimeError(f"{len(missing)} rows have no result (first: {missing[:3]}); run again with the "
                           f"same output folder to finish them")
