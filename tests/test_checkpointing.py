"""Checkpoints (blocking and async, through torch.distributed.checkpoint) and the ETTR arithmetic."""

from __future__ import annotations

import types

import pytest
import torch

from labkit import checkpointing, goodput


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randn(5, 8)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def _one_more_step(model, optimizer):
    torch.manual_seed(123)
    model(torch.randn(5, 8)).pow(2).mean().backward()
    optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", checkpointing.MODES)
def test_a_loaded_checkpoint_trains_on_exactly_as_the_saved_run_would(mode, tmp_path):
    model, optimizer = _trained()
    saver = checkpointing.Checkpointer(tmp_path, mode=mode)
    stall = saver.save(3, model, optimizer, {"step": 3, "history": [{"loss": 1.5}]})
    assert stall >= 0
    assert [f.name for f in saver.finish()] == ["step-000003"]
    # A different model and an optimizer with no state yet: the checkpoint must fill both,
    # Adam's moments included, or the next step would differ.
    fresh, fresh_optimizer = _trained(seed=1)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    meta = checkpointing.load(tmp_path / "step-000003", fresh, fresh_optimizer)
    assert meta == {"step": 3, "history": [{"loss": 1.5}]}
    for a, b in zip(_one_more_step(model, optimizer), _one_more_step(fresh, fresh_optimizer), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_async_saves_wait_for_the_one_in_flight_and_each_is_handed_out_once(tmp_path):
    model, optimizer = _trained()
    saver = checkpointing.Checkpointer(tmp_path, mode="async")
    saver.save(1, model, optimizer, {"step": 1})
    saver.save(2, model, optimizer, {"step": 2})  # waits for step 1's write first
    first = [f.name for f in saver.completed()]
    assert first in (["step-000001"], ["step-000001", "step-000002"])  # 2 as well if already written
    rest = [f.name for f in saver.finish()]
    assert first + rest == ["step-000001", "step-000002"]
    assert (tmp_path / "step-000002" / "meta.json").exists()


def test_a_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="blocking"):
        checkpointing.Checkpointer(tmp_path, mode="sometimes")


def test_ettr_has_an_optimum_near_youngs_interval_and_falls_with_scale():
    kwargs = dict(step_s=1.0, stall_s=30.0, restart_s=300.0, mtbf_s=4 * 3600.0)
    best = goodput.best_interval_s(stall_s=30.0, mtbf_s=4 * 3600.0)
    curve = {every: goodput.expected(checkpoint_every=every, **kwargs) for every in range(10, 5000, 10)}
    argmax = max(curve, key=curve.get)
    assert abs(argmax - best) / best < 0.15
    assert curve[argmax] > curve[10] and curve[argmax] > curve[4990]
    small, big = (goodput.expected(checkpoint_every=round(best), **{**kwargs, "mtbf_s": goodput.mtbf_at(n)})
                  for n in (1_000, 16_000))
    assert small > big
    assert goodput.mtbf_at(goodput.LLAMA3_GPUS) == pytest.approx(54 * 86400 / 419)
    with pytest.raises(ValueError, match="step_s"):
        goodput.expected(step_s=0, checkpoint_every=1, stall_s=0, restart_s=0, mtbf_s=1)


def test_measured_splits_a_run_with_one_failure_into_its_parts():
    # Steps of 1 s, a 0.5 s stall after step 2 (checkpoint), step 3 killed, a 10 s restart,
    # step 3 redone: what finetune's rows look like (received_s is when the driver saw each).
    def row(step, t, stall=0.0, pids=(10, 11)):
        return {"step": step, "step_s": 1.0, "stall_s": stall, "received_s": t, "pids": list(pids)}
    history = [row(1, 1.0), row(2, 2.5, stall=0.5), row(3, 14.5, pids=(20, 21)), row(4, 15.5, pids=(20, 21))]
    replaced = [row(3, 3.5)]
    result = types.SimpleNamespace(history=history, restarts=1, extra={"replaced": replaced})
    parts = goodput.measured(result)
    assert parts["wall_s"] == 15.5 and parts["productive_s"] == 4.0 and parts["recomputed_s"] == 1.0
    assert parts["stall_s"] == 0.5 and parts["restart_s"] == 10.0 and parts["other_s"] == 0.0
    assert parts["ettr"] == pytest.approx(4 / 15.5)


def test_a_restart_with_nothing_redone_is_still_a_restart():
    # Checkpointed every step: the new workers resume exactly after the last step seen, so only
    # their pids tell that a restart happened (the gap between steps 2 and 3).
    rows = [{"step": 1, "step_s": 1.0, "stall_s": 0.2, "received_s": 1.2, "pids": [1, 2]},
            {"step": 2, "step_s": 1.0, "stall_s": 0.2, "received_s": 2.4, "pids": [1, 2]},
            {"step": 3, "step_s": 1.0, "stall_s": 0.2, "received_s": 13.6, "pids": [3, 4]}]
    result = types.SimpleNamespace(history=rows, restarts=1, extra={"replaced": []})
    parts = goodput.measured(result)
    assert parts["restart_s"] == pytest.approx(10.0) and parts["recomputed_s"] == 0
    assert parts["wall_s"] == pytest.approx(13.6) and parts["other_s"] == pytest.approx(0.0, abs=1e-9)
