"""The training loop every experiment family shares.

A family supplies a *task* (the `Task` protocol below). `fit` adds what every run records: the meter's per-step
and evaluation measurements (core/meter.py: NFE-F/NFE-B, solver steps, seconds per step, evaluation NFE per solve),
activation bytes and peak memory, metrics.jsonl lines, atomic checkpoints, and the run's status when the solver
fails mid-run or the run is stopped. `Loop` is the control flow only.

Run length, the same for every family: `trainer.max_steps`, when set, is the number of optimizer steps of the run
(as many epochs as that takes); when null, the run is `trainer.epochs` epochs. An epoch is one pass over the
training split as the family defines it (`steps_per_epoch()`): MNIST, len(train) // batch; spirals, one
full-batch iteration; flows, which draw fresh samples every step, the whole run.

Stopping and resuming. SIGTERM (what schedulers send), SIGINT (Ctrl-C) and the scheduler's preemption signal are
caught: the loop stops at the end of the current step, saves a checkpoint of that step and ends with status
`interrupted` (a second Ctrl-C stops at once). A request that comes while the step is inside a solve stops the solve
at its next evaluation of the vector field (core/solve.py): that step is dropped and the state before it saved, as
it was (a diverged model can crawl inside one solve for hours). During the final evaluation a signal stops at once:
training is complete, its last step is saved as a final checkpoint, and resuming makes the final evaluation.
Every checkpoint holds what continuing needs (core/runs.py STATE_KEYS: model, optimizer, scheduler, counters,
running totals, every random generator, the task's own record such as the frames of its figures), so
`fit(..., resume=checkpoint)` continues the run exactly: a run of 2N steps and a run stopped at N and resumed end
with the same weights and metrics. A final checkpoint whose run has no summary (killed while drawing its figures)
resumes into the final phase: evaluation, figures, summary.
"""
from __future__ import annotations

import itertools
import logging
import math
import re
import signal
import time
import warnings
from dataclasses import dataclass
from typing import Iterable, Protocol

import torch
from omegaconf import OmegaConf
from . import measure, stop
from .checks import one_line
from .meter import Count, Meter
from .progress import bar as progress_bar
from .rundir import METRICS, RunDir
from .runs import FORMAT
from .solve import nfe_note


class Task(Protocol):
    """What a family gives the training loop."""
    model: torch.nn.Module                    # the module being trained
    batch_size: int                           # examples per training step (for examples/s)

    def steps_per_epoch(self) -> int: ...     # optimizer steps in one pass over the training split
    def train_batches(self, epoch: int) -> Iterable: ...   # that epoch's batches
    def generators(self) -> list: ...         # the torch.Generators its batches draw from (optional; checkpointed)
    def loss(self, batch) -> torch.Tensor: ...             # the scalar training loss of a batch
    def evaluate(self, limit: int | None) -> dict: ...     # test metrics; limit caps test examples (None: all)
    def memory_batch(self): ...               # a fixed training batch for the memory measurement
    def finish(self, run: RunDir) -> dict: ...  # figures and extra summary fields, after the final evaluation
    def state(self) -> dict: ...              # what finish() needs of earlier evaluations (optional; checkpointed)
    def load_state(self, state: dict): ...    # that record back, from a checkpoint (optional)


class SolverFailure(RuntimeError):
    """The loss or the solve stopped being finite."""


log = logging.getLogger("node_run")
FAILURES = (AssertionError, RuntimeError, FloatingPointError)  # torchdiffeq signals underflow by AssertionError
_END = object()


def make_optimizer(t, params, batch: int | None = None):
    """`batch`: the examples a step really uses (a task caps trainer.batch_size at its training split's size);
    the lr is scaled by it when trainer.lr_batch_denom is set."""
    lr = t.lr * ((batch or t.batch_size) / t.lr_batch_denom if t.get("lr_batch_denom") else 1.0)
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


