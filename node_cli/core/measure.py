"""One way to measure a model's size and a training step's memory.

- `activation_bytes`: bytes autograd saves for backward while the step's forward pass runs, counted with
  `torch.autograd.graph.saved_tensors_hooks`. Each storage counts once; parameters are excluded (they exist
  whatever the depth). Device-independent and deterministic for a fixed batch and solver trajectory.
- `peak_memory`: the step's peak allocated memory above what was allocated when it started. On CUDA,
  `torch.cuda.max_memory_allocated`; on CPU, the running sum of allocations minus frees recorded by PyTorch's
  profiler (`profile_memory=True`), ordered by time: the same quantity, from the CPU allocator's events.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import warnings
import weakref
from typing import Callable

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class SavedTensorMeter(contextlib.AbstractContextManager):
    """Counts the bytes of distinct storages autograd saves for backward inside the `with` block and still holds at
    its end. Tensors saved by a graph made and dropped inside the block (a vector field that takes a gradient inside
    an adjoint's no-grad forward solve) are not activations kept for the backward pass; their memory is reused by
    later ones, so counting them by address would also make the count depend on the allocator."""

    def __init__(self, exclude: nn.Module | None = None):
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude else set()
        self.bytes = 0
        self.by_shape: dict[str, tuple[int, int]] = {}   # "64x6x6" -> (tensors, bytes) of the distinct storages
        self._saved: list = []                           # (weak reference to a saved tensor, its shape key)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor):
        try:
            t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return t
        self._saved.append((weakref.ref(t), "x".join(map(str, t.shape)) or "scalar"))
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        seen = set()
        for ref, key in self._saved:   # the graph holds what it saved: a dead reference was dropped with its graph
            t = ref()
            if t is None:
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in seen or ptr in self.exclude:
                continue
            seen.add(ptr)
            self.bytes += storage.nbytes()
            n, b = self.by_shape.get(key, (0, 0))
            self.by_shape[key] = (n + 1, b + storage.nbytes())
        self._saved.clear()
        return False


def _saved(model: nn.Module, forward: Callable[[], torch.Tensor]) -> SavedTensorMeter:
    with SavedTensorMeter(exclude=model) as meter:
        loss = forward()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return meter


def activation_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Run forward + backward once; return the bytes saved for backward during forward."""
    return _saved(model, forward).bytes


def saved_by_shape(model: nn.Module, forward: Callable[[], torch.Tensor], top: int = 4) -> str:
    """Run forward + backward once; the `top` largest groups of saved tensors by shape, as one line."""
    biggest = sorted(_saved(model, forward).by_shape.items(), key=lambda kv: -kv[1][1])[:top]
    return "; ".join(f"{n} x [{k}] {b / 2**20:.2f} MiB" for k, (n, b) in biggest)


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null for the block (C++ libraries write there directly)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_memory(model: nn.Module, forward: Callable[[], torch.Tensor], device: torch.device) -> int:
    """Run forward + backward once; return the peak bytes allocated above the starting level."""
    model.zero_grad(set_to_none=True)
    gc.collect()   # tensors in garbage cycles freed inside the window would lower the count at a random moment
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward().backward()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
    else:
        from torch.profiler import ProfilerActivity, profile

        with warnings.catch_warnings(), _quiet_stderr():   # the C++ profiler logs to fd 2
            warnings.simplefilter("ignore")
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                forward().backward()
        level = peak = 0
        for event in sorted(prof.events(), key=lambda e: e.time_range.start):
            level += event.self_cpu_memory_usage
            peak = max(peak, level)
    model.zero_grad(set_to_none=True)
    return int(peak)


def peak_memory_method(device: torch.device) -> str:
    return "cuda.max_memory_allocated" if device.type == "cuda" else "profiler.cpu_memory_events"
