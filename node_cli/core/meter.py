"""What a run measures of its ODE blocks, defined once.

`Count` is the one way to measure a stretch of work: `with Count(model) as c: ...` gives what the model's ODE blocks
did inside the block (core/solve.py counts every evaluation of every vector field and every solver step):
`nfe_forward`, `nfe_backward`, `solver_accepted`, `solver_rejected` (forward solves' steps), `solves` (forward
solves) and `solver_min_dt` (the smallest accepted forward step). `per_solve` is NFE-F per forward solve.
A count made with `aside=True` inside another count measures its own work and takes it out of the enclosing one
(a flow's sampling solves, measured apart from its likelihood solves in the same evaluation).

`Meter` is what the training loop measures with it, for every family alike:
- around each training step: the per-step metrics below, summed into a window (since the last metrics line) and
  into the whole run's totals; the metrics line and the summary report each as its mean per step;
- around each evaluation: `eval_nfe_forward`, the evaluation's forward evaluations per forward solve (MNIST: per
  batch of test images; flows: per chunk of test points; spirals: averaged over its encoder, forecast and
  reconstruction solves; dynamics: its one solve), whatever the family;
- its state (window and totals) in the checkpoint, versioned, so a resumed run's lines and summary are those of a
  run never stopped.
A new per-step metric read from the blocks is one entry of `READ`.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .solve import ODEBlock

# The blocks' cumulative counters, by the name their per-step mean has in metrics.jsonl and summary.json.
READ = dict(
    nfe_forward=lambda b: b.nfe_forward,          # evaluations in the forward solves (NFE-F)
    nfe_backward=lambda b: b.nfe_backward,        # evaluations in the adjoint's backward solves (NFE-B)
    solver_accepted=lambda b: b.steps_accepted,   # accepted steps of the forward solves
    solver_rejected=lambda b: b.steps_rejected,   # rejected steps of the forward solves
    solves=lambda b: b.solves,                    # forward solves
)
# The per-step metrics: the training loss, the counters above (but `solves`), the step's wall time; each reported as
# its mean per step. `solver_min_dt` (the smallest accepted forward step) is reported as the smallest instead.
PER_STEP = ("train_loss", *(k for k in READ if k != "solves"), "sec_per_step")
STATE_VERSION = 1
_ASIDE: list["Count"] = []   # the open counts, innermost last


def blocks(model: nn.Module) -> list[ODEBlock]:
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


class Count:
    """What the ODE blocks of `model` (a module, or a list of blocks found once) do inside a `with` block."""

    def __init__(self, model: nn.Module | list, aside: bool = False):
        self.blocks = blocks(model) if isinstance(model, nn.Module) else model
        self.aside = aside
        self.excluded = dict.fromkeys(READ, 0)   # what counts made aside inside this one did
        self.solver_min_dt = None

    def _read(self) -> dict:
        return {k: sum(read(b) for b in self.blocks) for k, read in READ.items()}

    def __enter__(self):
        # each block keeps a running minimum of its steps: start a new one here, give the old one back on exit
        self._min_before = [b.min_dt for b in self.blocks]
        for b in self.blocks:
            b.min_dt = None
        _ASIDE.append(self)
        self._start = self._read()
        return self

    def __exit__(self, *exc):
        end = self._read()
        _ASIDE.remove(self)
        for k in READ:
            setattr(self, k, end[k] - self._start[k] - self.excluded[k])
        lows = [b.min_dt for b in self.blocks if b.min_dt is not None]
        self.solver_min_dt = float(min(lows)) if lows else None
        for b, before in zip(self.blocks, self._min_before):
            b.min_dt = _lower(before, b.min_dt)
        if self.aside and _ASIDE:
            for k in READ:
                _ASIDE[-1].excluded[k] += getattr(self, k)
        return False

    @property
    def per_solve(self) -> float:
        """Forward evaluations per forward solve (0.0 without a solve)."""
        return self.nfe_forward / self.solves if self.solves else 0.0


def _zeros() -> dict:
    return dict(steps=0, **dict.fromkeys(PER_STEP, 0), solver_min_dt=None)


def _lower(a, b):
    return b if a is None else a if b is None else min(a, b)


# The checkpoint keeps the sums under these names (format 2, unchanged since before the meter, so a checkpoint stays
# readable by every node-run that writes format 2); a metric not listed is kept under its own name.
STORED = dict(train_loss="loss", nfe_forward="nfe_f", nfe_backward="nfe_b", solver_accepted="solver_acc",
              solver_rejected="solver_rej", sec_per_step="time")


class Meter:
    """The measurements of one run (see the module's docstring): `window` since the last metrics line and `totals`
    of the whole run, each the sums of the per-step metrics and the number of steps."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.blocks = blocks(model)   # found once per run
        self.device = device
        self.window, self.totals = _zeros(), _zeros()

    def step(self, train_step):
        """Run `train_step()` (a training step returning its loss value) and add what it measured."""
        with Count(self.blocks) as c:
            tic = time.perf_counter()
            loss = train_step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - tic
        one = dict(steps=1, train_loss=loss, sec_per_step=seconds, **{k: getattr(c, k) for k in PER_STEP if k in READ})
        for sums in (self.window, self.totals):
            for k, v in one.items():
                sums[k] += v
            sums["solver_min_dt"] = _lower(sums["solver_min_dt"], c.solver_min_dt)
        return loss

    def evaluation(self, evaluate) -> dict:
        """`evaluate()`'s metrics, with `eval_nfe_forward`: its forward evaluations per forward solve."""
        with Count(self.blocks) as c:
            result = evaluate()
        return dict(result, eval_nfe_forward=c.per_solve)

    @staticmethod
    def means(sums: dict) -> dict:
        n = max(sums["steps"], 1)
        return dict({k: sums[k] / n for k in PER_STEP}, solver_min_dt=sums["solver_min_dt"])

    def row(self) -> dict:
        """The window's per-step means for a metrics line; a new window starts."""
        row, self.window = self.means(self.window), _zeros()
        return row

    def summary(self, batch_size: int) -> dict:
        """The whole run's per-step means, and examples per second, for summary.json."""
        out = self.means(self.totals)
        del out["train_loss"]
        out["examples_per_sec"] = self.totals["steps"] * batch_size / max(self.totals["sec_per_step"], 1e-9)
        return out

    def state(self, window: dict | None = None) -> dict:
        """The checkpoint's keys for the meter: `totals` and `window` (None: the window as it is now), as plain
        numbers under their stored names."""
        def stored(sums):
            return {STORED.get(k, k): v for k, v in sums.items()}
        return dict(meter_version=STATE_VERSION, totals=stored(self.totals),
                    window=stored(self.window if window is None else window))

    def load_state(self, ckpt: dict) -> None:
        """The sums back from a checkpoint (a metric it lacks, written before the metric existed, starts at 0)."""
        version = ckpt.get("meter_version", STATE_VERSION)
        if version != STATE_VERSION:
            raise ValueError(f"meter state version {version} (this node-run reads {STATE_VERSION})")
        for name in ("totals", "window"):
            sums = _zeros()
            sums.update({k: ckpt[name].get(STORED.get(k, k), sums[k]) for k in sums})
            setattr(self, name, sums)
