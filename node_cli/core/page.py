"""A report page being written (`Page`), and how a table cell chooses its runs: the building blocks that
node-report hands to each family's report sections.

A cell uses the runs whose model, solver and optimizer settings equal the paper setting (the experiment's config
file, the cell's own sweep key aside), finished ok, with the longest budget (most optimizer steps); several
seeds are averaged. Every other run is named beside the cell with the reason it was not used.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from . import tables
from .compose import experiment_defaults, flat
from .runs import Run

OPTIMIZER_KEYS = ("optimizer", "lr", "lr_batch_denom", "momentum", "weight_decay", "schedule", "min_lr_ratio")


def trainer_preset(run: Run) -> str | None:
    """The budget preset the run chose on its command line (`trainer=quick`, `short`, ...; from
    .hydra/overrides.yaml), None when it kept its experiment's own."""
    import yaml

    try:
        overrides = yaml.safe_load((run.path / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return None
    chosen = [o.split("=", 1)[1] for o in overrides if isinstance(o, str) and o.startswith("trainer=")]
    return chosen[-1] if chosen else None


def differences(run: Run, experiment: str | None, ignore=()) -> list[str]:
    """`key=value` for each model/solver/optimizer setting where the run differs from the config file of
    `experiment` (the training budget is not a difference: `select` keeps each cell's longest budget). A budget
    preset the run chose (trainer=short: a cosine schedule) is part of its budget: the run is compared with the
    experiment under that preset."""
    defaults = None
    if experiment:
        defaults = experiment_defaults(experiment, trainer_preset(run)) or experiment_defaults(experiment)
    if not defaults or not run.cfg:
        return []
    out = []
    for group in ("model", "solver"):
        mine = flat(run.cfg.get(group) or {}, f"{group}.")
        for key, value in flat(defaults.get(group) or {}, f"{group}.").items():
            if key in mine and key not in ignore and mine[key] != value:
                out.append(f"{key}={mine[key]}")
    mine, theirs = run.cfg.get("trainer") or {}, defaults.get("trainer") or {}
    for key in OPTIMIZER_KEYS:
        if key in mine and key in theirs and mine[key] != theirs[key]:
            out.append(f"trainer.{key}={mine[key]}")
    return out


def limited(run: Run) -> bool:
    """A run whose final evaluation scored only part of the test split (trainer.final_eval_limit: smoke runs)."""
    return run.setting("trainer.final_eval_limit") is not None


def select(cands: list[Run]) -> tuple[list[Run], list[tuple[Run, str]]]:
    """The runs a cell reports (finished ok, evaluated on the whole test split, the longest budget; seeds averaged)
    and the others with why not."""
    ok = [r for r in cands if r.ok and not limited(r)]
    top = max((r.steps for r in ok), default=0)
    used = [r for r in ok if r.steps == top]
    skipped = [(r, r.status if not r.ok else "final evaluation limited (trainer.final_eval_limit)" if limited(r)
                else f"shorter budget: {r.steps} steps") for r in cands if r not in used]
    return used, skipped


def mean(runs, key):
    """The mean of a summary number over runs (None if no run has it)."""
    values = [v for v in (r.number(key) for r in runs) if v is not None]
    return sum(values) / len(values) if values else None


def seeds(runs) -> str:
    """How many distinct seeds a mean is over: '3 seeds', or '2 runs, 1 seed' when runs repeat a seed."""
    n = len({r.setting("seed") for r in runs})
    counted = f"{n} seed{'s' if n != 1 else ''}"
    return counted if n == len(runs) else f"{len(runs)} runs, {counted}"


def steps_cell(runs) -> str:
    """Accepted / rejected forward-solve steps per training step (means over runs), '–' where not recorded."""
    acc, rej = mean(runs, "solver_accepted"), mean(runs, "solver_rejected")
    return "–" if acc is None else f"{acc:.1f} / {rej or 0:.1f}"


def run_fields(runs) -> dict:
    """The CSV columns that name the runs behind a row."""
    return dict(n_runs=len(runs), run_ids=" ".join(r.id for r in runs), run_dirs=";".join(str(r.path) for r in runs))


def plt_figure(*args, **kwargs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


class Page:
    """report.md being written into `out`, with the runs it draws on; `experiment_of(run)` names a run's
    paper-setting experiment file and `known(run)` says whether some family can place it."""

    def __init__(self, out: Path, dirs, runs: list[Run], messages: list[str], experiment_of: Callable,
                 known: Callable):
        self.out, self.dirs, self.runs, self.messages = out, list(dirs), runs, messages
        self.experiment_of, self.known = experiment_of, known
        self.md: list[str] = []
        self.files: list[str] = []
        self.problems: list[str] = []
        self.by_path = {r.path: r for r in runs}

    def add(self, *lines):
        self.md.extend(lines)

    def table(self, header, rows):
        self.add(*tables.md_table(header, rows))

    def ids(self, runs) -> str:
        return ", ".join(r.id for r in runs) or "–"

    def runs_cell(self, used, skipped) -> str:
        text = self.ids(used)
        if skipped:
            text += "; not used: " + ", ".join(f"{r.id} ({why})" for r, why in skipped)
        return text

    def mark(self, runs, where: str):
        """Record that these runs feed `where` (the Runs table's 'used in' column)."""
        for r in runs:
            if where not in r.used:
                r.used.append(where)

    def of(self, task, model=None, ok_only=False) -> list[Run]:
        out = [r for r in self.runs if self.known(r) and r.task == task and (model is None or r.model == model)]
        return [r for r in out if r.ok] if ok_only else out

    def section(self, heading: str, task: str, what: str, make: str) -> list[Run]:
        """Start a section: its heading, then the family's runs, or a line saying how to make them."""
        self.add(heading, "")
        runs = self.of(task)
        if not runs:
            self.add(f"No {what} runs found. Make them with {make}.", "")
        return runs

    def differences(self, run: Run, ignore=()) -> list[str]:
        return differences(run, self.experiment_of(run), ignore)

    def paper_setting(self, runs, ignore=()) -> list[Run]:
        return [r for r in runs if not self.differences(r, ignore)]

    def csv(self, name: str, rows: list[dict]) -> str:
        tables.write_csv(self.out / name, rows)
        self.files.append(name)
        return name

    def savefig(self, fig, name: str) -> str:
        import matplotlib.pyplot as plt
        fig.savefig(self.out / name, dpi=110)
        plt.close(fig)
        self.files.append(name)
        return name

    def copy(self, run: Run, filename: str, name: str) -> str | None:
        """Copy a run's own figure into the report (a problem of the run if it is missing)."""
        src = run.path / filename
        if not src.is_file():
            if not (run.summary or {}).get("figures_note"):   # trainer.figures=false says so itself
                run.problems.append(f"figure {filename} missing")
            return None
        shutil.copyfile(src, self.out / name)
        self.files.append(name)
        return name

    def where(self, path) -> str:
        try:
            return os.path.relpath(path)
        except ValueError:
            return str(path)
