"""Training checkpoints with ``torch.distributed.checkpoint``: blocking or asynchronous saves.

A checkpoint stalls training for as long as the loop waits on it. A blocking save
(``dcp.save``) waits for every byte to reach storage; an asynchronous one (``dcp.async_save``)
waits only while the state is copied ("staged") into host memory, then writes in a background
thread while training goes on. That split is what ByteCheckpoint and torchtitan's async mode
build on; on a GPU the staging copy is device-to-host, here it is host-to-host.

At most one asynchronous save is in flight: a new save first waits for the previous one (the
back-pressure a real trainer needs, or a slow disk would let checkpoints pile up in memory).
A checkpoint is only handed to Ray Train (``ray.train.report(..., checkpoint_upload_mode=
NO_UPLOAD)``: it is already written inside the run's folder) once it is complete on disk, so a
worker that dies mid-write leaves the previous checkpoint as the one to resume from.

The folder holds DCP's shards and ``meta.json`` (step, loss history: the small, non-tensor
part), so the driver reads a run's results without loading the weights.

Example:
    >>> import tempfile, torch
    >>> model = torch.nn.Linear(4, 4); optimizer = torch.optim.AdamW(model.parameters())
    >>> model(torch.ones(1, 4)).sum().backward(); optimizer.step()
    >>> saver = Checkpointer(tempfile.mkdtemp(), mode="async")
    >>> stall_s = saver.save(3, model, optimizer, {"step": 3})
    >>> [folder.name for folder in saver.finish()]
    ['step-000003']
    >>> load(saver.root / "step-000003", torch.nn.Linear(4, 4), None)["step"]
    3
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import torch

# torch.distributed.checkpoint is imported where it is used: it takes as long to import as torch
# itself, and every Ray Train worker (and the driver) imports this module, most never saving.

Mode = Literal["blocking", "async"]
MODES = ("blocking", "async")


def _states(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    # get_state_dict names optimizer state by parameter name (not position) and strips DDP's
    # "module." prefix, so a checkpoint loads into a bare model as well as a wrapped one.
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if optimizer is None:
        return {"model": model.state_dict()}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def check_mode(mode: str) -> Mode:
    """``mode`` if it is a checkpoint mode, else a ValueError that lists them."""
    if mode not in MODES:
        raise ValueError(f"checkpoint mode must be one of {MODES}, got {mode!r}")
    return mode


class Checkpointer:
    """Saves checkpoints under ``root`` as ``step-NNNNNN`` folders, blocking or asynchronously."""

    def __init__(self, root: str | Path, *, mode: Mode = "blocking"):
        self.root, self.mode = Path(root), check_mode(mode)
        self._pending: tuple[Path, object] | None = None  # (folder, future) of the save in flight
        self._done: list[Path] = []  # written, not yet handed out by completed()

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, meta: dict) -> float:
        """Start (async) or do (blocking) a save; returns the seconds training was stalled."""
        import torch.distributed.checkpoint as dcp
        import torch.distributed.checkpoint.state_dict  # noqa: F401  (imported before the clock starts)

        t0 = time.perf_counter()
        self._wait()  # back-pressure: one save in flight at most
        folder = self.root / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").write_text(json.dumps(meta))
        if self.mode == "blocking":
            dcp.save(_states(model, optimizer), checkpoint_id=folder, no_dist=True)
            self._done.append(folder)
        else:
            future = dcp.async_save(_states(model, optimizer), checkpoint_id=folder, no_dist=True)
            self._pending = (folder, future)
        return time.perf_counter() - t0

    def completed(self) -> list[Path]:
        """Folders whose writes have finished since the last call (report them to Ray Train)."""
        if self._pending and self._pending[1].done():
            self._wait()
        done, self._done = self._done, []
        return done

    def finish(self) -> list[Path]:
        """Wait for the save in flight; returns the folders completed since the last call."""
        self._wait()
        return self.completed()

    def _wait(self) -> None:
        if self._pending:
            folder, future = self._pending
            self._pending = None
            future.result()  # re-raises a failed background write here
            self._done.append(folder)


def load(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load a checkpoint saved by ``Checkpointer`` into ``model`` (and ``optimizer``) in place;
    returns its ``meta.json``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    folder = Path(folder)
    states = _states(model, optimizer)
    dcp.load(states, checkpoint_id=folder, no_dist=True)
    if optimizer is None:
        model.load_state_dict(states["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optimizer"])
    return read_meta(folder)


def read_meta(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "meta.json").read_text())
