"""Timing inside a training step, and the facts about the machine that every benchmark table states.

`StepClock` splits a step's seconds into the vector field (its forward calls and the backward of each call, found
with autograd marks on the field's input and output) and the ODE solver's own work (the rest of the ODE block's
forward and backward); the rest of the step is whatever remains of its wall time.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def median(values):
    return statistics.median(values) if values else float("nan")


class _Mark(torch.autograd.Function):
    """Identity whose backward calls `callback`: marks when autograd reaches a tensor."""

    @staticmethod
    def forward(ctx, x, callback):
        ctx.callback = callback
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.callback()
        return grad, None


class StepClock:
    """Seconds spent in vector fields and in ODE blocks (forward and backward) while attached to a model."""

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.field = self.ode = 0.0
        self.handles = []

    def now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset(self) -> None:
        self.field = self.ode = 0.0

    def _timed(self, attr: str):
        """Forward pre/post hooks adding a module's forward time, and its backward time between two marks, to attr."""
        state = {}

        def add(seconds):
            setattr(self, attr, getattr(self, attr) + seconds)

        def pre(module, args):
            record = {"start": self.now(), "backward": None}
            state["record"] = record
            y = args[-1] if attr == "field" else args[0]
            if torch.is_grad_enabled() and isinstance(y, torch.Tensor) and y.requires_grad:
                def end():
                    if record["backward"] is not None:
                        add(self.now() - record["backward"])
                        record["backward"] = None
                y = _Mark.apply(y, end)
                return (*args[:-1], y) if attr == "field" else (y, *args[1:])
            return None

        def post(module, args, out):
            record = state.pop("record")
            add(self.now() - record["start"])
            if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
                def start():
                    record["backward"] = self.now()
                return _Mark.apply(out, start)
            return None

        return pre, post

    def attach(self, fields, blocks) -> None:
        for attr, modules in (("field", fields), ("ode", blocks)):
            for m in modules:
                pre, post = self._timed(attr)
                self.handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def environment(command: str, device: torch.device) -> dict:
    """The machine a measurement ran on: command, date, CPU, cores, torch threads, device, versions, load."""
    return dict(command=command, date=datetime.datetime.now().isoformat(timespec="seconds"),
                machine=_cpu_name(), cores=os.cpu_count(), threads=torch.get_num_threads(), device=str(device),
                cuda=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                torch=torch.__version__, python=platform.python_version(),
                load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(device: torch.device) -> dict:
    """What a reader needs to trust a run's numbers later: versions, commit, machine, command line, start time."""
    import socket
    import sys
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    commit = _git("rev-parse", "HEAD")
    return dict(node_run=version("node-run"), git_commit=commit,
                git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
                versions=dict(torch=torch.__version__, torchdiffeq=version("torchdiffeq"),
                              hydra_core=version("hydra-core"), python=platform.python_version()),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
                host=socket.gethostname(), threads=torch.get_num_threads(), command=" ".join(sys.argv),
                started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
