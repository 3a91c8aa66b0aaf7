"""`node-report DIR...`: find the runs under DIRs, let each family write its sections, then list every run and
every problem.

Every folder under the given ones that holds `.hydra/config.yaml`, `summary.json` or `metrics.jsonl` is a run,
single or inside a multirun sweep; what a run *is* comes from its `.hydra/config.yaml` (task, model, dataset,
solver), never from folder names (core/runs.py). A run is used when its summary says `status: ok`; failed,
interrupted and unfinished runs (no summary yet) are listed as such. How a table cell chooses its runs:
core/page.py. The sections themselves live in each family's report.py, in registry order.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from .. import families
from ..core.checks import one_line
from ..core.page import Page
from ..core.progress import bar
from ..core.runs import Run, discover
from ..core.tables import fmt, md_table


def _family(run: Run):
    task = run.task
    return families.get(task) if task in families.FAMILIES else None


def known(run: Run) -> bool:
    """Whether some family can place this run (its task is registered and builds its model)."""
    family = _family(run) if run.cfg is not None else None
    return family is not None and run.model in family.models


def experiment_of(run: Run) -> str | None:
    family = _family(run)
    return family.experiment_of(run) if family and known(run) else None


def per_run_section(rep: Page) -> None:
    """Every finished run that no table above used (a single FFJORD run, a run off the paper setting, ...), by
    family, with its numbers: no run is reported by its name alone."""
    for family in families.every():
        left = [r for r in rep.runs if r.ok and not r.used and known(r) and r.task == family.name]
        if not left:
            continue
        rows, rows_csv = [], []
        for r in left:
            key = next((k for k in family.headline if r.number(k) is not None), None)
            diffs = ", ".join(rep.differences(r)) or "–"
            rows.append([r.id, r.setting("name", "?"), r.model, r.setting("dataset.name", "?"), diffs,
                         f"{key} {fmt(r.number(key), '.4g')}" if key else "–",
                         f"{fmt(r.number('nfe_forward'), '.1f')} / {fmt(r.number('nfe_backward'), '.1f')}",
                         fmt(r.number("sec_per_step"), ".3f"), r.steps, (r.summary or {}).get("evaluation") or "–",
                         rep.where(r.path)])
            rows_csv.append(dict(run_id=r.id, experiment=r.setting("name"), model=r.model, dataset=r.setting("dataset.name"),
                                 differs=diffs, metric=key, value=r.number(key) if key else None,
                                 nfe_forward=r.number("nfe_forward"), nfe_backward=r.number("nfe_backward"),
                                 sec_per_step=r.number("sec_per_step"), steps=r.steps,
                                 evaluation=(r.summary or {}).get("evaluation"), run_dir=str(r.path)))
        rep.mark(left, f"{family.name} per-run table")
        rep.add(f"## {family.name}: finished runs in no table above", "")
        rep.add(*md_table(["id", "experiment", "model", "data", "differs from the paper setting", "headline",
                           "NFE-F / NFE-B", "s / step", "steps", "evaluation", "folder"], rows))
        rep.add(f"CSV: `{rep.csv(f'runs_{family.name}.csv', rows_csv)}`.", "")


def runs_section(rep: Page) -> None:
    rep.add("## Runs", "")
    rows, rows_csv = [], []
    for r in rep.runs:
        family = _family(r) if known(r) else None
        head = next(((k, r.number(k)) for k in (family.headline if family else ()) if r.number(k) is not None), (None, None))
        diffs = rep.differences(r) if family else []
        rows.append([r.id, r.status, r.kind, r.setting("name", "?"), ", ".join(diffs) or "–",
                     f"{head[0]} {head[1]:.4g}" if head[0] else "–", r.steps if r.summary else "–",
                     ", ".join(r.used) or "–", rep.where(r.path)])
        rows_csv.append(dict(run_id=r.id, status=r.status, task=r.task, model=r.model, experiment=r.setting("name"),
                             differs=" ".join(diffs), metric=head[0], value=head[1],
                             steps=r.steps if r.summary else None, used_in="; ".join(r.used), run_dir=str(r.path),
                             problems=" | ".join(r.problems)))
    if rows:
        rep.add(*md_table(["id", "status", "task/model", "experiment", "differs from the paper setting",
                           "headline", "steps", "used in", "folder"], rows))
        rep.add(f"CSV: `{rep.csv('runs.csv', rows_csv)}`.", "")
    else:
        rep.add("No runs found.", "")
    problems = list(rep.messages)
    for r in rep.runs:
        for p in r.problems:
            problems.append(f"{r.id} ({rep.where(r.path)}): {p}")
    rep.add("## Problems", "")
    rep.add(*([f"- {p}" for p in problems] or ["None."]), "")
    rep.problems = problems


def build(dirs, out: Path, command: str = "node-report", found=None) -> Page:
    """The report of the runs under `dirs` into `out`; `found`: what core.runs.discover(dirs) already returned."""
    runs, messages = found or discover(dirs)
    for run in runs:
        if run.cfg is not None and not known(run):
            run.problems.append(f"unknown kind: task {run.task!r}, model {run.model!r} (this report knows "
                                + "; ".join(f"{f.name}: {', '.join(f.models)}" for f in families.every()) + ")")
    out.mkdir(parents=True, exist_ok=True)
    rep = Page(out, dirs, runs, messages, experiment_of, known)
    counts = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    rep.add("# node-run report: Neural ODEs (Chen et al. 2018), paper beside ours", "",
            f"Made {datetime.datetime.now().isoformat(timespec='seconds')} by `{command}`.",
            f"{len(runs)} runs under {', '.join(f'`{d}`' for d in dirs)}: "
            + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none") + ". "
            "Run IDs (R1, ...) are listed with their folders under 'Runs'; every CSV row names its runs' folders.", "")
    sections = [section for family in families.every() for section in family.sections()]
    for section in bar(sections, desc="tables and figures", unit="section", leave=False):
        try:
            section(rep)
        except Exception as exc:  # one family's bad data must not cost the rest of the report
            rep.add(f"**{section.__name__}: could not be made: {type(exc).__name__}: {one_line(exc, 200)}**", "")
            rep.messages.append(f"section {section.__name__} could not be made: {type(exc).__name__}: "
                                f"{one_line(exc, 200)}")
    per_run_section(rep)
    runs_section(rep)
    (out / "report.md").write_text("\n".join(rep.md) + "\n")
    return rep
