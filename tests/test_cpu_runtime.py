"""labkit.cpu_runtime: OpenMP workers handed to the computing thread; pre-packed bf16 weights.

No timings here (they live in benchmarks/bench_cpu_runtime.py): the tests check what each fix
does to the process and that results stay bit for bit the same.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from labkit.cpu_runtime import pack_linear_weights, release_openmp_threads, unpack_linear_weights

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; libgomp is Linux's")


def _thread_ids() -> set[str]:
    return set(os.listdir("/proc/self/task"))


@linux_only
def test_release_ends_this_threads_openmp_workers_and_they_come_back():
    # On a thread of its own, so the suite's main thread and its pool are left as they were.
    seen: dict[str, object] = {}

    def work() -> None:
        torch.set_num_threads(2)
        a = torch.randn(512, 512)
        before = _thread_ids()
        a @ a  # the first parallel op on this thread starts its OpenMP pool
        seen["pool"] = _thread_ids() - before
        seen["released"] = release_openmp_threads()
        seen["left"] = seen["pool"] & _thread_ids()
        a @ a  # the pool comes back on the next parallel op
        seen["again"] = _thread_ids() - before
        release_openmp_threads()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen["pool"], "a parallel op on two threads should have started a worker thread"
    assert seen["released"] is True, "torch's OpenMP runtime (libgomp) was not found in this process"
    assert seen["left"] == set(), "the released workers are still running"
    assert seen["again"], "the next parallel op should have started its workers again"


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("shape", [(64,), (5, 64), (2, 40, 64)])
def test_packed_layers_give_the_same_bits_and_keep_the_state_dict(shape):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.SiLU(), torch.nn.Linear(96, 32, bias=False))
    model = model.to(torch.bfloat16)
    x = torch.randn(*shape, dtype=torch.bfloat16)
    before, keys = model(x), set(model.state_dict())
    assert pack_linear_weights(model) == 2
    packed = model(x)
    assert torch.equal(packed, before)  # the same oneDNN kernel on the same numbers
    assert set(model.state_dict()) == keys, "the packed copy must not leak into checkpoints"
    unpack_linear_weights(model)
    assert "labkit_packed_weight" not in model[0].__dict__ and "forward" not in model[0].__dict__
    assert torch.equal(model(x), before)


def test_only_bf16_cpu_layers_are_packed():
    fp32 = torch.nn.Linear(8, 8)
    assert pack_linear_weights(fp32) == 0
    assert "forward" not in fp32.__dict__
    unpack_linear_weights(fp32)  # nothing to undo: no error


@needs_onednn
def test_chat_model_packs_for_plain_generation_and_unpacks_for_the_fast_decoder(chat_model_path):
    from labkit.llm import ChatModel

    lm = ChatModel.from_pretrained(chat_model_path, device="cpu", dtype="bfloat16")
    linears = [m for m in lm.model.modules() if type(m) is torch.nn.Linear]
    assert linears and all("labkit_packed_weight" in m.__dict__ for m in linears)
    lm.set_fast(True, compile=False)  # torch.compile must see plain layers
    assert not any("labkit_packed_weight" in m.__dict__ for m in linears)
    lm.set_fast(False)
    assert all("labkit_packed_weight" in m.__dict__ for m in linears)
