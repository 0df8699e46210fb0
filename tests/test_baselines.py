"""The loop/batched/Ray harness measures every method alike (the Ray methods run in lab 05's smoke run)."""

from __future__ import annotations

import pytest

from labkit.baselines import PeakMemory, measure


def test_loop_and_batched_generate_the_same_number_of_tokens(chat_model_path):
    rows = [measure(m, n=4, max_new_tokens=3, batch_size=2) for m in ("loop", "batched")]
    for row in rows:
        assert row["new_tokens"] == 4 * 3  # end-of-turn held back: every prompt makes max_new_tokens
        assert 0 < row["time_to_first_result"] <= row["seconds"]
        assert row["tokens_per_s"] == pytest.approx(12 / row["seconds"])
        assert row["peak_mem_mb"] > 200  # the model alone is ~270 MB in bf16
    assert [r["batch_size"] for r in rows] == [1, 2]


def test_peak_memory_sees_a_child_process():
    import subprocess
    import sys

    with PeakMemory(every=0.05) as mem:
        before = mem._sample()
        subprocess.run([sys.executable, "-c", "import time; x = bytearray(300 * 2**20); time.sleep(1.0)"], check=True)
    assert mem.peak - before > 250 * 2**20


def test_bad_arguments():
    with pytest.raises(ValueError, match="method must be one of"):
        measure("threads")
    with pytest.raises(ValueError, match="only 24 prompts"):
        measure("loop", source="chat_prompts_mini", n=100)
