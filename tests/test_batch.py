"""Ray Data batch inference, for real: a local Ray cluster, the real model, real actor kills."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from labkit.batch import read_batch_input, read_results, run_batch
from labkit.data import datasets_dir

BAD_ROWS = datasets_dir() / "prompts_500" / "bad_rows.jsonl"


def _write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _good_rows(n):
    from labkit.data import read_prompts

    return [{"id": r["id"], "prompt": r["prompt"]} for r in read_prompts("prompts_500")[:n]]


# --- input: every bad row is named, none raises ----------------------------------------------

def test_bad_rows_become_error_rows_with_reasons():
    rows = read_batch_input(BAD_ROWS)
    assert len(rows) == 7 and all(r["error"] for r in rows)
    reasons = " | ".join(r["error"] for r in rows)
    for expected in ["no 'id'", "empty", "must be a string, got int", "got NoneType", "not valid JSON",
                     "limit is 20,000"]:
        assert expected in reasons
    assert len({r["id"] for r in rows}) == 7  # rows without an id get their position


def test_duplicate_ids_and_parquet_input(tmp_path):
    good = _good_rows(3)
    rows = read_batch_input(_write_jsonl(tmp_path / "dup.jsonl", good + [good[0]]))
    assert [bool(r["error"]) for r in rows] == [False, False, False, True]
    assert "duplicate id" in rows[3]["error"] and rows[3]["id"] == "dup.jsonl:4"

    pq.write_table(pa.table({"id": [1, 2, None], "prompt": ["a b", "", "c"]}), tmp_path / "p.parquet")
    rows = read_batch_input(tmp_path / "p.parquet")
    assert [r["id"] for r in rows] == ["1", "2", "p.parquet:row2"]
    assert [bool(r["error"]) for r in rows] == [False, True, True]

    pq.write_table(pa.table({"id": [1], "text": ["x"]}), tmp_path / "wrong.parquet")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        read_batch_input(tmp_path / "wrong.parquet")
    with pytest.raises(FileNotFoundError, match="prompts_500"):
        read_batch_input("no_such_dataset")


# --- exactly once, resume, refusing to mix jobs ------------------------------------------------

def test_every_row_once_bad_rows_reported_and_resume(ray_cluster, tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", _good_rows(14), BAD_ROWS.read_text().splitlines())
    out = tmp_path / "out"
    report = run_batch(src, out, actors=2, batch_size=4, max_new_tokens=6, progress=False)
    table = read_results(out)
    assert (report.rows, report.ok, report.errors, report.skipped) == (21, 14, 7, 0)
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in read_batch_input(src))
    ok = table.filter(pa.compute.equal(table.column("status"), "ok")).to_pylist()
    assert all(r["output"] and 0 < r["tokens"] <= 6 and r["latency"] > 0 and r["error"] is None for r in ok)
    assert report.new_tokens == sum(r["tokens"] for r in ok)

    # Lose some shards (as if the run had died before writing them): the re-run does only those.
    shards = sorted(out.glob("part-*.parquet"))
    lost = shards[: len(shards) // 2]
    lost_ids = {i for s in lost for i in pq.read_table(s).column("id").to_pylist()}
    kept = {s: s.stat().st_mtime_ns for s in shards[len(shards) // 2:]}
    for s in lost:
        s.unlink()
    again = run_batch(src, out, actors=1, batch_size=4, max_new_tokens=6, progress=False)
    assert again.skipped == 21 - len(lost_ids) and again.rows == 21
    assert all(s.stat().st_mtime_ns == t for s, t in kept.items())  # finished work was not redone
    ids = read_results(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 21

    done = run_batch(src, out, max_new_tokens=6, progress=False)  # nothing left: no model is even started
    assert done.skipped == 21 and done.workers == []

    with pytest.raises(ValueError, match="another job"):
        run_batch(src, out, max_new_tokens=7, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a labkit batch output"):
        run_batch(src, tmp_path / "other", overwrite=True, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_actor_pools_that_cannot_be_placed_are_refused_up_front(ray_cluster, tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", _good_rows(2))
    with pytest.raises(ValueError, match="need 3 CPUs but the cluster has 2"):
        run_batch(src, tmp_path / "a", actors=3, num_cpus=1, progress=False)
    with pytest.raises(ValueError, match="need 1 GPUs but the cluster has 0"):
        run_batch(src, tmp_path / "b", actors=2, num_gpus=0.5, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing half-made


def test_greedy_results_match_the_plain_model(ray_cluster, tmp_path, lm_fp32, monkeypatch):
    monkeypatch.setenv("LABKIT_DTYPE", "float32")  # the precision where batching cannot flip a token
    rows = _good_rows(6)
    report = run_batch(_write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out", batch_size=3,
                       max_new_tokens=12, progress=False)
    assert report.ok == 6
    got = {r["id"]: r["output"] for r in read_results(tmp_path / "out").to_pylist()}
    want = lm_fp32.generate([r["prompt"] for r in rows], max_new_tokens=12, batch_size=1, progress=False)
    assert [got[r["id"]] for r in rows] == [g.text for g in want]


def test_fast_path_in_the_actors_gives_the_same_replies(ray_cluster, tmp_path, lm_fp32, monkeypatch):
    monkeypatch.setenv("LABKIT_DTYPE", "float32")
    rows = _good_rows(5)  # batches of 3 and 2, both padded to one compiled shape of 4 rows
    report = run_batch(_write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out", batch_size=3,
                       max_new_tokens=12, fast=True, progress=False)
    assert report.ok == 5
    got = {r["id"]: r["output"] for r in read_results(tmp_path / "out").to_pylist()}
    want = lm_fp32.generate([r["prompt"] for r in rows], max_new_tokens=12, batch_size=1, progress=False)
    assert [got[r["id"]] for r in rows] == [g.text for g in want]


def test_actor_killed_mid_run_is_restarted_and_nothing_is_lost_or_doubled(ray_cluster, tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", _good_rows(48))
    out = tmp_path / "out"
    result: dict = {}

    def job():
        try:
            result["report"] = run_batch(src, out, actors=2, batch_size=2, max_new_tokens=8, progress=False)
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    worker = threading.Thread(target=job)
    worker.start()
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.2)
    first_pids = {p for s in out.glob("part-*.parquet") for p in pq.read_table(s).column("worker").to_pylist()}
    victim = min(first_pids)
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=600)
    assert "error" not in result, result.get("error")
    report = result["report"]
    ids = read_results(out).column("id").to_pylist()
    assert report.ok == 48 and len(ids) == len(set(ids)) == 48
    assert victim in report.workers and len(report.workers) >= 3, "a restarted actor should have done some rows"


# --- images and the CLI -----------------------------------------------------------------------

def test_image_batch_writes_pngs_and_a_manifest(ray_cluster, tmp_path):
    from PIL import Image

    rows = [{"id": "a/1", "prompt": "a red circle"}, {"id": "b", "prompt": "a blue square"},
            {"id": "c", "prompt": ""}]
    out = tmp_path / "imgs"
    report = run_batch(_write_jsonl(tmp_path / "in.jsonl", rows), out, task="image", batch_size=2,
                       progress=False)
    assert (report.ok, report.errors) == (2, 1)
    manifest = {r["id"]: r for r in read_results(out).to_pylist()}
    assert manifest["c"]["image"] is None and "empty" in manifest["c"]["error"]
    for rid in ("a/1", "b"):
        img = Image.open(out / manifest[rid]["image"])
        assert img.size == (32, 32) and manifest[rid]["seed"] == 0
    assert not list((out / "images").glob(".*"))  # no temporary files left


def test_cli_batch(tmp_path):
    proc = run_cli("batch", str(BAD_ROWS), "--output", str(tmp_path / "out"), "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert "7 rows: 0 ok, 7 errors" in proc.stdout
    proc = run_cli("batch", "prompts_500", "--output", str(tmp_path / "out"), "--actors", "0")
    assert proc.returncode == 2 and "actors must be a positive integer" in proc.stderr


def test_bad_sampling_settings_are_refused_before_any_actor_starts(tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", _good_rows(2))
    with pytest.raises(ValueError, match="'temperature' must be a finite number, got NaN"):
        run_batch(src, tmp_path / "a", temperature=float("nan"), progress=False)
    with pytest.raises(ValueError, match="'max_new_tokens' must be an integer, got 2.5"):
        run_batch(src, tmp_path / "b", max_new_tokens=2.5, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
