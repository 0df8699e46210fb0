"""DistServe's split on real Ray actors: a prefill actor, a decode actor, the KV through the object store."""

from __future__ import annotations

import time

from labkit.disaggregation import DisaggregatedEngine
from labkit.engine import Engine, SamplingParams

PROMPTS = ["What is Ray?", "写一首关于秋天的短诗。", "Explain KV caching in one sentence."]


def test_the_pair_replies_as_one_engine_does_and_moves_the_kv_between_processes(ray_cluster, lm_fp32):
    lm = lm_fp32
    whole = Engine(lm.model, lm.tokenizer, max_batch=4, max_context=512)
    expected = [whole.submit(lm.format_chat(p), SamplingParams(max_tokens=10)) for p in PROMPTS]
    whole.run_until_idle()

    pair = DisaggregatedEngine(profile="cpu", prefill_cpus=1, decode_cpus=1, max_batch=4, dtype="float32")
    try:
        handles = [pair.submit(lm.format_chat(p), SamplingParams(max_tokens=10)) for p in PROMPTS]
        one_token = pair.submit(lm.format_chat(PROMPTS[0]), SamplingParams(max_tokens=1))
        for h in [*handles, one_token]:
            assert h.request.done.wait(300), "the pair did not answer"
        long = pair.submit(lm.format_chat(PROMPTS[1]), SamplingParams(max_tokens=400, min_tokens=400))
        while not long.request.done.is_set() and time.perf_counter() - long.request.arrived < 8:
            time.sleep(0.2)  # let it reach the decode actor
        long.cancel()
        assert long.request.done.wait(120)
    finally:
        pair.stop()
    assert [h.request.generated for h in handles] == [h.result() for h in expected]
    assert all(h.request.finish_reason == "length" and h.request.kv_bytes > 0 for h in handles)
    times = handles[0].request.token_times
    assert len(times) == 10 and times == sorted(times) and times[0] > handles[0].request.arrived
    assert one_token.request.generated == expected[0].result()[:1] and one_token.request.kv_bytes == 0
    assert long.request.finish_reason == "cancelled" and len(long.request.generated) < 400
