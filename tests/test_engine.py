"""The continuous-batching engine on the real cpu-profile model (fp32: batched and one-by-one
greedy decoding must agree token for token), its paged KV blocks and its scheduling policies."""

from __future__ import annotations

import pytest
import torch

from labkit.engine import Engine, QueueFull, SamplingParams
from labkit.kv_blocks import BlockManager
from labkit.scheduling import SkipJoinMLFQ, make_policy

PROMPTS = ["What is Ray?", "写一首关于秋天的短诗。", "Explain KV caching in one sentence.", "List three colours.",
           "What does a GPU do?", "Translate 'good morning' into French."]


@pytest.fixture(scope="module")
def lm(lm_fp32):
    return lm_fp32


def engine(lm, **options) -> Engine:
    return Engine(lm.model, lm.tokenizer, **{"max_context": 512, **options})


def test_block_manager_hands_out_blocks_on_demand_and_takes_them_back():
    blocks = BlockManager(num_blocks=5, block_size=4)  # block 0 is scratch: 4 to hand out
    assert blocks.grow("a", 5) and blocks.tables["a"] == [1, 2]
    assert blocks.grow("a", 8) and blocks.used == 2, "room left in the last block: nothing new"
    assert blocks.grow("b", 4) and not blocks.grow("c", 8), "2 blocks wanted, 1 free"
    assert "c" not in blocks.tables and blocks.free_blocks == 1, "a refused request takes nothing"
    assert blocks.release("a") == 2 and blocks.free_blocks == 3
    with pytest.raises(ValueError, match="at least 2 blocks"):
        BlockManager(num_blocks=1)


def test_greedy_replies_equal_one_at_a_time_while_requests_come_and_go(lm):
    expected = [g.text for g in lm.generate(PROMPTS, max_new_tokens=20, batch_size=1, progress=False)]
    eng = engine(lm, max_batch=3)
    handles = [eng.submit(lm.format_chat(p), SamplingParams(max_tokens=20)) for p in PROMPTS[:4]]
    for _ in range(5):  # the rest arrive while the first ones decode
        eng.step()
    handles += [eng.submit(lm.format_chat(p), SamplingParams(max_tokens=20)) for p in PROMPTS[4:]]
    eng.run_until_idle()
    replies = [lm.tokenizer.decode(h.result(), skip_special_tokens=True) for h in handles]
    assert replies == expected
    assert max(row["decode_rows"] for row in eng.timeline) == 3, "the batch was full at some point"
    assert eng.blocks.used == 0 and not eng.live, "finished requests return their blocks"


def test_a_seeded_reply_does_not_depend_on_its_batch_company(lm):
    prompt, seeded = lm.format_chat("Tell me a story about a cat."), SamplingParams(max_tokens=16, temperature=0.9,
                                                                                    top_p=0.95, seed=7)
    alone = engine(lm)
    reply = alone.submit(prompt, seeded)
    alone.run_until_idle()

    crowded = engine(lm, max_batch=4)
    others = [crowded.submit(lm.format_chat(p), SamplingParams(max_tokens=12, temperature=1.0, seed=i))
              for i, p in enumerate(PROMPTS[:2])]
    crowded.step()
    again = crowded.submit(prompt, seeded)  # joins a running batch, at a different iteration
    others.append(crowded.submit(lm.format_chat(PROMPTS[3]), SamplingParams(max_tokens=12, temperature=1.0)))
    crowded.run_until_idle()
    assert again.result() == reply.result()
    other_seed = engine(lm)
    different = other_seed.submit(prompt, SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=8))
    other_seed.run_until_idle()
    assert different.result() != reply.result(), "the seed is what fixed the reply"


def test_a_cancelled_request_frees_its_blocks_and_ends_its_stream(lm):
    eng = engine(lm, max_batch=2)
    long = eng.submit(lm.format_chat(PROMPTS[0]), SamplingParams(max_tokens=200, min_tokens=200))
    short = eng.submit(lm.format_chat(PROMPTS[1]), SamplingParams(max_tokens=8))
    for _ in range(4):
        eng.step()
    held = len(eng.blocks.tables[long.id])
    assert held > 0
    long.cancel()
    eng.step()
    assert long.id not in eng.blocks.tables and long.request.finish_reason == "cancelled"
    assert len(long.result(timeout=1)) < 200, "the reply ended without running to max_tokens"
    eng.run_until_idle()
    assert short.request.finish_reason in ("stop", "length") and eng.blocks.used == 0


