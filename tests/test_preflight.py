"""The pre-flight: real steps on this machine, one verdict, fixes in order."""

from __future__ import annotations

import json

from conftest import run_cli

from labkit import i18n
from labkit.preflight import Preflight, Step


def test_the_quick_preflight_runs_every_step_for_real_and_says_ready(chat_model_path):
    out = run_cli("preflight", "--profile", "cpu", "--quick", "--json", timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["ready"] is True and report["profile"] == "cpu"
    assert [s["name"] for s in report["steps"]] == ["doctor", "models", "sentence", "image", "ray"]
    by_name = {s["name"]: s for s in report["steps"]}
    assert "tokens/s" in by_name["sentence"]["detail"] and by_name["sentence"]["speed"] > 0
    assert "dashboard answered 200" in by_name["ray"]["detail"]
    assert report["slowdown"] > 0


def test_a_failed_step_blocks_and_its_fix_is_listed_in_order_and_in_the_chosen_language():
    report = Preflight("cpu", [Step("doctor", True, 0.1, "13 checks"),
                               Step("models", False, 0.2, "not pulled", "labkit models pull --profile cpu"),
                               Step("ray", False, 3.0, "dashboard did not answer", "")])
    assert not report.ready
    verdict = report.verdict()
    assert verdict.startswith("NOT READY")
    assert verdict.index("1. models: labkit models pull --profile cpu") < verdict.index("2. ray: dashboard did not")
    i18n.set_language("zh")
    try:
        assert report.verdict().startswith("还没准备好")
    finally:
        i18n.set_language("en")


def test_speed_never_blocks_but_a_slow_machine_is_told_how_much_longer_the_labs_take():
    slow = Preflight("cpu", [Step("sentence", True, 9.0, "", speed=0.4), Step("image", True, 2.0, "", speed=0.5),
                             Step("ray", True, 12.0, "", speed=0.5)])
    assert slow.ready and abs(slow.slowdown() - 2.0) < 1e-9
    assert "about 2.0x their stated minutes" in slow.verdict()
    fast = Preflight("cpu", [Step("sentence", True, 1.0, "", speed=1.2)])
    assert fast.verdict() == "READY: this machine is set for the labs."


def test_a_chinese_room_is_told_how_to_get_a_chat_model_that_answers_in_chinese(monkeypatch):
    ready = Preflight("cpu", [Step("sentence", True, 1.0, "", speed=1.0)])
    monkeypatch.delenv("LABKIT_CHAT_MODEL", raising=False)
    assert "LABKIT_CHAT_MODEL" not in ready.verdict(), "English readers: SmolLM2 is fine, no advice"
    i18n.set_language("zh")
    try:
        verdict = ready.verdict()
        assert verdict.startswith("可以开始") and "smollm2-135m-instruct" in verdict
        assert "labkit models pull qwen2.5-0.5b-instruct" in verdict and "LABKIT_CHAT_MODEL" in verdict
        monkeypatch.setenv("LABKIT_CHAT_MODEL", "qwen2.5-0.5b-instruct")
        assert "LABKIT_CHAT_MODEL" not in ready.verdict(), "the Chinese-capable model needs no advice"
    finally:
        i18n.set_language("en")
