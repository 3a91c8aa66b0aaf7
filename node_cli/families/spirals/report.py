"""The spirals section of node-report: Table 2 (test RMSE by observations per trajectory) and Figures 8-9, beside
the paper's values (paper section 5)."""
from __future__ import annotations

from ...core.page import Page, mean, run_fields, seeds, select, steps_cell
from ...core.tables import fmt, md_table

# Table 2 of the paper: predictive RMSE on the test set by observations per trajectory (of 100).
PAPER_TABLE2 = {"rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813}, "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346}}
SPIRAL_MODELS = [("RNN", "rnn"), ("RNN + time gaps", "rnn_dt"), ("Latent ODE", "latent_ode")]


def table2(rep: Page) -> None:
    runs = rep.section("## Table 2 and Figures 8-9: latent ODE on spirals (paper section 5)", "latent", "spirals",
                       "`scripts/spirals_table.sh`")
    if not runs:
        return
    n_obs = sorted({30, 50, 100} | {r.c("dataset.n_obs") for r in runs if isinstance(r.c("dataset.n_obs"), int)})
    rows_md, rows_csv, figures, cells = [], [], [], {}
    for label, model in SPIRAL_MODELS:
        cands = rep.paper_setting(rep.of("latent", model))
        for n in n_obs:
            paper = PAPER_TABLE2.get(model, {}).get(n)
            cell = [r for r in cands if r.c("dataset.n_obs") == n]
            used, skipped = select(cell)
            if not cell and paper is None:
                continue
            rep.mark(used, "Table 2")
            rmse, sd, steps = mean(used, "test_rmse"), spread(used, "test_rmse"), (used[0].steps if used else None)
            cells[(model, n)] = (rmse, sd or 0.0)
            if used:
                cells.setdefault(("hold_last", n), (mean(used, "test_rmse_hold_last"), 0.0))
            rows_md.append([label, f"{n}/{used[0].c('dataset.n_points', 100) if used else 100}",
                            fmt(rmse) + (f" ± {sd:.4f} ({seeds(used)})" if sd is not None else ""),
                            fmt(paper), f"{steps} steps" if used else "no finished run",
                            rep.runs_cell(used, skipped)])
            rows_csv.append(dict(model=label, model_name=model, n_obs=n, test_rmse=rmse, test_rmse_sd=sd,
                                 paper_test_rmse=paper, steps=steps, **run_fields(used)))
            if used:
                figures.append((label, model, n, used[0]))
    for n in n_obs:   # the calibration row: holding the last observation, scored on the same test sets
        if cells.get(("hold_last", n), (None,))[0] is not None:
            rows_md.append(["hold the last observation", f"{n}/100", fmt(cells[("hold_last", n)][0]), "–", "–", "–"])
    rep.add(*md_table(["model", "observations", "test RMSE (mean ± sd over seeds)", "paper", "budget", "runs"],
                      rows_md))
    rep.add(*margins(cells, n_obs))
    rep.add(f"CSV: `{rep.csv('table2.csv', rows_csv)}`. RMSE of the extrapolation beyond the observed window on "
            "the test spirals (the family's evaluation protocol: docs/families/spirals.md). The paper has no "
            "'RNN + time gaps' row.", "")
    details(rep, runs)
    fig8 = [(lbl, n, run, rep.copy(run, "spirals.png", f"fig8_{model}_n{n}_{run.id}.png"))
            for lbl, model, n, run in figures]
    fig9 = [(lbl, n, run, rep.copy(run, "latent.png", f"fig9_n{n}_{run.id}.png"))
            for lbl, model, n, run in figures if model == "latent_ode"]
    rep.mark([run for _, _, run, f in fig8 if f], "Figure 8")
    rep.mark([run for _, _, run, f in fig9 if f], "Figure 9")
    if fig8:
        rep.add("### Figure 8: reconstruction and extrapolation (each run's own figure)", "")
        rep.add(*[f"- {lbl}, {n} observations ({run.id}): ![{lbl} {n}]({f})" for lbl, n, run, f in fig8 if f], "")
    if fig9:
        rep.add("### Figure 9: latent trajectories, coloured by direction", "")
        rep.add(*[f"- {lbl}, {n} observations ({run.id}): ![latent {n}]({f})" for lbl, n, run, f in fig9 if f], "")


def spread(runs, key):
    """The sample standard deviation of a summary number over runs (None with fewer than two)."""
    values = [v for v in (r.s(key) for r in runs) if v is not None]
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def margins(cells: dict, n_obs) -> list[str]:
    """Where the latent ODE beats each baseline by more than two combined standard deviations, and where not."""
    clear, not_clear = [], []
    for n in n_obs:
        if cells.get(("latent_ode", n), (None,))[0] is None:
            continue
        mine, sd = cells[("latent_ode", n)]
        for other, label in (("rnn", "RNN"), ("rnn_dt", "RNN + time gaps"), ("hold_last", "hold-last")):
            theirs, their_sd = cells.get((other, n), (None, 0.0))
            if theirs is None:
                continue
            (clear if theirs - mine > 2 * (sd ** 2 + their_sd ** 2) ** 0.5 else not_clear).append(f"{label} at {n}")
    if not clear and not not_clear:
        return []
    return [f"Latent ODE below the baseline by more than two combined standard deviations: {', '.join(clear) or 'none'}"
            f"; not by that margin: {', '.join(not_clear) or 'none'}.", ""]


def details(rep: Page, runs) -> None:
    """Per finished run: the spread of its test RMSE, reconstruction, likelihood, NFE, speed and solver error."""
    names = dict((model, label) for label, model in SPIRAL_MODELS)
    rows = []
    for r in sorted((r for r in runs if r.ok), key=lambda r: (str(r.model), str(r.c("dataset.n_obs")), r.id)):
        like = (f"ELBO {fmt(r.s('test_elbo'), '.2f')}" if r.s("test_elbo") is not None
                else f"NLL {fmt(r.s('test_nll'), '.2f')}")
        solver = "–"
        if r.model == "latent_ode":
            solver = (f"{r.c('solver.method')} rtol {r.c('solver.rtol'):g} atol {r.c('solver.atol'):g}"
                      f"{' adjoint' if r.c('solver.adjoint') else ''}; error vs rtol 1e-7: "
                      f"{fmt(r.s('extrap_solver_error'))}")
        rows.append([r.id, names.get(r.model, r.model), r.c("dataset.n_obs"), fmt(r.s("test_rmse")),
                     f"{fmt(r.s('test_rmse_clockwise'), '.3f')} / {fmt(r.s('test_rmse_counter_clockwise'), '.3f')}",
                     fmt(r.s("test_rmse_median"), ".3f"), fmt(r.s("test_recon_rmse")), like,
                     f"{fmt(r.s('nfe_forward'), '.1f')} / {fmt(r.s('nfe_backward'), '.1f')}", steps_cell([r]),
                     fmt(r.s("sec_per_step"), ".3f"), fmt(r.s("wall_time"), ".0f"), solver])
    if rows:
        rep.add("### Per run: test metrics, NFE per training step (forward / backward), time", "")
        rep.add(*md_table(["run", "model", "n_obs", "test_rmse", "clockwise / counter-cl.", "median",
                           "test_recon_rmse", "test_elbo / test_nll", "NFE-F / NFE-B", "steps acc./rej.", "s/step", "wall s",
                           "solver"],
                          rows))


def sections() -> tuple:
    """This family's sections of node-report, in order."""
    return (table2,)