def test_a_full_queue_refuses_with_a_retry_hint_and_keeps_serving(lm):
    eng = engine(lm, max_batch=1, max_queue=2)
    accepted = [eng.submit(lm.format_chat(p), SamplingParams(max_tokens=4)) for p in PROMPTS[:2]]
    with pytest.raises(QueueFull) as refused:
        eng.submit(lm.format_chat(PROMPTS[2]), SamplingParams(max_tokens=4))
    assert refused.value.retry_after_s >= 1
    eng.run_until_idle()
    assert all(h.request.finish_reason for h in accepted)
    later = eng.submit(lm.format_chat(PROMPTS[2]), SamplingParams(max_tokens=4))  # room again
    eng.run_until_idle()
    assert later.result()


def test_too_long_requests_are_refused_before_they_take_anything(lm):
    eng = engine(lm, max_context=64)
    with pytest.raises(ValueError, match="exceed this engine's 64-token context"):
        eng.submit(lm.format_chat(PROMPTS[0]), SamplingParams(max_tokens=60))
    with pytest.raises(ValueError, match="more KV blocks than the whole pool"):
        engine(lm, num_blocks=3, block_size=16).submit(lm.format_chat(PROMPTS[0]), SamplingParams(max_tokens=40))
    assert not eng.live and eng.blocks.used == 0


def test_a_small_pool_preempts_and_recomputes_without_changing_replies(lm):
    expected = [g.text for g in lm.generate(PROMPTS[:4], max_new_tokens=24, batch_size=1, progress=False)]
    # Each request needs up to ~3 blocks of 16; 7 usable blocks cannot hold 4 at once.
    eng = engine(lm, max_batch=4, num_blocks=8, block_size=16)
    handles = [eng.submit(lm.format_chat(p), SamplingParams(max_tokens=24)) for p in PROMPTS[:4]]
    eng.run_until_idle()
    assert [lm.tokenizer.decode(h.result(), skip_special_tokens=True) for h in handles] == expected
    assert max(row["blocks_used"] for row in eng.timeline) <= 7


def _completion_order(lm, policy: str, **options) -> list[str]:
    """A scripted trace on one slot: a long request, then two short ones while it runs."""
    eng = engine(lm, max_batch=1, policy=policy, **options)
    params = {"long": SamplingParams(max_tokens=40, min_tokens=40), "short": SamplingParams(max_tokens=4, min_tokens=4)}
    eng.submit(lm.format_chat("Hi"), params["long"], request_id="long")
    for name, arrive_at in (("short-1", 2), ("short-2", 3)):
        while len(eng.timeline) < arrive_at:
            eng.step()
        eng.submit(lm.format_chat("Hello"), params["short"], request_id=name)
    eng.run_until_idle()
    return [r.id for r in eng.finished]


def test_fcfs_finishes_in_arrival_order_and_mlfq_lets_short_jobs_pass(lm):
    assert _completion_order(lm, "fcfs") == ["long", "short-1", "short-2"]
    assert _completion_order(lm, "mlfq", policy_options={"base_quantum": 2}) == ["short-1", "short-2", "long"]


def test_with_room_for_everyone_mlfq_runs_the_same_iterations_as_fcfs(lm):
    """Ranking only matters when requests compete for slots: with a slot each, both policies must
    run identical iterations (a difference at low load is noise, not the policy)."""
    def iterations(policy: str) -> list[tuple[int, int]]:
        eng = engine(lm, max_batch=4, policy=policy, policy_options={"base_quantum": 2} if policy == "mlfq" else {})
        for i, (prompt, n) in enumerate(zip(PROMPTS[:4], (9, 3, 14, 6), strict=True)):
            while len(eng.timeline) < 2 * i:
                eng.step()
            eng.submit(lm.format_chat(prompt), SamplingParams(max_tokens=n, min_tokens=n))
        eng.run_until_idle()
        return [(row["decode_rows"], row["prefill_tokens"]) for row in eng.timeline]

    assert iterations("mlfq") == iterations("fcfs")


