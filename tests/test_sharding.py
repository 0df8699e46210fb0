"""Pipeline-parallel generation across two Ray actors equals the unsharded model, token for token."""

from __future__ import annotations

import pytest

from labkit.data import read_prompts
from labkit.sharding import PipelineLM


@pytest.fixture(scope="module")
def pipeline(ray_cluster, chat_model_path):
    plm = PipelineLM(chat_model_path, stages=2, dtype="float32")
    yield plm
    plm.shutdown()


def test_each_stage_holds_only_its_layers(pipeline, lm_fp32):
    full = sum(p.numel() for p in lm_fp32.model.parameters())
    layers = [info["layers"] for info in pipeline.stage_info]
    assert layers == [15, 15] and pipeline.layer_ranges == [(0, 15), (15, 30)]
    # Each stage: half the decoder plus the (tied) embedding table, which both ends need.
    assert all(info["params"] < 0.65 * full for info in pipeline.stage_info)


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_sharded_greedy_equals_unsharded(pipeline, lm_fp32, micro_batches):
    prompts = [r["prompt"] for r in read_prompts("prompts_500")[::83]][:6]  # English and Chinese, mixed lengths
    got = pipeline.generate(prompts, max_new_tokens=20, micro_batches=micro_batches)
    want = lm_fp32.generate(prompts, max_new_tokens=20, batch_size=1, progress=False)
    assert got.texts == [g.text for g in want]
    assert got.new_tokens == sum(g.new_tokens for g in want)
    assert all(b > 0 for b in got.stage_busy)


def test_bad_arguments(ray_cluster, chat_model_path, pipeline):
    with pytest.raises(ValueError, match="stages must be between 2"):
        PipelineLM(chat_model_path, stages=1)
    with pytest.raises(ValueError, match="non-empty"):
        pipeline.generate(["ok", ""])
    with pytest.raises(ValueError, match="micro_batches"):
        pipeline.generate(["ok"], micro_batches=0)
