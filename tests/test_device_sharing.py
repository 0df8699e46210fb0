"""Two copies of the chat model on one CPU core, against one alone: the sharing is real."""

from __future__ import annotations

import os

import pytest

from labkit.device_sharing import measure_sharing


@pytest.mark.slow
def test_two_copies_on_one_core_each_get_about_half(chat_model_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores, so that pinning both copies to one is what makes them share")
    result = measure_sharing(seconds=2, max_new_tokens=8)
    assert result["alone_tokens_per_s"] > 0 and len(result["together_tokens_per_s"]) == 2
    # Unpinned, each copy would have a core of its own here and run at about the alone rate.
    assert all(share < 0.8 for share in result["share"]), result
    assert 0.5 < result["total_ratio"] < 1.5, result
    assert result["weights_mb"] > 100 and all(rss > result["weights_mb"] for rss in result["rss_mb"])


def test_bad_settings_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="seconds must be"):
        measure_sharing(seconds=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        measure_sharing(max_new_tokens=0)
    with pytest.raises(ValueError, match="not one this process may use"):
        measure_sharing(core=10_000)