def run_length(cfg, task) -> int:
    """Optimizer steps of the run: trainer.max_steps when set, else trainer.epochs epochs."""
    return cfg.trainer.max_steps or cfg.trainer.epochs * task.steps_per_epoch()


def _finite(values: dict) -> bool:
    return all(math.isfinite(v) for v in values.values() if isinstance(v, (int, float)))


def _rng_state() -> dict:
    state = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Replay:
    """Where the loop stands between two steps beyond its counters, in every checkpoint, so that a resumed run does
    next exactly what a run never stopped did. `train` replays a checkpoint's in this order:
    1. `owed`: the checkpoint is a finished run's final one and the budget is now larger. The longer run made an
       intermediate evaluation after that step, not the final one, and if the step ended an epoch it ended it after
       that evaluation: `pre_end` (the epoch, schedule and lrs before the last step's epoch end) undoes the end so
       that it is redone in that order.
    2. `pending`: stopped right after a step, before what follows a step (the evaluation due, the epoch's end).
    3. `skip`: batches of the current epoch already trained: the task's generators go back to the epoch's start
       (`epoch_rng`) and its first `skip` batches are drawn again and dropped, then the global random state of the
       checkpoint comes back.
    """
    epoch_rng: list | None = None   # the task's generators at the start of the current epoch
    pre_end: dict | None = None     # before the last step's epoch end (written when the run's last step ends one)
    skip: int = 0
    owed: bool = False
    pending: bool = False


