"""labkit.estimate against real tensors (labkit.measure) and against the papers' own figures."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from labkit import estimate, measure
from labkit.estimate import EstimateInputError, ModelShape
from labkit.published_figures import figures

TOLERANCE = 0.15  # the bar for predicted against measured


def tiny(kind: str = "llama", *, tie: bool = False, layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=2000, hidden_size=96, intermediate_size=256, num_hidden_layers=layers,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tie)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    return LlamaForCausalLM(LlamaConfig(**common))


def close(predicted: float, measured: float, tolerance: float = TOLERANCE) -> bool:
    return abs(predicted - measured) <= tolerance * measured


@pytest.mark.parametrize("kind,tie", [("llama", False), ("llama", True), ("qwen2", True)])
def test_parameter_count_from_a_config_equals_the_built_models(kind, tie):
    model = tiny(kind, tie=tie)
    shape = ModelShape.from_config(model.config)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert estimate.model_state_bytes(shape, precision="fp32", optimizer="sgd").weights == measure.weight_bytes(model)


@pytest.mark.parametrize("batch_size,seq_len,recompute", [(2, 64, False), (4, 128, False), (4, 128, True)])
def test_training_step_peak_kv_cache_and_flops_match_measurement(batch_size, seq_len, recompute):
    model = tiny(layers=4)
    shape = ModelShape.from_config(model.config)
    if recompute:
        model.activation_checkpointing_enable()
    measured = measure.training_step_peak(model, batch_size=batch_size, seq_len=seq_len)
    predicted = estimate.training_step_bytes(shape, batch_size=batch_size, seq_len=seq_len, precision="fp32",
                                             recompute=recompute)
    assert close(predicted.total, measured["total"]), (predicted.as_dict(), measured)
    assert predicted.optimizer == pytest.approx(measured["optimizer"], rel=0.01)  # Adam: two fp32 states
    kv = measure.kv_cache_bytes(model, batch_size=batch_size, seq_len=seq_len)
    assert kv == estimate.kv_cache_bytes(shape, batch_size=batch_size, seq_len=seq_len, dtype="fp32")
    flops = measure.training_step_flops(model, batch_size=batch_size, seq_len=seq_len)
    assert close(estimate.training_flops(shape, tokens=batch_size * seq_len, seq_len=seq_len), flops, 0.02)


def test_a_bf16_training_step_matches_too():
    """bf16 weights, gradients and Adam states; RMSNorm and the loss still compute in fp32."""
    model = tiny(layers=4).to(torch.bfloat16)
    shape = ModelShape.from_config(model.config)
    measured = measure.training_step_peak(model, batch_size=4, seq_len=128)
    predicted = estimate.training_step_bytes(shape, batch_size=4, seq_len=128, precision="bf16")
    assert close(predicted.total, measured["total"]), (predicted.as_dict(), measured)


def test_recomputation_saves_what_the_estimate_says_it_saves():
    full, recomputed = tiny(layers=4), tiny(layers=4)
    recomputed.activation_checkpointing_enable()
    args = dict(batch_size=4, seq_len=128)
    saved = measure.training_step_peak(full, **args)["total"] - measure.training_step_peak(recomputed, **args)["total"]
    shape = ModelShape.from_config(full.config)
    predicted = (estimate.training_step_bytes(shape, precision="fp32", **args).total
                 - estimate.training_step_bytes(shape, precision="fp32", recompute=True, **args).total)
    assert saved > 0 and close(predicted, saved)


def test_the_kit_chat_model_in_fp32(chat_model_path, lm_fp32):
    """SmolLM2-135M: weights, KV tensors and a real AdamW step's peak within 15% of the estimate."""
    shape = ModelShape.from_config(chat_model_path)
    model = lm_fp32.model
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert close(estimate.model_state_bytes(shape, precision="fp32").weights, measure.weight_bytes(model))
    kv = measure.kv_cache_bytes(model, batch_size=2, seq_len=96)
    assert close(estimate.kv_cache_bytes(shape, batch_size=2, seq_len=96, dtype="fp32"), kv)
    trainee = copy.deepcopy(model)  # the step changes weights; the shared fixture must stay as pulled
    measured = measure.training_step_peak(trainee, batch_size=2, seq_len=128)
    predicted = estimate.training_step_bytes(shape, batch_size=2, seq_len=128, precision="fp32")
    assert close(predicted.total, measured["total"]), (predicted.as_dict(), measured)


def test_published_figures_are_reproduced_within_5_percent():
    rows = figures()
    published = [r for r in rows if r["kind"] == "published"]
    assert len(published) >= 12 and {r["source"].split(" (")[0] for r in published} >= {
        "ZeRO", "vLLM", "GPT-3", "Llama 3", "Megatron-LM"}
    off = [(r["quantity"], r["published"], r["ours"]) for r in published if abs(r["ratio"] - 1) > 0.05]
    assert not off
    derived = {r["quantity"]: r["ours"] for r in rows if r["kind"] == "derived"}
    implied = [v for k, v in derived.items() if "implied MFU" in k]
    assert implied and all(0.3 < v < 0.6 for v in implied)  # what large dense runs reach


