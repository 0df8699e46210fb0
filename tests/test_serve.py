"""Ray Serve endpoints for real: a Serve app on loopback, the openai client, curl-style raw bodies."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict

import httpx
import pytest
from conftest import free_port

from labkit.loadtest import load_test, mixed_bodies, percentile
from labkit.serve import ServeSettings, serve_config


@pytest.fixture(scope="module")
def server(ray_cluster):
    from ray import serve

    from labkit.serve import deploy

    # The replica runs the continuous-batching engine: every chat request below goes through it.
    # fp32: the precision where greedy replies cannot depend on what else is in the batch (in bf16
    # a CPU with AMX rounds a batch's matmul differently from one row's, and a token can flip).
    url = deploy(ServeSettings(port=free_port(), max_batch_size=8, max_queue=8, max_tokens_limit=64,
                               default_max_tokens=16, dtype="float32"))
    yield url
    serve.shutdown()


def _chat(url, body, **kw):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/chat/completions", content=content,
                      headers={"Content-Type": "application/json", **kw.pop("headers", {})}, timeout=120, **kw)


GOOD = {"messages": [{"role": "user", "content": "Name one colour."}], "max_tokens": 6}


def test_openai_client_chat_and_streaming(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="not-needed-on-loopback")
    reply = client.chat.completions.create(model="labkit", messages=GOOD["messages"], max_tokens=6, temperature=0)
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 6 and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.model_extra["time_to_first_token_s"] < 60

    stream = client.chat.completions.create(model="labkit", messages=GOOD["messages"], max_tokens=6, temperature=0,
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert len(pieces) > 2 and "".join(pieces) == text  # same greedy reply, token by token


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"messages": []}, 400, "non-empty list"),
    ({"max_tokens": 4}, 400, "'messages'"),
    ({"messages": [{"role": "user", "content": ""}]}, 400, "non-empty string"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "non-empty string"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "'role'"),
    ({**GOOD, "max_tokens": 10_000}, 400, "between 1 and 64"),
    ({**GOOD, "max_tokens": "ten"}, 400, "must be an integer"),
    ({**GOOD, "temperature": -0.5}, 400, "between 0 and 2"),
    ({**GOOD, "stream": "yes"}, 400, "true or false"),
    ({**GOOD, "n": 2}, 400, "'n'"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "'temperature'"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', 400, "'top_p'"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}', 400, "'max_tokens'"),
    ({**GOOD, "max_tokens": 2.5}, 400, "must be an integer"),
    ({**GOOD, "seed": 10**30}, 400, "'seed'"),
    ({"messages": [{"role": "user", "content": "x" * 70_000}]}, 413, "limit"),
])
def test_bad_bodies_get_4xx_and_the_replica_keeps_serving(server, body, status, words):
    bad = _chat(server, body)
    assert bad.status_code == status
    error = bad.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert _chat(server, GOOD).status_code == 200


def _stream_text(url, body) -> str:
    text = ""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    return text


def test_concurrent_streams_and_plain_requests_match_one_at_a_time(server):
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["Name one colour.", "What is 2 + 2?", "Say hello in Chinese.", "Name a fruit.", "What is Ray?",
               "Give me a word that rhymes with cat."]
    bodies = [{"messages": [{"role": "user", "content": p}], "max_tokens": 12, "temperature": 0} for p in prompts]
    alone = [_chat(server, b).json()["choices"][0]["message"]["content"] for b in bodies]
    seeded = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 12, "temperature": 1.0,
              "seed": 5}
    seeded_alone = _chat(server, seeded).json()["choices"][0]["message"]["content"]

    def one(i: int) -> str:
        if i == len(bodies):
            return _chat(server, seeded).json()["choices"][0]["message"]["content"]
        if i % 2:
            return _stream_text(server, bodies[i])
        return _chat(server, bodies[i]).json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        together = list(pool.map(one, range(len(bodies) + 1)))
    assert together[:-1] == alone, "greedy replies do not depend on batching or streaming"
    assert together[-1] == seeded_alone, "a seeded reply does not depend on its batch company"
    stats = httpx.get(f"{server}/v1/chat/stats", timeout=30).json()
    assert stats["batching"] == "continuous" and max(stats["batches"]) > 1


def test_a_client_that_hangs_up_frees_its_slot(server):
    import time

    before = httpx.get(f"{server}/v1/chat/stats", timeout=30).json()["cancelled"]
    body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}], "max_tokens": 64,
            "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the stream started; now hang up
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = httpx.get(f"{server}/v1/chat/stats", timeout=30).json()
        if stats["cancelled"] > before and stats["live"] == 0:
            break
        time.sleep(0.2)
    assert stats["cancelled"] == before + 1 and stats["blocks_used"] == 0, stats
    assert _chat(server, GOOD).status_code == 200


def test_a_full_queue_answers_429_with_retry_after_and_keeps_serving(server):
    from concurrent.futures import ThreadPoolExecutor

    body = {"messages": [{"role": "user", "content": "Count from one to twenty."}], "max_tokens": 24}
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda _: _chat(server, body), range(32)))
    refused = [r for r in replies if r.status_code == 429]
    assert refused and all(r.status_code in (200, 429) for r in replies), [r.status_code for r in replies]
    assert int(refused[0].headers["Retry-After"]) >= 1 and refused[0].json()["error"]["type"] == "rate_limit_error"
    assert _chat(server, GOOD).status_code == 200


def test_body_size_is_enforced_without_content_length(server):
    def chunks():
        for _ in range(40):
            yield b"x" * 4096  # 160 KB sent chunked, with no Content-Length header

    r = httpx.post(f"{server}/v1/chat/completions", content=chunks(), timeout=60)
    assert r.status_code == 413
    assert _chat(server, GOOD).status_code == 200


def test_images_route(server):
    from PIL import Image

    r = httpx.post(f"{server}/v1/images/generations", json={"prompt": "a red circle", "n": 2, "size": "32x32"},
                   timeout=120)
    assert r.status_code == 200
    images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in r.json()["data"]]
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    for body, words in [({"prompt": "a red circle", "size": "512x512"}, "use one of 32x32"),
                        ({"prompt": "x", "n": 99}, "between 1 and 4"),
                        ({"prompt": ""}, "non-empty string"),
                        ({"prompt": "x", "response_format": "url"}, "b64_json")]:
        bad = httpx.post(f"{server}/v1/images/generations", json=body, timeout=60)
        assert bad.status_code == 400 and words in bad.json()["error"]["message"]


def test_load_harness_batches_concurrent_requests(server):
    report = load_test(server, requests=12, concurrency=6, max_tokens=4, progress=False)
    assert report["ok"] == 12 and report["errors"] == 0
    assert report["p50_s"] <= report["p95_s"] <= report["p99_s"]
    stats = httpx.get(f"{server}/v1/chat/stats", timeout=30).json()
    assert max(stats["batches"]) > 1, "concurrent requests should have been run as one model batch"

    mixed = mixed_bodies(24, seed=1, max_tokens=4)
    report = load_test(server, bodies=[b for b, _ in mixed], requests=24, concurrency=6, progress=False)
    for row, (_, good) in zip(report["rows"], mixed, strict=True):
        assert (row["status"] == 200) if good else (400 <= row["status"] < 500), row


def test_streamed_lengths_are_exact_and_heavy_tailed(server):
    from labkit.loadtest import heavy_tailed_lengths

    lengths = heavy_tailed_lengths(2000, seed=3)
    assert min(lengths) == 8 and max(lengths) == 256 and sorted(lengths)[1000] < 20, "mostly short, a few long"
    report = load_test(server, requests=4, concurrency=4, lengths=[3, 9, 5, 12], stream=True, progress=False)
    assert [row["tokens"] for row in report["rows"]] == [3, 9, 5, 12], "min_tokens holds the end-of-turn back"
    assert all(row["ttft_s"] <= row["latency_s"] for row in report["rows"])


def test_load_harness_refuses_other_hosts_and_bad_bounds():
    with pytest.raises(ValueError, match="only targets this machine"):
        load_test("http://example.com:8000", requests=1)
    with pytest.raises(ValueError, match="concurrency"):
        load_test("http://127.0.0.1:9", requests=1, concurrency=0)
    with pytest.raises(ValueError, match="open-loop mode needs a rate"):
        load_test("http://127.0.0.1:9", requests=1, mode="open")
    assert percentile([3, 1, 2, 4], 50) == 2 and percentile([1, 2, 3, 4], 99) == 4


def test_serve_config_is_valid_and_bad_settings_are_refused():
    config = serve_config(ServeSettings(chat_num_gpus=0.5, image_num_gpus=0.5, chat_max_replicas=3))
    apps = {a["name"]: a for a in config["applications"]}
    assert apps["chat"]["route_prefix"] == "/v1/chat" and apps["images"]["import_path"] == "labkit.serve:images_app"
    assert config["http_options"]["host"] == "127.0.0.1"
    with pytest.raises(ValueError, match="chat_replicas must be a positive integer"):
        serve_config(ServeSettings(chat_replicas=0))
    with pytest.raises(ValueError, match="chat_num_gpus must be >= 0"):
        serve_config(ServeSettings(chat_num_gpus=-1))
    with pytest.raises(ValueError, match="unknown dtype 'fp64'"):
        serve_config(ServeSettings(dtype="fp64"))
    for bad, match in [(dict(image_max_replicas=0), "image_max_replicas must be a whole number >= image_replicas"),
                       (dict(chat_max_replicas=2.5), "chat_max_replicas must be a whole number"),
                       (dict(chat_target_ongoing_requests=0), "chat_target_ongoing_requests must be > 0"),
                       (dict(downscale_delay_s=-1), "downscale_delay_s must be >= 0")]:
        with pytest.raises(ValueError, match=match):
            serve_config(ServeSettings(**bad))


def test_autoscaling_settings_become_serves_autoscaling_config():
    from labkit.serve import _replica_options, chat_app, images_app

    s = ServeSettings(chat_replicas=1, chat_max_replicas=3, chat_target_ongoing_requests=2, upscale_delay_s=5,
                      downscale_delay_s=20, image_max_replicas=2)
    assert _replica_options(s, 1, 3, 2) == {"autoscaling_config": {
        "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2, "upscale_delay_s": 5,
        "downscale_delay_s": 20}}
    assert _replica_options(s, 2, None, 2) == _replica_options(s, 2, 2, 2) == {"num_replicas": 2}
    chat_app(asdict(s)), images_app(asdict(s))  # Serve checks the options it is given: no error


def test_cli_bench_and_config(server, tmp_path):
    from conftest import run_cli

    proc = run_cli("serve", "bench", "--url", server, "--requests", "4", "--concurrency", "2", "--max-tokens", "4",
                   "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] == 4 and report["errors"] == 0
    # Open loop, streamed, exact heavy-tailed lengths: TTFT, TPOT and goodput per request, and a plot.
    proc = run_cli("serve", "bench", "--url", server, "--requests", "6", "--mode", "open", "--rate", "2", "8",
                   "--stream", "--heavy-tailed", "--plot", str(tmp_path / "bench.png"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(proc.stdout)
    assert [r["rate"] for r in runs] == [2, 8] and all(r["ok"] == 6 for r in runs)
    assert all(0 < r["ttft_s_p50"] <= r["ttft_s_p99"] and r["tpot_s_p50"] > 0 for r in runs)
    assert all(0 <= r["met_slo"] <= 6 and r["goodput_rps"] <= r["requests_per_s"] + 1e-9 for r in runs)
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    refused = run_cli("serve", "bench", "--url", "http://10.1.2.3:8000", "--requests", "1")
    assert refused.returncode == 2 and "only targets this machine" in refused.stderr

    proc = run_cli("serve", "config", "--chat-num-gpus", "0.5", "--image-num-gpus", "0.5", "--output",
                   str(tmp_path / "serve.yaml"))
    assert proc.returncode == 0, proc.stderr
    import yaml

    config = yaml.safe_load((tmp_path / "serve.yaml").read_text())
    assert [a["args"]["chat_num_gpus"] for a in config["applications"]] == [0.5, 0.5]
    bad = run_cli("serve", "config", "--max-batch-size", "0")
    assert bad.returncode == 2 and "max_batch_size must be a positive integer" in bad.stderr


def test_an_engine_failure_answers_500_then_503_until_serve_replaces_the_replica(server):
    """A fault injected into the live replica's engine (through Ray's ``__ray_call__``, which runs a
    function inside the actor): the request it fails under gets a 500, the next a 503, and Serve's
    health check replaces the replica, which then serves again."""
    import time

    import ray

    [actor] = [a for a in ray.util.list_named_actors(all_namespaces=True) if "ChatServer" in a["name"]]
    replica = ray.get_actor(actor["name"], namespace=actor["namespace"])

    def break_engine(replica_actor):
        chat = replica_actor._replica_impl._user_callable_wrapper._callable  # our ChatServer instance

        def broken_forward(*args, **kwargs):
            raise RuntimeError("out of memory (injected)")

        chat.engine._forward = broken_forward
        return chat.engine.error is None

    assert ray.get(replica.__ray_call__.remote(break_engine), timeout=60)
    failed = _chat(server, GOOD)
    assert failed.status_code == 500, failed.text
    assert "injected" in failed.json()["error"]["message"] and failed.json()["error"]["type"] == "server_error"
    stopped = _chat(server, GOOD)
    assert stopped.status_code == 503 and "engine stopped after an error" in stopped.json()["error"]["message"]
    deadline = time.monotonic() + 180
    while (reply := _chat(server, GOOD)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert reply.status_code == 200, f"no fresh replica within 3 minutes: {reply.status_code} {reply.text[:300]}"
