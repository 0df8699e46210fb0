"""Ray Serve endpoints for real: a Serve app on loopback, the openai client, curl-style raw bodies."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from conftest import free_port

from labkit.loadtest import load_test, mixed_bodies, percentile
from labkit.serve import ServeSettings, serve_config


@pytest.fixture(scope="module")
def server(ray_cluster):
    from ray import serve

    from labkit.serve import deploy

    # The replica decodes with labkit's fast path (compiled at start-up): every test below goes through it.
    url = deploy(ServeSettings(port=free_port(), max_batch_size=8, batch_wait_timeout_s=0.1, max_tokens_limit=64,
                               default_max_tokens=16, fast_generation=True))
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
    ({"messages": [{"role": "user", "content": "x" * 70_000}]}, 413, "limit"),
])
def test_bad_bodies_get_4xx_and_the_replica_keeps_serving(server, body, status, words):
    bad = _chat(server, body)
    assert bad.status_code == status
    error = bad.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
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


def test_load_harness_refuses_other_hosts_and_bad_bounds():
    with pytest.raises(ValueError, match="only targets this machine"):
        load_test("http://example.com:8000", requests=1)
    with pytest.raises(ValueError, match="concurrency"):
        load_test("http://127.0.0.1:9", requests=1, concurrency=0)
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


def test_cli_bench_and_config(server, tmp_path):
    from conftest import run_cli

    proc = run_cli("serve", "bench", "--url", server, "--requests", "4", "--concurrency", "2", "--max-tokens", "4",
                   "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] == 4 and report["errors"] == 0
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