def test_mlfq_skip_join_demotion_and_promotion():
    policy = SkipJoinMLFQ(levels=4, base_quantum=2, starve_after=3)
    assert [policy.first_level(prompt_tokens=n, prefill_tokens_per_step=8) for n in (8, 16, 32, 64, 1000)] == \
        [0, 0, 1, 2, 3], "a long prompt skips the queues whose quantum it would overrun"
    from labkit.scheduling import Scheduled

    job = Scheduled("a", 1, 8)
    policy.after_iteration([job], [], {"a": 2})
    assert job.level == 1, "used its quantum of 2 tokens: demoted"
    policy.after_iteration([], [job], {})
    policy.after_iteration([], [job], {})
    policy.after_iteration([], [job], {})
    assert job.level == 0, "waited 3 iterations: promoted back"
    with pytest.raises(ValueError, match="unknown scheduling policy 'lifo'"):
        make_policy("lifo")


def test_prefill_modes_decide_whether_prompts_or_streams_wait(lm):
    def run(mode: str) -> Engine:
        eng = engine(lm, max_batch=4, prefill=mode, chunk_tokens=8)
        eng.submit(lm.format_chat("Hi"), SamplingParams(max_tokens=12, min_tokens=12), request_id="running")
        for _ in range(3):
            eng.step()
        eng.submit(lm.format_chat("Please explain, step by step, how a paged KV cache works."),
                   SamplingParams(max_tokens=4, min_tokens=4), request_id="new")
        eng.run_until_idle()
        return eng

    first = run("prefill-first").timeline[3]
    assert first["decode_rows"] == 0 and first["prefill_tokens"] > 8, "the stream paused for the whole prompt"
    decode_first = run("decode-first")
    new = next(r for r in decode_first.finished if r.id == "new")
    running = next(r for r in decode_first.finished if r.id == "running")
    assert new.token_times[0] > running.token_times[-1], "the new prompt waited for the running request"
    chunked = list(run("chunked").timeline)
    assert all(row["prefill_tokens"] <= 8 for row in chunked)
    assert sum(1 for row in chunked[3:] if row["prefill_tokens"] and row["decode_rows"]) >= 2, \
        "prompt chunks rode along with decode steps"


def test_the_engine_thread_streams_tokens_as_they_are_made(lm):
    eng = engine(lm, max_batch=4).start()
    try:
        handles = [eng.submit(lm.format_chat(p), SamplingParams(max_tokens=10)) for p in PROMPTS[:3]]
        first = next(iter(handles[0]))
        assert isinstance(first, int) and handles[0].ttft_s is not None
        assert all(h.result() for h in handles[1:])
    finally:
        eng.stop()
    assert eng.error is None
    assert torch.is_inference_mode_enabled() is False


def test_an_engine_that_fails_ends_every_request_and_refuses_new_ones(lm):
    eng = engine(lm, max_batch=2)

    def broken_forward(*args, **kwargs):
        raise RuntimeError("out of memory (injected)")

    eng._forward = broken_forward  # a fault in the worker, as an allocation failure would be
    handles = [eng.submit(lm.format_chat(p), SamplingParams(max_tokens=8)) for p in PROMPTS[:3]]
    eng.start()
    for h in handles:
        assert h.result(timeout=30) == [] and h.request.finish_reason == "error", "callers get an end, not a hang"
    eng._thread.join(timeout=30)
    assert "injected" in repr(eng.error)
    with pytest.raises(RuntimeError, match="engine stopped after an error"):
        eng.submit(lm.format_chat(PROMPTS[0]))


