"""What an experiment family gives the rest of node-run: one `Family` object in its package's `__init__.py`.

The runner, node-report and node-bench know families only through these fields (and `families.FAMILIES`, the
registry). Heavy modules (models, plots, report sections) are imported inside the callables, so listing the
families stays cheap.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable


def lazy(target: str) -> Callable:
    """A function that imports `module:attr` on its first call and calls it: families name their heavy parts
    (models, plots, report sections) this way, so listing the families imports none of them."""
    module, attr = target.split(":")

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = attr
    return call


@dataclass(frozen=True)
class BenchSpec:
    """`node-bench families`: train `experiment` at trainer=quick twice, as configured and with `reference`
    overrides (the reference script's solver tolerance), and compare the cost of reaching the first run's
    final `metric` (lower is better)."""
    experiment: str
    reference: tuple[str, ...]
    metric: str


@dataclass(frozen=True)
class ContentionSpec:
    """`node-bench contention`: the training step of `experiment` (with `overrides`, and `from_args(args)`: overrides
    taken from node-bench's options, e.g. a data folder) is timed idle and beside busy processes; `default`: one of
    the families measured when --families is not given."""
    experiment: str
    overrides: tuple[str, ...] = ()
    default: bool = True
    from_args: Callable = lambda args: ()


@dataclass(frozen=True)
class ReferenceLoop:
    """One row of `node-bench reference`: a plain loop written the way the family's reference script writes it
    (odeint called directly, a Python NFE counter, the script's optimizer and trace) on node-run's field
    architecture, initial weights and batches, timed against node-run's own training step on the same batches."""
    cfg: object          # node-run's config of the row (its solver settings are the ones both solve at)
    task: object         # node-run's task, as `fit` trains it (model, loss)
    batches: list        # the training batches both loops take, in order
    step: Callable       # the reference loop's training step: (batch) -> (loss, nfe_forward, nfe_backward)
    settings: str        # what the reference loop does differently, in words (optimizer, trace, adjoint)


@dataclass(frozen=True)
class BenchCommand:
    """A `node-bench NAME` command of a family. `add_arguments(parser)` adds its options (names must not clash
    with other families'); `run(args, device, out, log)` measures and returns Markdown sections, having written
    its tables under `out`; `default`: part of plain `node-bench`."""
    help: str
    add_arguments: Callable
    check_arguments: Callable
    run: Callable
    default: bool = False


@dataclass(frozen=True)
class Family:
    name: str                                   # its folder under node_cli/families/, the config's `task`
    models: tuple[str, ...]                     # model.name values it builds
    build: Callable                             # (cfg, device) -> a core.train.Task
    check: Callable                             # (cfg) -> None; ConfigError on a bad model or dataset key
    experiment_of: Callable                     # (core.runs.Run) -> the experiment file of its paper setting
    sections: Callable = lambda: ()             # () -> report sections, each (core.page.Page) -> None
    bench: BenchSpec | None = None              # its row of `node-bench families`
    contention: ContentionSpec | None = None    # its rows of `node-bench contention`
    bench_commands: Callable = lambda: {}       # () -> {name: BenchCommand}
    tools: Callable = lambda: {}                # () -> {name: main(argv)}: `node-report NAME ...`
    # `node-bench reference`: () -> {row: build(configure, device, seed, batches) -> ReferenceLoop}
    reference: Callable = lambda: {}
    headline: tuple = ()                        # summary keys of its headline metric, first present wins (lower is better)
    extras: dict = field(default_factory=dict)  # anything else a family wants to publish
    # threads=auto: torch threads of its runs (None: every core). One by default: the small models of spirals,
    # flows and dynamics run fastest on one thread (node-bench contention, docs/tools/bench.md)
    threads: int | None = 1
