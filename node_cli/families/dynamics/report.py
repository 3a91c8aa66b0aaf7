"""The dynamics section of node-report: test MSE and NFE of each system x field, and each run's phase portrait."""
from __future__ import annotations

from ...core.page import Page, mean, run_fields, select
from ...core.tables import fmt, md_table


def field_name(run) -> str:
    hidden = run.setting("model.hidden", [])
    hidden = [hidden] if isinstance(hidden, int) else list(hidden or [])
    aug = run.setting("model.augment_dim", 0) or 0
    return f"2-{'-'.join(map(str, hidden))}-2 {run.setting('model.activation', '?')}" + (f" +{aug} aug" if aug else "")


def dynamics(rep: Page) -> None:
    runs = rep.section("## Dynamics: neural vector fields of known 2-D systems", "dynamics", "dynamics",
                       "`node-run experiment=dynamics_<system>` (docs/families/dynamics.md)")
    if not runs:
        return
    cells: dict = {}
    for r in runs:
        cells.setdefault((str(r.setting("dataset.system")), field_name(r)), []).append(r)
    rows_md, rows_csv, figures = [], [], []
    for (system, field), cell in sorted(cells.items()):
        used, skipped = select(cell)
        rep.mark(used, "Dynamics table")
        test, train = mean(used, "test_mse"), mean(used, "train_mse")
        nfe_f, nfe_b = mean(used, "nfe_forward"), mean(used, "nfe_backward")
        steps = used[0].steps if used else None
        rows_md.append([system, field, fmt(test, ".3g"), fmt(train, ".3g"), f"{fmt(nfe_f, '.1f')} / {fmt(nfe_b, '.1f')}",
                        f"{steps} steps" if used else "no finished run", fmt(mean(used, "wall_time"), ".0f"),
                        rep.runs_cell(used, skipped)])
        rows_csv.append(dict(system=system, field=field, test_mse=test, train_mse=train, nfe_forward=nfe_f,
                             nfe_backward=nfe_b, steps=steps, **run_fields(used)))
        figures += [(system, field, r) for r in used]
    rep.add(*md_table(["system", "field", "test MSE", "train MSE", "NFE-F / NFE-B", "budget", "wall s", "runs"],
                      rows_md))
    rep.add(f"CSV: `{rep.csv('dynamics.csv', rows_csv)}`. test MSE: the extrapolated last part of the trajectory, "
            "solved from the true state at the split, against the noise-free truth (docs/families/dynamics.md).", "")
    figure = {"crossing": "trajectories.png", "annuli": "annuli.png"}
    copied = [(s, f, r, rep.copy(r, figure.get(s, "phase.png"), f"dynamics_{s}_{r.id}.png"))
              for s, f, r in figures]
    rep.mark([r for _, _, r, name in copied if name], "Dynamics phase portraits")
    if any(name for *_, name in copied):
        rep.add("### Phase portraits: true and learned trajectories (each run's own figure; crossing: x(t) of "
                "anode_crossing)", "")
        rep.add(*[f"- {s}, field {f} ({r.id}): ![{s}]({name})" for s, f, r, name in copied if name], "")


def sections() -> tuple:
    """This family's sections of node-report, in order."""
    return (dynamics,)
