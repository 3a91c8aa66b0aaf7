"""The training loop every experiment family shares.

A family supplies a *task* (the `Task` protocol below). `fit` adds what every run records: NFE-F/NFE-B per step,
seconds per step, activation bytes and peak memory, metrics.jsonl lines, atomic checkpoints, and the run's status
when the solver fails mid-run.

Run length, the same for every family: `trainer.max_steps`, when set, is the number of optimizer steps of the run
(as many epochs as that takes); when null, the run is `trainer.epochs` epochs. An epoch is one pass over the
training split as the family defines it (`steps_per_epoch()`): MNIST, len(train) // batch; spirals, one
full-batch iteration; flows, which draw fresh samples every step, the whole run.
"""
from __future__ import annotations

import math
import time
from typing import Iterable, Protocol

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from . import measure
from .checks import one_line
from .rundir import RunDir
from .solve import nfe, nfe_note


class Task(Protocol):
    """What a family gives the training loop."""
    model: torch.nn.Module                    # the module being trained
    batch_size: int                           # examples per training step (for examples/s)

    def steps_per_epoch(self) -> int: ...     # optimizer steps in one pass over the training split
    def train_batches(self, epoch: int) -> Iterable: ...   # that epoch's batches
    def loss(self, batch) -> torch.Tensor: ...             # the scalar training loss of a batch
    def evaluate(self, limit: int | None) -> dict: ...     # test metrics; limit caps test examples (None: all)
    def memory_batch(self): ...               # a fixed training batch for the memory measurement
    def finish(self, run: RunDir) -> dict: ...  # figures and extra summary fields, after the final evaluation


class SolverFailure(RuntimeError):
    """The loss or the solve stopped being finite."""


FAILURES = (AssertionError, RuntimeError, FloatingPointError)  # torchdiffeq signals underflow by AssertionError


def make_optimizer(t, params):
    lr = t.lr * (t.batch_size / t.lr_batch_denom if t.get("lr_batch_denom") else 1.0)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=t.weight_decay)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=t.weight_decay)


def make_scheduler(t, optimizer, total: int):
    """(scheduler, per_step). `multistep`: lr x gamma at each epoch in milestones, stepped once per epoch;
    `cosine`: lr falls along half a cosine to lr x min_lr_ratio at the run's last optimizer step, stepped every step."""
    if t.get("schedule", "multistep") == "cosine":
        eta_min = optimizer.param_groups[0]["lr"] * t.get("min_lr_ratio", 0.0)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min), True
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(t.milestones), t.gamma), False


def _finite(values: dict) -> bool:
    return all(math.isfinite(v) for v in values.values() if isinstance(v, (int, float)))


def fit(cfg, task, run: RunDir, device: torch.device) -> dict:
    model, t = task.model, cfg.trainer
    optimizer = make_optimizer(t, model.parameters())
    total = t.max_steps or t.epochs * task.steps_per_epoch()
    scheduler, per_step = make_scheduler(t, optimizer, total)

    step, epoch, status, error = 0, 0, "ok", None
    last_eval: dict = {}
    totals = dict(loss=0.0, steps=0, nfe_f=0, nfe_b=0, time=0.0)   # the whole run
    window = dict(totals)                                           # since the last metrics line
    started = time.time()

    def evaluate(final: bool):
        nonlocal last_eval
        result = task.evaluate(None if final else t.eval_limit)
        n = max(window["steps"], 1)
        row = dict(step=step, epoch=epoch, train_loss=window["loss"] / n, **result,
                   nfe_forward=window["nfe_f"] / n, nfe_backward=window["nfe_b"] / n,
                   sec_per_step=window["time"] / n, lr=optimizer.param_groups[0]["lr"],
                   wall_time=time.time() - started, final=final)
        run.log(row)
        window.update(loss=0.0, steps=0, nfe_f=0, nfe_b=0, time=0.0)
        if _finite(result):
            last_eval = result
            run.save_checkpoint(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), step=step,
                                     epoch=epoch, metrics=result, config=OmegaConf.to_container(cfg)))
        return result

    bar = tqdm(total=total, desc=cfg.name, disable=not t.progress, dynamic_ncols=True)
    try:
        while step < total:
            for batch in task.train_batches(epoch):
                f0, b0 = nfe(model)
                tic = time.perf_counter()
                loss = task.loss(batch)
                if not torch.isfinite(loss):
                    raise SolverFailure(f"non-finite training loss at step {step + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if per_step:
                    scheduler.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                f1, b1 = nfe(model)
                value = loss.item()
                for acc in (window, totals):
                    acc["time"] += time.perf_counter() - tic
                    acc["loss"] += value
                    acc["steps"] += 1
                    acc["nfe_f"] += f1 - f0
                    acc["nfe_b"] += b1 - b0
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", nfe_f=f1 - f0, nfe_b=b1 - b0)
                if step >= total:
                    break
                if t.eval_every and step % t.eval_every == 0:
                    evaluate(final=False)
            if step % task.steps_per_epoch() == 0:   # a whole epoch done (not cut short by max_steps)
                epoch += 1
                if not per_step:
                    scheduler.step()
                if step < total and not t.eval_every:
                    evaluate(final=False)
    except KeyboardInterrupt:
        status, error = "interrupted", "stopped by the user (Ctrl-C)"
    except FAILURES as exc:
        status, error = "failed", f"{type(exc).__name__}: {one_line(exc)}"
    finally:
        bar.close()

    if status == "ok":
        try:
            evaluate(final=True)
        except FAILURES as exc:
            status, error = "failed", f"final evaluation: {type(exc).__name__}: {one_line(exc)}"

    summary = dict(last_eval)
    n = max(totals["steps"], 1)
    summary.update(
        status=status, error=error, steps=step, epochs=epoch,
        nfe_forward=totals["nfe_f"] / n, nfe_backward=totals["nfe_b"] / n, nfe_backward_note=nfe_note(model),
        sec_per_step=totals["time"] / n,
        examples_per_sec=totals["steps"] * getattr(task, "batch_size", t.batch_size) / max(totals["time"], 1e-9),
        wall_time=time.time() - started,
    )
    if status == "ok":
        try:
            summary.update(measure_memory(task, device))
        except FAILURES as exc:
            summary["memory_error"] = f"{type(exc).__name__}: {one_line(exc)}"
        summary.update(task.finish(run) or {})
    return summary


def measure_memory(task, device: torch.device) -> dict:
    """Activation bytes and peak memory of one training step (forward + backward, no update) on a fixed batch."""
    model, batch = task.model, task.memory_batch()
    f0, _ = nfe(model)
    act = measure.activation_bytes(model, lambda: task.loss(batch))
    f1, _ = nfe(model)
    peak = measure.peak_memory(model, lambda: task.loss(batch), device)
    return dict(activation_bytes=act, peak_memory_bytes=peak, peak_memory_method=measure.peak_memory_method(device),
                memory_step_nfe_forward=f1 - f0)
