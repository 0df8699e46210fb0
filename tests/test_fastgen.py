"""The fast decoder (static KV cache + compiled step) against plain ``generate``.

A tiny random Llama keeps compiles short; one test runs the real cpu-profile model through
``ChatModel``. Both in fp32, where the paths must agree token for token (bf16 rounds differently
in every kernel, so near ties can flip: the benchmark reports bf16 agreement instead).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from labkit.fastgen import FastDecoder, bucket, next_power_of_two, suggest_batch_size
from labkit.llm import ChatModel

PAD, EOS = 0, 2


def make_tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_llama():
    return make_tiny_llama(0)


def plain_generate(model, batch, max_new_tokens, eos=EOS):
    """What transformers does: left-padded batch, greedy, pad after end-of-turn."""
    width = max(map(len, batch))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in batch])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=PAD, eos_token_id=eos)
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


BATCH = [[1, 17, 300, 42, 9], [1, 5], [1, 88, 7, 301, 66, 65, 64, 12, 11], [1, 250, 251]]


def test_greedy_equals_plain_generate_token_for_token(tiny_llama):
    dec = FastDecoder(tiny_llama)
    for batch in (BATCH[:1], BATCH[:3], BATCH):  # batch 1 (multiply-sum kernels), padded 3 -> 4, and 4
        fast = dec.generate(batch, max_new_tokens=40, eos_token_ids={EOS}, pad_token_id=PAD)
        assert fast == plain_generate(tiny_llama, batch, 40)
    assert dec.compiled and set(dec.compile_seconds) == {(1, 128), (4, 128)}
    assert all(s > 0 for s in dec.compile_seconds.values())


def test_two_models_of_one_architecture_each_get_their_own_compiled_step(tiny_llama):
    # Frozen weights are constants in a compiled graph: a second model must not reuse the first's.
    other = make_tiny_llama(1)
    for model in (tiny_llama, other, tiny_llama):
        fast = FastDecoder(model).generate(BATCH, max_new_tokens=12, eos_token_ids={EOS}, pad_token_id=PAD)
        assert fast == plain_generate(model, BATCH, 12)


def test_end_of_turn_stops_a_row_and_the_rest_continue(tiny_llama):
    dec = FastDecoder(tiny_llama)
    plain = plain_generate(tiny_llama, BATCH, 30)
    eos = plain[1][3]  # make the 4th token of row 1 the end-of-turn token
    expected = plain_generate(tiny_llama, BATCH, 30, eos=eos)
    fast = dec.generate(BATCH, max_new_tokens=30, eos_token_ids={eos}, pad_token_id=PAD)
    assert fast == expected and fast[1][-1] == eos and len(fast[1]) <= 4
    held = dec.generate(BATCH, max_new_tokens=30, eos_token_ids={eos}, pad_token_id=PAD, min_new_tokens=30)
    assert all(len(r) == 30 and eos not in r for r in held)


def test_falls_back_uncompiled_when_there_is_no_compiler(tiny_llama):
    import torch._inductor.config as inductor_config

    dec = FastDecoder(tiny_llama)
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        with pytest.warns(UserWarning, match="torch.compile failed"):
            fast = dec.generate(BATCH[:2], max_new_tokens=12, eos_token_ids={EOS}, pad_token_id=PAD)
    assert not dec.compiled and dec.fallback_reason
    assert fast == plain_generate(tiny_llama, BATCH[:2], 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every batch
        dec.generate(BATCH[:2], max_new_tokens=4, eos_token_ids={EOS}, pad_token_id=PAD)


def test_streamer_gets_the_prompt_then_each_new_token(tiny_llama):
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    dec, streamer = FastDecoder(tiny_llama), Collect()
    out = dec.generate(BATCH[2:3], max_new_tokens=10, eos_token_ids={EOS}, pad_token_id=PAD, streamer=streamer)
    assert streamer.ended and streamer.puts[0] == BATCH[2]
    assert sum(streamer.puts[1:], []) == out[0] == plain_generate(tiny_llama, BATCH[2:3], 10)[0]
    with pytest.raises(ValueError, match="exactly one prompt"):
        dec.generate(BATCH[:2], max_new_tokens=2, eos_token_ids={EOS}, pad_token_id=PAD, streamer=Collect())


def test_seeded_sampling_repeats(tiny_llama):
    dec = FastDecoder(tiny_llama, compile=False)

    def sample(seed):
        torch.manual_seed(seed)
        return dec.generate(BATCH, max_new_tokens=10, eos_token_ids=set(), pad_token_id=PAD, temperature=1.0,
                            top_p=0.9)

    assert sample(3) == sample(3) and sample(3) != sample(4)


def test_shapes_are_bucketed_and_errors_are_clear(tiny_llama):
    assert [next_power_of_two(n) for n in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 128]
    assert bucket(100, (128, 256)) == 128 and bucket(129, (128, 256)) == 256 and bucket(300, (128, 256)) == 300
    dec = FastDecoder(tiny_llama, compile=False)
    assert dec.cache_length(100, 100) == 256 and dec.cache_length(400, 100) == 512
    with pytest.raises(ValueError, match="exceed the 512-token context"):
        dec.cache_length(500, 100)
    with pytest.raises(ValueError, match="at least one prompt token"):
        dec.generate([[]], max_new_tokens=4, eos_token_ids={EOS}, pad_token_id=PAD)


def test_suggested_batch_size_follows_free_memory(tiny_llama):
    small = suggest_batch_size(tiny_llama, prompt_tokens=64, max_new_tokens=64)
    assert small == 64  # a tiny model: the CPU cap, not memory, limits it
    huge = suggest_batch_size(tiny_llama, prompt_tokens=64, max_new_tokens=64, memory_fraction=1e-7)
    assert 1 <= huge < small and huge & (huge - 1) == 0


def test_chat_model_fast_path_matches_plain_on_the_real_model(chat_model_path):
    prompts = ["What is the capital of France?", "hi", "List three colours.", "Write a haiku about GPUs."]
    lm = ChatModel.from_pretrained(chat_model_path, dtype="float32")
    plain = lm.generate(prompts, max_new_tokens=24, batch_size=4, progress=False)
    lm.set_fast(True)
    fast = lm.generate(prompts, max_new_tokens=24, batch_size=4, progress=False)
    assert [g.text for g in fast] == [g.text for g in plain]
    assert [(g.new_tokens, g.finish_reason) for g in fast] == [(g.new_tokens, g.finish_reason) for g in plain]
    assert lm.decoder.compiled and lm.decoder.compile_seconds


def test_roofline_costs_and_ceilings(tiny_llama):
    from labkit import roofline

    costs = roofline.model_costs(tiny_llama)
    params = sum(p.numel() for p in tiny_llama.parameters())  # tied weights counted once by torch too
    assert costs["weight_bytes"] == 4 * params
    machine = roofline.Machine(matmul_gflops=100.0, read_gbs=10.0, dtype="float32", threads=2, device="cpu")
    one, many = (roofline.ceiling_tokens_per_s(tiny_llama, machine, batch_size=b) for b in (1, 10**6))
    assert one["bound"] == "memory" and one["ceiling"] == pytest.approx(10e9 / costs["weight_bytes"])
    assert many["bound"] == "compute" and many["ceiling"] == pytest.approx(100e9 / costs["flops_per_token"])
    measured = roofline.measure_machine(dtype=torch.float32, repeats=1, read_mb=16)
    assert measured.matmul_gflops > 1 and measured.read_gbs > 0.5


def test_bench_generate_cli_writes_table_json_and_plot(tmp_path, chat_model_path):
    import json

    from conftest import run_cli

    out, png = tmp_path / "bench.json", tmp_path / "roofline.png"
    done = run_cli("bench", "generate", "--batch-sizes", "1,2", "--new-tokens", "4", "--repeats", "2",
                   "--paths", "plain", "--json", str(out), "--plot", str(png))
    assert done.returncode == 0, done.stderr
    assert "GFLOP/s" in done.stdout and "of ceil" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["path"], r["batch_size"]) for r in rows] == [("plain", 1), ("plain", 2)]
    assert all(0 < r["fraction_of_ceiling"] < 1 and r["min"] <= r["tokens_per_s"] <= r["max"] for r in rows)
    assert png.stat().st_size > 10_000
    bad = run_cli("bench", "generate", "--batch-sizes", "0,4")
    assert bad.returncode != 0 and "--batch-sizes must be positive" in bad.stderr
