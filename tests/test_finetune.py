"""Fine-tuning with Ray Train on two real workers: checkpoints, a killed worker, a straggler."""

from __future__ import annotations

import os
import shutil
import signal
import statistics

import pytest
import torch
from conftest import run_cli

from labkit import store
from labkit.finetune import finetune

# Two workers share two cores with the driver, so one rank's forward varies by up to ~0.8 s from
# step to step (seen in CI: 0.78 to 1.53 s). The straggler must stand out from that noise.
SLOW_S = 2.0
SMALL = dict(num_workers=2, max_steps=5, batch_size=2, seq_len=64, checkpoint_every=2, lr=1e-3, progress=False)


@pytest.fixture(scope="module")
def real_run(ray_cluster, tmp_path_factory):
    """The kit's chat model, three steps, rank 1 slowed by 2 s a step, saved into the store."""
    name = f"test-finetune-{os.getpid()}"
    result = finetune(name=name, num_workers=2, max_steps=3, batch_size=2, seq_len=64, checkpoint_every=3,
                      lr=1e-4, slow_rank=1, slow_s=SLOW_S, storage=tmp_path_factory.mktemp("train"), progress=False)
    yield result
    shutil.rmtree(store.models_dir() / name, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_base(chat_model_path, tmp_path_factory):
    """A 6M-parameter Llama with the chat model's tokenizer, in the store: the failure test's base
    (the mechanism does not depend on the model's size; its checkpoints are 75 MB, not 1.6 GB)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(chat_model_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = store.models_dir() / f".staging-tiny-{os.getpid()}"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    name = f"test-tiny-base-{os.getpid()}"
    store.save_trained(folder, name, base="smollm2-135m-instruct", data="none", license="Apache-2.0")
    yield name
    shutil.rmtree(store.models_dir() / name, ignore_errors=True)


def test_two_workers_train_report_every_step_and_save_a_model_the_cli_loads(real_run):
    r = real_run
    assert [h["step"] for h in r.history] == [1, 2, 3] and r.restarts == 0
    assert all(len(h["rank_forward_s"]) == 2 and h["tokens_per_s"] > 0 and 0 < h["mfu"] < 1 for h in r.history)
    assert r.eval_loss_after < r.eval_loss_before  # held-out questions: it learned the answers' form
    assert r.name in store.trained_models()
    assert store.read_manifest(r.name)["source"] == {"kind": "finetuned", "base": "smollm2-135m-instruct",
                                                     "data": "workshop_qa"}
    listed = run_cli("models", "list")
    assert r.name in listed.stdout and "fine-tuned here from smollm2-135m-instruct" in listed.stdout
    done = run_cli("generate", "--model", r.name, "--max-new-tokens", "8", "What is Ray?")
    assert done.returncode == 0, done.stderr
    assert "tokens" in done.stdout


def test_the_slowed_rank_is_found_from_its_own_step_times(real_run):
    forward = [h["rank_forward_s"] for h in real_run.history]
    gap = statistics.median(f[1] - f[0] for f in forward)  # rank 1 behind rank 0, step by step
    assert gap > SLOW_S / 2, forward


def test_a_killed_worker_is_replaced_and_the_loss_continues_from_the_checkpoint(ray_cluster, tiny_base, tmp_path):
    killed = {}

    def kill_rank_1_after_step_3(row):
        if row["step"] == 3 and not killed:
            killed["pid"] = row["pids"][1]
            os.kill(killed["pid"], signal.SIGKILL)  # a worker process this run started, by its id

    result = finetune(base=tiny_base, save=False, storage=tmp_path, on_step=kill_rank_1_after_step_3, **SMALL)
    assert killed and result.restarts == 1
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5]
    # The checkpoint was taken after step 2, so step 3 ran twice: before the kill and after the new
    # worker group resumed. Same weights, same examples: the same loss. From scratch it would be
    # step 1's loss again, which is visibly higher (lr 1e-3 on a tiny model).
    lost = [h for h in result.extra["replaced"] if h["step"] == 3]
    assert lost and result.history[2]["loss"] == pytest.approx(lost[0]["loss"], rel=1e-3)
    assert result.history[0]["loss"] - result.history[2]["loss"] > 0.05
    assert killed["pid"] not in result.history[2]["pids"]


@pytest.mark.parametrize("kwargs,words", [
    (dict(num_workers=0), "num_workers"),
    (dict(max_steps=0), "max_steps"),
    (dict(slow_rank=3, num_workers=2), "slow_rank"),
    (dict(batch_size=64, num_workers=2), "cannot fill one step"),
    (dict(base="no-such-model"), "labkit models pull"),
    (dict(name="smollm2-135m-instruct"), "cannot name a trained model"),
])
def test_bad_settings_are_refused_before_anything_starts(kwargs, words):
    with pytest.raises((ValueError, FileNotFoundError), match=words):
        finetune(progress=False, **kwargs)


def test_more_workers_than_the_cluster_can_place_is_refused_not_waited_for(ray_cluster):
    with pytest.raises(ValueError, match="3 workers need one CPU each and this Ray cluster has 2 CPUs"):
        finetune(num_workers=3, batch_size=1, progress=False)