class Loop:
    """One run's training: its control flow and state (counters, optimizer, scheduler, replay state); what it
    measures is its meter's (core/meter.py)."""

    def __init__(self, cfg, task, run: RunDir, device: torch.device):
        self.cfg, self.task, self.run, self.device = cfg, task, run, device
        self.model, self.t = task.model, cfg.trainer
        batch = getattr(task, "batch_size", None)
        if batch is not None and batch < self.t.batch_size:
            log.warning("trainer.batch_size=%s is larger than the training split: each step uses all %s examples%s",
                        self.t.batch_size, batch, f" and the lr is scaled by {batch}/{self.t.lr_batch_denom}"
                        if self.t.get("lr_batch_denom") else "")
        self.optimizer = make_optimizer(self.t, self.model.parameters(), batch)
        self.total = run_length(cfg, task)
        self.scheduler, self.per_step = make_scheduler(self.t, self.optimizer, self.total)
        self.step = self.epoch = self.in_epoch = 0   # in_epoch: steps done in the current epoch
        self.last_eval: dict = {}
        self.last_eval_step = None
        self.meter = Meter(self.model, device)
        self.replay = Replay()
        self.elapsed = 0.0                              # wall seconds of earlier processes (resumed runs)
        self.started = time.time()
        self.mark = None                                # the state between steps, while a step runs (stop.Stopped)

    # ------------------------------------------------------------------------------------------- checkpoints
    def schedule_state(self) -> dict:
        """The lr scheduler's state as plain data (MultiStepLR keeps its milestones in a Counter)."""
        return {k: (dict(v) if k == "milestones" else v) for k, v in self.scheduler.state_dict().items()}

    def load_schedule(self, state: dict) -> None:
        from collections import Counter

        state = dict(state)
        if "milestones" in state:
            state["milestones"] = Counter(state["milestones"])
        self.scheduler.load_state_dict(state)

    def state(self, final: bool, window: dict | None = None, pending: bool = False, task: dict | None = None) -> dict:
        """The checkpoint: `window`, the meter's window to save (None: as it is now)."""
        return dict(format=FORMAT, pending=pending, model=self.model.state_dict(),
                    optimizer=self.optimizer.state_dict(), scheduler=self.schedule_state(), pre_end=self.replay.pre_end,
                    step=self.step, epoch=self.epoch, in_epoch=self.in_epoch, final=final,
                    metrics=self.last_eval, metrics_step=self.last_eval_step, **self.meter.state(window),
                    wall_time=self.wall(), rng=_rng_state(), epoch_rng=self.replay.epoch_rng,
                    generators=[g.get_state() for g in self.generators()],
                    task=self.task_state() if task is None else task, config=OmegaConf.to_container(self.cfg))

    def task_state(self) -> dict:
        return self.task.state() if hasattr(self.task, "state") else {}

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint of this run (same config but perhaps a larger budget)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.load_schedule(ckpt["scheduler"])
        self.step, self.epoch, self.in_epoch = ckpt["step"], ckpt["epoch"], ckpt["in_epoch"]
        self.last_eval, self.last_eval_step = dict(ckpt["metrics"] or {}), ckpt.get("metrics_step")
        self.meter.load_state(ckpt)
        self.elapsed, self.started = float(ckpt["wall_time"]), time.time()
        self.replay = Replay(epoch_rng=ckpt["epoch_rng"], pre_end=ckpt["pre_end"], skip=self.in_epoch,
                             owed=bool(ckpt["final"]), pending=bool(ckpt["pending"]))
        for g, state in zip(self.generators(), ckpt["generators"]):
            g.set_state(state)
        if ckpt.get("task") and hasattr(self.task, "load_state"):
            self.task.load_state(ckpt["task"])
        # metrics lines after the checkpoint (and a finished run's final line) belong to the old ending
        self.run.truncate(self.step, drop_final=True)
        _set_rng_state(ckpt["rng"])

    def generators(self) -> list:
        return self.task.generators() if hasattr(self.task, "generators") else []

    def wall(self) -> float:
        return self.elapsed + time.time() - self.started

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, final: bool) -> dict:
        kept = self.task_state() if final else None   # a final checkpoint keeps the task as before its evaluation
        limit = self.t.get("final_eval_limit") if final else self.t.eval_limit
        result = self.meter.evaluation(lambda: self.task.evaluate(limit))
        before = dict(self.meter.window)
        means = self.meter.row()
        row = dict(step=self.step, epoch=self.epoch, train_loss=means.pop("train_loss"), **result, **means,
                   lr=self.optimizer.param_groups[0]["lr"], wall_time=self.wall(), final=final)
        self.run.log(row)
        log.info("evaluation at step %d%s: %s", self.step, " (final)" if final else "",
                 ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
        if _finite(result):
            self.last_eval, self.last_eval_step = result, self.step
            # a final checkpoint keeps the window before its line: a longer budget resumes from just before it
            self.run.save_checkpoint(self.state(final, before if final else None, task=kept))
        return result

    def after_step(self) -> None:
        """The intermediate evaluation due after this step, if any (not after the run's last step)."""
        if self.t.eval_every and self.step % self.t.eval_every == 0:
            self.evaluate(final=False)

    def end_of_epoch(self) -> None:
        self.epoch, self.in_epoch = self.epoch + 1, 0
        if not self.per_step:
            with warnings.catch_warnings():   # a resumed run may end an epoch before its first optimizer step here
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                self.scheduler.step()
        if self.step < self.total and not self.t.eval_every:
            self.evaluate(final=False)

    # ---------------------------------------------------------------------------------------------- steps
    def train_step(self, batch) -> float:
        """One optimizer step on `batch`, measured by the meter; returns its loss."""
        value = self.meter.step(lambda: self.update(batch))
        self.step += 1
        self.in_epoch += 1
        return value

    def update(self, batch) -> float:
        with stop.droppable():   # until the update, a stop request ends the step's solves (the step is dropped)
            loss = self.task.loss(batch)
            if not torch.isfinite(loss):
                raise SolverFailure(f"non-finite training loss at step {self.step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        if self.per_step:
            self.scheduler.step()
        return loss.item()

    def batches(self):
        """This epoch's batches from where the run stands: a resumed run replays the epoch's draws up to its step
        (so every generator is where it was), then gets the global random state of its checkpoint back."""
        gens, replay = self.generators(), self.replay
        if replay.skip == self.task.steps_per_epoch():   # stopped at the epoch's last step: nothing left of it
            replay.skip = 0
            return iter(())
        if replay.skip:
            for g, s in zip(gens, replay.epoch_rng):
                g.set_state(s)
            rng = _rng_state()
            batches = iter(self.task.train_batches(self.epoch))
            for _ in itertools.islice(batches, replay.skip):
                pass
            _set_rng_state(rng)
            replay.skip = 0
            return batches
        replay.epoch_rng = [g.get_state() for g in gens]
        return iter(self.task.train_batches(self.epoch))

    def marked(self, batches):
        """`batches`, noting before each draw the random state between steps (`self.mark`): a step dropped by a
        stop inside its solve is saved as the step before it, exactly (the generators replay from the epoch's)."""
        while True:
            self.mark = _rng_state(), (self.replay.epoch_rng if self.in_epoch == 0 else
                                       [g.get_state() for g in self.generators()])
            batch = next(batches, _END)
            if batch is _END:
                return
            yield batch

    def train(self, watcher) -> tuple[str, str | None]:
        """Train to the end of the budget or until stopped: (status, error)."""
        bar = progress_bar(total=self.total, initial=self.step, desc=self.cfg.name, enabled=self.t.progress)
        try:
            replay = self.replay
            if replay.owed and self.step < self.total:   # a finished run given a larger budget: do what a
                replay.owed = False                         # longer run did after this step
                self.continue_finished()
            if replay.pending:   # stopped right after a step: what the loop had not done yet after it
                replay.pending = False
                if self.step < self.total:
                    self.after_step()
                elif self.in_epoch == self.task.steps_per_epoch():
                    self.close_epoch()
            while self.step < self.total:
                for batch in self.marked(self.batches()):
                    value = self.train_step(batch)
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.3f}")
                    if watcher.requested:
                        return self.interrupt(watcher)
                    if self.step >= self.total:
                        break
                    self.after_step()
                if self.in_epoch == self.task.steps_per_epoch():   # a whole epoch done (not cut by max_steps)
                    self.close_epoch()
            if watcher.requested:
                return self.interrupt(watcher)
            return "ok", None
        except stop.Stopped:
            return self.drop_step(watcher)
        except KeyboardInterrupt:
            kept = f"the last checkpoint is from step {self.last_eval_step}" if self.last_eval_step is not None \
                else "no checkpoint yet"
            return "interrupted", f"stopped at once by a second Ctrl-C during step {self.step + 1} ({kept})"
        except FAILURES as exc:
            return "failed", f"{type(exc).__name__}: {one_line(exc)}"
        finally:
            bar.close()

    def close_epoch(self) -> None:
        if self.step >= self.total:   # the run's last step: remember what a longer run would see here
            self.replay.pre_end = dict(epoch=self.epoch, in_epoch=self.in_epoch, scheduler=self.schedule_state(),
                                lrs=[g["lr"] for g in self.optimizer.param_groups])
        self.end_of_epoch()

    def continue_finished(self) -> None:
        """A finished run's last step was followed by its final evaluation; a longer run goes on instead. If that
        step ended an epoch (still an epoch end in the new budget: flows count the whole run as one epoch), undo
        the epoch end and redo it as a longer run does, after its evaluation; else just make that evaluation."""
        pre_end = self.replay.pre_end
        if pre_end is None:
            self.after_step()
            return
        self.epoch, self.in_epoch = pre_end["epoch"], pre_end["in_epoch"]
        self.load_schedule(pre_end["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, pre_end["lrs"]):
            group["lr"] = lr
        self.replay.pre_end = None
        self.after_step()
        if self.in_epoch == self.task.steps_per_epoch():
            self.end_of_epoch()
        else:
            self.replay.skip = self.in_epoch

    def drop_step(self, watcher) -> tuple[str, str]:
        """Stopped inside a solve of step k + 1 (before its update): save step k as it was, random state included."""
        rng, generators = self.mark
        self.run.save_checkpoint(dict(self.state(False), rng=rng, generators=generators))
        return "interrupted", (f"stopped by {watcher.name} inside a solve of step {self.step + 1}: that step is "
                               f"dropped; checkpoint of step {self.step} saved (continue with: node-run "
                               f"resume={self.run.path})")

    def interrupt(self, watcher) -> tuple[str, str]:
        self.run.save_checkpoint(self.state(False, pending=True))
        return "interrupted", (f"stopped by {watcher.name} after step {self.step}; checkpoint of that step saved "
                               f"(continue with: node-run resume={self.run.path})")


def fit(cfg, task, run: RunDir, device: torch.device, resume: dict | None = None) -> dict:
    """Train `task` as `cfg` says into `run` (continuing from the checkpoint `resume`); returns the summary's
    training fields."""
    loop = Loop(cfg, task, run, device)
    if resume is not None:
        loop.restore(resume)
    elif (run.path / METRICS).is_file():
        run.truncate(0)   # a run started again from step 0 (stopped before its first checkpoint): a new log
    with stop.watch(immediate=False) as watcher:
        status, error = loop.train(watcher)
        evaluated = None
        if status == "ok":
            complete = loop.state(True)   # training done: what a stop during the evaluation saves
            try:
                with stop.watch(immediate=True):         # a signal stops the final evaluation at once
                    result = loop.evaluate(final=True)
                limit = cfg.trainer.get("final_eval_limit")
                evaluated = "final: the whole test set" if limit is None else \
                    f"final, limited to trainer.final_eval_limit={limit} test examples (not a result)"
                if not _finite(result):
                    status, error = "failed", ("final evaluation is not finite: " + ", ".join(
                        f"{k}={v}" for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)))
                loop.last_eval = result
            except KeyboardInterrupt:
                run.save_checkpoint(complete)
                name = signal.Signals(stop.last_signal).name if stop.last_signal else "a signal"
                status, error = "interrupted", (
                    f"stopped by {name} during the final evaluation; training is complete and saved (step "
                    f"{loop.step}): node-run resume={run.path} makes the final evaluation, figures and summary")
            except FAILURES as exc:
                status, error = "failed", f"final evaluation: {type(exc).__name__}: {one_line(exc)}"
    summary = dict(loop.last_eval)
    if evaluated is None and loop.last_eval_step is not None:
        evaluated = f"intermediate, at step {loop.last_eval_step} (trainer.eval_limit test examples)"
    batch = getattr(task, "batch_size", cfg.trainer.batch_size)   # as really used
    summary.update(status=status, error=error, steps=loop.step, epochs=loop.epoch, evaluation=evaluated,
                   **loop.meter.summary(batch), nfe_backward_note=nfe_note(task.model), wall_time=loop.wall(),
                   batch_size=batch)
    if status == "ok":
        try:
            try:
                if cfg.trainer.get("measure_memory", True):
                    summary.update(measure_memory(task, device))
            except FAILURES as exc:
                summary["memory_error"] = f"{type(exc).__name__}: {one_line(exc)}"
            if cfg.trainer.get("figures", True):
                summary.update(task.finish(run) or {})
            else:
                summary.update(figures=[], figures_note="skipped: trainer.figures=false")
        except KeyboardInterrupt:
            summary.update(status="interrupted", error="stopped while measuring memory or drawing the figures "
                                                      "(training and the final evaluation were complete): "
                                                      f"node-run resume={run.path} makes the final evaluation again, "
                                                      "then the figures and the summary")
    return summary


def measure_memory(task, device: torch.device) -> dict:
    """Activation bytes and peak memory of one training step (forward + backward, no update) on a fixed batch."""
    model, batch = task.model, task.memory_batch()
    with Count(model) as counted:
        act = measure.activation_bytes(model, lambda: task.loss(batch))
    peak = measure.peak_memory(model, lambda: task.loss(batch), device)
    return dict(activation_bytes=act, peak_memory_bytes=peak, peak_memory_method=measure.peak_memory_method(device),
                memory_step_nfe_forward=counted.nfe_forward)
