"""Two things eager torch leaves on the table when a model serves from a CPU.

Why this module exists (torch offers neither as a public switch; both are measured in
``benchmarks/bench_cpu_runtime.py`` and ``docs/benchmarks.md``, "CPU runtime"):

1. **One OpenMP pool, on the thread that computes.** torch on Linux runs its CPU kernels on OpenMP
   (GNU libgomp), which keeps a pool of worker threads *per thread that has run a parallel op*.
   Between two ops a worker spins for a while, so the next op starts at once; but libgomp's manual
   (``GOMP_SPINCOUNT``) says that once it manages more threads than there are CPUs it spins only
   100 times, and every op then waits for a sleeping worker to wake. A server that loads its model
   on one thread and generates on another (the engine's loop, an executor's worker) has two pools,
   which on a 2-core machine is already too many. ``release_openmp_threads`` ends the calling
   thread's idle workers (OpenMP 5.0's ``omp_pause_resource_all``, soft pause); they come back by
   themselves the next time that thread runs a parallel op. Measured on a 2-core Xeon in bf16: a
   decode step of the cpu profile's model took 1.9-2.0x as long on a second thread as on the
   loading thread, and as long as on the loading thread once that one had released its pool.

2. **Weights packed once, not per call.** For a bf16 ``nn.Linear`` on the CPU, torch hands the
   weight to oneDNN, which lays it out in its blocked format again at every call; for the small
   matrices of a decode step that costs as much as the multiply. ``pack_linear_weights`` keeps a
   copy in the blocked layout (what inductor's freezing does when it compiles) and multiplies with
   it directly: the same oneDNN kernel, the same results bit for bit, the plain weight kept for
   ``state_dict``, training and ``torch.compile`` (``unpack_linear_weights`` undoes it). Measured
   on the same machine: a decode step 1.2x faster at batch 1 and at batch 16.

Example:
    >>> import torch
    >>> from labkit.cpu_runtime import pack_linear_weights, unpack_linear_weights
    >>> layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    >>> x = torch.ones(2, 8, dtype=torch.bfloat16)
    >>> before = layer(x)
    >>> pack_linear_weights(layer) in (0, 1)          # 0 where torch has no oneDNN
    True
    >>> torch.equal(layer(x), before)
    True
    >>> unpack_linear_weights(layer)
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import types

import torch

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: 1 soft (threads end, state kept), 2 hard
_RUNTIMES = ("libgomp", "libiomp5", "libomp")
_PACK_ROWS_HINT = 16  # oneDNN picks its blocking for this many rows; measured as good from 1 to 1,024


@functools.cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime already loaded into this process (torch's own copy), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        if os.path.basename(path).startswith(_RUNTIMES):
            library = ctypes.CDLL(path)  # the same file: the copy already loaded, not a second one
            if hasattr(library, "omp_pause_resource_all"):
                return library
    return None


def release_openmp_threads() -> bool:
    """End the calling thread's idle OpenMP workers, so that the thread that computes has the CPUs
    to itself (see the module docstring). Safe at any time; returns whether it found an OpenMP
    runtime and released its threads."""
    library = _openmp_runtime()
    return library is not None and library.omp_pause_resource_all(_OMP_PAUSE_SOFT) == 0


def _can_pack(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _packed_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    y = torch.ops.mkldnn._linear_pointwise(rows, self.labkit_packed_weight, self.bias, "none", [], "")
    return y.reshape(*x.shape[:-1], y.shape[-1])


@torch.no_grad()
def pack_linear_weights(model: torch.nn.Module) -> int:
    """Give every bf16 ``nn.Linear`` on the CPU a copy of its weight in oneDNN's layout and use it
    (inference only: the packed copy has no gradient). Returns how many layers were packed; 0 on
    GPUs, in fp32, or without oneDNN. Costs one more copy of those weights in memory."""
    packed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and _can_pack(module.weight):
            module.labkit_packed_weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(),
                                                                                  _PACK_ROWS_HINT)
            module.forward = types.MethodType(_packed_forward, module)
            packed += 1
    return packed


def unpack_linear_weights(model: torch.nn.Module) -> None:
    """Back to plain ``nn.Linear`` (before ``torch.compile``, training or moving the model)."""
    for module in model.modules():
        if "labkit_packed_weight" in module.__dict__:
            del module.labkit_packed_weight, module.forward
