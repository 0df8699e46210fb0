"""Text generation with the real cpu-profile model (SmolLM2-135M-Instruct from the store)."""

from __future__ import annotations

import warnings

import pytest
from conftest import run_cli

from labkit.llm import ChatModel, Generation, tokens_per_second

PROMPTS = [
    "What is the capital of France?",
    "hi",
    "Explain in two sentences why batching helps when you generate text with a large language model.",
    "List three colours.",
    "Write a haiku about GPUs.",
    "What is 2+2?",
]


def test_batched_greedy_equals_one_by_one_greedy(lm_fp32):
    one_by_one = [lm_fp32.generate(p, max_new_tokens=24, progress=False)[0] for p in PROMPTS]
    # batch_size 4 over 6 prompts: two batches, rows sorted by length, padding on the left
    batched = lm_fp32.generate(PROMPTS, max_new_tokens=24, batch_size=4, progress=False)
    assert [g.prompt for g in batched] == PROMPTS, "results must come back in input order"
    for single, batch in zip(one_by_one, batched, strict=True):
        assert batch.text == single.text
        assert batch.new_tokens == single.new_tokens and batch.finish_reason == single.finish_reason
    assert {g.batch for g in batched} == {0, 1}


def test_counts_and_throughput(lm_fp32):
    gens = lm_fp32.generate(PROMPTS[:3], max_new_tokens=8, batch_size=3, progress=False)
    for g in gens:
        assert isinstance(g, Generation)
        assert 0 < g.new_tokens <= 8 and g.prompt_tokens > 5
        assert g.finish_reason in ("stop", "length")
        if g.finish_reason == "length":
            assert g.new_tokens == 8
    assert {g.finish_reason for g in lm_fp32.generate("hi", max_new_tokens=1, progress=False)} == {"length"}
    assert tokens_per_second(gens) == pytest.approx(sum(g.new_tokens for g in gens) / gens[0].seconds)


def test_streaming_yields_the_same_text_piece_by_piece(lm_fp32):
    pieces = list(lm_fp32.stream("Name two planets.", max_new_tokens=16))
    assert len(pieces) > 1
    assert "".join(pieces) == lm_fp32.generate("Name two planets.", max_new_tokens=16, progress=False)[0].text


def test_seeded_sampling_repeats_and_differs_from_other_seeds(lm_fp32):
    def sample(seed):
        return lm_fp32.generate("Invent a name for a cat.", max_new_tokens=12, temperature=1.0, top_p=0.95,
                                seed=seed, progress=False)[0].text

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(4)}) > 1


def test_chat_template_is_the_models_own(lm_fp32):
    text = lm_fp32.format_chat([{"role": "user", "content": "hello"}], system="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    reply = lm_fp32.chat([{"role": "user", "content": "Say yes."}], max_new_tokens=4)
    assert reply.new_tokens > 0


@pytest.mark.parametrize(
    "prompts, kwargs, error, match",
    [
        ([], {}, ValueError, "no prompts"),
        ([""], {}, ValueError, "prompt 0 is empty"),
        (["ok", "   "], {}, ValueError, "prompt 1 is empty"),
        (["ok", 42], {}, ValueError, "prompt 1 must be a string"),
        (["ok"], {"max_new_tokens": 0}, ValueError, "'max_new_tokens' must be a positive integer, got 0"),
        (["ok"], {"max_new_tokens": -5}, ValueError, "'max_new_tokens' must be a positive"),
        (["ok"], {"max_new_tokens": 2.5}, ValueError, "'max_new_tokens' must be an integer"),
        (["ok"], {"max_new_tokens": True}, ValueError, "'max_new_tokens' must be an integer"),
        (["ok"], {"temperature": -1}, ValueError, "'temperature' must be between 0 and 2"),
        (["ok"], {"temperature": float("nan")}, ValueError, "'temperature' must be a finite number, got NaN"),
        (["ok"], {"top_p": 0}, ValueError, r"'top_p' must be in \(0, 1\]"),
        (["ok"], {"seed": 2**40}, ValueError, "'seed' must be between 0 and"),
        (["ok"], {"min_new_tokens": 99}, ValueError, "'min_new_tokens' .99. must not exceed 'max_new_tokens'"),
        (["ok"], {"batch_size": 0}, ValueError, "batch_size must be"),
        (["ok"], {"max_new_tokens": 10**6}, ValueError, "leaves no room"),
    ],
)
def test_bad_input_gets_a_clear_error(lm_fp32, prompts, kwargs, error, match):
    with pytest.raises(error, match=match):
        lm_fp32.generate(prompts, progress=False, **kwargs)


@pytest.mark.parametrize("messages", [[], [{"role": "user"}], [{"role": "user", "content": ""}], "  "])
def test_bad_messages_get_a_clear_error(lm_fp32, messages):
    with pytest.raises((ValueError, TypeError)):
        lm_fp32.chat(messages)


def test_prompt_longer_than_the_context_is_cut_with_a_warning(lm_fp32, monkeypatch):
    monkeypatch.setattr(lm_fp32.model.config, "max_position_embeddings", 128)
    long_prompt = "word " * 400
    with pytest.warns(UserWarning, match="tokens were dropped"):
        gen = lm_fp32.generate(long_prompt, max_new_tokens=8, progress=False)[0]
    assert gen.prompt_tokens == 128 - 8 and gen.new_tokens > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits must not warn
        lm_fp32.generate("short", max_new_tokens=8, progress=False)


def test_load_by_profile_uses_the_store(chat_model_path):
    from labkit.llm import load_chat_model

    lm = load_chat_model("cpu", dtype="float32")
    assert isinstance(lm, ChatModel) and lm.name == "smollm2-135m-instruct"
    assert "dtype=float32" in repr(lm)


def test_cli_generate_and_stream(chat_model_path):
    out = run_cli("generate", "What is 1+1?", "--max-new-tokens", "6", "--profile", "cpu")
    assert out.returncode == 0, out.stderr
    assert "tokens" in out.stdout and "tok/s" in out.stdout
    bad = run_cli("generate", "x", "--max-new-tokens", "0", "--profile", "cpu")
    assert bad.returncode == 2 and "'max_new_tokens' must be a positive integer" in bad.stderr