def test_zero_stages_shard_what_they_say():
    n, devices = 1e9, 8
    stage = [estimate.model_state_bytes(int(n), zero_stage=s, devices=devices) for s in range(4)]
    assert stage[0].total == 16 * n
    assert stage[1].optimizer == stage[0].optimizer / devices and stage[1].gradients == stage[0].gradients
    assert stage[2].gradients == stage[0].gradients / devices and stage[2].weights == stage[0].weights
    assert stage[3].total == pytest.approx(16 * n / devices)
    assert estimate.model_state_bytes(int(n), precision="bf16").total == 8 * n
    assert estimate.model_state_bytes(int(n), precision="fp32", optimizer="sgd").total == 8 * n


def test_parallel_plan_bubble_and_memory_per_gpu():
    from labkit.published_figures import LLAMA2_70B

    plan = estimate.parallel_plan(LLAMA2_70B, gpus=64, tensor=8, pipeline=4, micro_batches=16)
    assert plan.data == 2 and plan.bubble == pytest.approx(3 / 19)
    more = estimate.parallel_plan(LLAMA2_70B, gpus=64, tensor=8, pipeline=4, micro_batches=64)
    assert more.bubble < plan.bubble
    alone = estimate.parallel_plan(LLAMA2_70B, gpus=1)
    assert plan.per_gpu.weights == pytest.approx(alone.per_gpu.weights / 32) and alone.bubble == 0
    assert plan.per_gpu.total < 80e9 < alone.per_gpu.total  # fits an 80 GB GPU only when split


def test_time_cost_and_mfu_are_consistent():
    from labkit.published_figures import LLAMA2_7B

    flops = estimate.training_flops(LLAMA2_7B, tokens=1e12)
    days = estimate.training_days(flops, gpus=1024, mfu=0.4, gpu="H100")
    tokens_per_s = 1e12 / (days * 86400)
    assert estimate.mfu(tokens_per_s, LLAMA2_7B, gpus=1024, gpu="H100") == pytest.approx(0.4)
    assert estimate.gpu_hours(flops, mfu=0.4) == pytest.approx(days * 24 * 1024)
    per_token = estimate.generation_flops_per_token(LLAMA2_7B, context=0)
    assert per_token == 2 * LLAMA2_7B.matmul_params


def test_configs_load_from_a_file_a_folder_and_the_model_store(tmp_path, chat_model_path):
    config = json.loads((chat_model_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_store = ModelShape.from_config("smollm2-135m-instruct")
    assert ModelShape.from_config(tmp_path).params == ModelShape.from_config(tmp_path / "config.json").params
    assert ModelShape.from_config(config).params == from_store.params == 134_515_008


@pytest.mark.parametrize("call,words", [
    (lambda: ModelShape(vocab_size=100, hidden_size=100, num_layers=2, num_heads=3, intermediate_size=10),
     "not a multiple of num_heads"),
    (lambda: ModelShape(vocab_size=100, hidden_size=96, num_layers=0, num_heads=3, intermediate_size=10),
     "num_layers"),
    (lambda: ModelShape.from_config({"hidden_size": 8}), "is it a decoder-only language model"),
    (lambda: ModelShape.from_config("no-such-model-anywhere"), "give explicit numbers"),
    (lambda: estimate.model_state_bytes(1e9, zero_stage=4), "zero_stage"),
    (lambda: estimate.model_state_bytes(1e9, optimizer="adam"), "optimizer"),
    (lambda: estimate.model_state_bytes(-5), "positive"),
    (lambda: estimate.kv_cache_bytes(estimate_shape(), batch_size=1, seq_len=8, dtype="fp7"), "unknown dtype"),
    (lambda: estimate.activation_bytes(estimate_shape(), batch_size=1.5, seq_len=8), "positive integers"),
    (lambda: estimate.training_days(1e20, gpus=8, mfu=1.5), "mfu"),
    (lambda: estimate.training_days(1e20, gpus=8, mfu=0.5, gpu="B300"), "unknown GPU"),
    (lambda: estimate.parallel_plan(estimate_shape(), gpus=8, tensor=3), "multiple of tensor"),
    (lambda: estimate.parallel_plan(estimate_shape(), gpus=8, tensor=4), "must divide the heads"),
])
def test_bad_input_gets_an_error_that_says_what_to_do(call, words):
    with pytest.raises(EstimateInputError, match=words):
        call()


def estimate_shape() -> ModelShape:
    return ModelShape(vocab_size=1000, hidden_size=96, num_layers=2, num_heads=6, num_kv_heads=2, intermediate_size=256)


def test_cli_prints_the_estimate_and_refuses_bad_settings(chat_model_path):
    from conftest import run_cli

    done = run_cli("estimate", "smollm2-135m-instruct", "--batch-size", "2", "--seq-len", "128", "--precision",
                   "fp32", "--tokens", "2e9", "--gpus", "8", "--json")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["params"] == 134_515_008 and r["gpus"] == 8
    assert r["training_step_per_device"]["total"] == estimate.training_step_bytes(
        "smollm2-135m-instruct", batch_size=2, seq_len=128, precision="fp32").total
    bad = run_cli("estimate", "smollm2-135m-instruct", "--zero-stage", "5")
    assert bad.returncode == 2 and "zero_stage" in bad.stderr and "Traceback" not in bad.stderr