def test_a_prefill_engine_hands_its_kv_to_a_decode_engine_and_the_reply_is_the_same(lm):
    """DistServe's split in one process: the replies equal one engine's; a decode engine without
    room for the KV it is handed prefills the prompt itself and still gets the same reply."""
    whole = engine(lm, max_batch=4)
    expected = [whole.submit(lm.format_chat(p), SamplingParams(max_tokens=12)) for p in PROMPTS[:4]]
    whole.run_until_idle()
    prefill, decode = engine(lm, max_batch=4, role="prefill"), engine(lm, max_batch=4, role="decode")
    firsts = [prefill.submit(lm.format_chat(p), SamplingParams(max_tokens=12)) for p in PROMPTS[:4]]
    prefill.run_until_idle()
    handoffs = [h.request.handoff for h in firsts]
    assert all(h.request.finish_reason == "prefilled" and len(h.result()) == 1 for h in firsts)
    assert prefill.blocks.used == 0, "a prefill engine keeps nothing once the KV has left"
    per_token = handoffs[0].nbytes // handoffs[0].prompt_tokens
    assert per_token == lm.model.config.num_hidden_layers * 2 * lm.model.config.num_key_value_heads * \
        lm.model.config.head_dim * 4  # fp32
    rest = [decode.submit(h, SamplingParams(max_tokens=12)) for h in handoffs]
    decode.run_until_idle()
    assert [h.result() for h in rest] == [h.result() for h in expected]
    assert sum(row["prefill_tokens"] for row in decode.timeline) == 0, "the decode engine ran no prompt"

    cramped = engine(lm, max_batch=4, role="decode", num_blocks=4, block_size=16)  # 3 blocks: one short prompt
    again = cramped.submit(handoffs[0], SamplingParams(max_tokens=12))
    cramped.run_until_idle()
    assert again.result() == expected[0].result()
    with pytest.raises(ValueError, match="unknown engine role"):
        engine(lm, role="decoder")


def test_replay_sends_one_trace_and_times_every_request(lm):
    from labkit.loadtest import poisson_arrivals, replay

    assert poisson_arrivals(5, rate=2.0, seed=3) == poisson_arrivals(5, rate=2.0, seed=3)
    assert poisson_arrivals(5, rate=2.0, seed=3) != poisson_arrivals(5, rate=2.0, seed=4)
    eng = engine(lm, max_batch=4)
    try:
        report = replay(eng, PROMPTS, lengths=[6, 3, 9, 4, 5], rate=20.0, progress=False)
    finally:
        eng.stop()
    assert report["ok"] == 5 and [r["tokens"] for r in report["rows"]] == [6, 3, 9, 4, 5]
    assert all(0 < r["ttft_s"] <= r["latency_s"] and r["tpot_s"] > 0 for r in report["rows"])
    assert report["met_slo"] <= 5 and report["timeline"] and report["timeline"][0]["t"] >= 0
    with pytest.raises(ValueError, match="rate must be between"):
        replay(eng, PROMPTS, lengths=[4], rate=-1)


def test_the_compiled_decode_step_gives_the_eager_tokens(lm):
    # A tiny random Llama (fp32) keeps the compile short; rows join and leave, contexts grow, and
    # the batch shrinks to one row, so both compiled graphs ("rows" and "1 row") are used.
    from test_fastgen import make_tiny_llama

    model = make_tiny_llama(0)
    prompts = [[1, 17, 300, 42, 9], [1, 5], [1, 88, 7, 301, 66, 65, 64, 12, 11], [1, 250, 251], [1, 3, 4]]
    lengths = [30, 6, 24, 12, 40]

    def run(compile: bool) -> tuple[list[list[int]], Engine]:
        eng = Engine(model, lm.tokenizer, max_batch=3, max_context=128, compile=compile)
        handles = [eng.submit(p, SamplingParams(max_tokens=n, min_tokens=n))
                   for p, n in zip(prompts, lengths, strict=True)]
        eng.run_until_idle()
        return [h.result() for h in handles], eng

    eager, _ = run(False)
    compiled, eng = run(True)
    assert compiled == eager
    assert eng.compile_fallback is None and set(eng.compile_seconds) == {"rows", "1 row"}
    assert max(r["decode_rows"] for r in eng.timeline) == 3
