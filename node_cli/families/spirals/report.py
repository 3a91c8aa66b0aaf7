"""The spirals section of node-report: Table 2 (test RMSE by observations per trajectory) and Figures 8-9, beside
the paper's values (paper section 5)."""
from __future__ import annotations

from ...core import stats
from ...core.page import Page, mean, run_fields, seeds, select, steps_cell
from ...core.tables import fmt, md_table

# Table 2 of the paper: predictive RMSE on the test set by observations per trajectory (of 100).
PAPER_TABLE2 = {"rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813}, "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346}}
SPIRAL_MODELS = [("RNN", "rnn"), ("RNN + time gaps", "rnn_dt"), ("Latent ODE", "latent_ode")]
# The orderings Table 2 is about: the latent ODE below each baseline. The paper's is the RNN; the time-gap RNN is
# ours; holding the last observation is the calibration (every summary scores it on the same test set).
BASELINES = (("RNN", "rnn"), ("RNN + time gaps", "rnn_dt"), ("hold the last observation", "hold_last"))
# The metrics compared: the paper's RMSE, the mean of per-trajectory RMSEs (less dominated by the few clockwise
# spirals that run away late) and the first 10 extrapolated points (the early horizon).
COMPARED = ("test_rmse", "test_rmse_traj_mean", "test_rmse_h10")


def table2(rep: Page) -> None:
    runs = rep.section("## Table 2 and Figures 8-9: latent ODE on spirals (paper section 5)", "spirals", "spirals",
                       "`scripts/spirals_table.sh`")
    if not runs:
        return
    n_obs = sorted({30, 50, 100} | {r.setting("dataset.n_obs") for r in runs if isinstance(r.setting("dataset.n_obs"), int)})
    rows_md, rows_csv, figures, cells, cell_runs = [], [], [], {}, {}
    for label, model in SPIRAL_MODELS:
        cands = rep.paper_setting(rep.of("spirals", model))
        for n in n_obs:
            paper = PAPER_TABLE2.get(model, {}).get(n)
            cell = [r for r in cands if r.setting("dataset.n_obs") == n]
            used, skipped = select(cell)
            if not cell and paper is None:
                continue
            rep.mark(used, "Table 2")
            cell_runs[(model, n)] = used
            rmse, sd, steps = mean(used, "test_rmse"), spread(used, "test_rmse"), (used[0].steps if used else None)
            cells[(model, n)] = (rmse, sd or 0.0)
            if used:
                cells.setdefault(("hold_last", n), (mean(used, "test_rmse_hold_last"), 0.0))
            rows_md.append([label, f"{n}/{used[0].setting('dataset.n_points', 100) if used else 100}",
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
    comparisons(rep, cell_runs, n_obs)
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
    return stats.sd(v for v in (r.number(key) for r in runs) if v is not None)


def comparisons(rep: Page, cell_runs: dict, n_obs) -> None:
    """Is the latent ODE ahead of each baseline? Seed-paired differences with 95% intervals (core/stats.py), for
    test_rmse, the per-trajectory mean and the early horizon, at every density."""
    rows_md, rows_csv = [], []
    for n in n_obs:
        mine = cell_runs.get(("latent_ode", n))
        if not mine:
            continue
        for label, model in BASELINES:
            theirs = mine if model == "hold_last" else cell_runs.get((model, n))
            if not theirs:
                continue
            for metric in COMPARED if model != "hold_last" else ("test_rmse",):
                md, row = stats.comparison(("Latent ODE", mine), (label, theirs), metric, n_obs=n,
                                           metric_b="test_rmse_hold_last" if model == "hold_last" else None)
                rows_md.append([f"{n}/100"] + md)
                rows_csv.append(row)
    if not rows_md:
        return
    used = [r for runs in cell_runs.values() for r in runs]
    rep.add("### Table 2: is the latent ODE ahead? Differences over seeds", "",
            "A − B < 0: the latent ODE has the lower error. Runs of two models pair when they share the model seed "
            "and `dataset.seed` (the same data and test set); the interval is the paired t interval of the mean "
            "difference (unpaired, Welch's, where the seeds do not pair). 'Established' means the 95% interval "
            "excludes 0; it covers the seed-to-seed variation of training on this data set, not other data sets.",
            "", *md_table(["observations"] + stats.COLUMNS, rows_md),
            f"CSV: `{rep.csv('table2_comparisons.csv', rows_csv)}`. Made from: {stats.machines(used)}.", "")


def details(rep: Page, runs) -> None:
    """Per finished run: the spread of its test RMSE, reconstruction, likelihood, NFE, speed and solver error."""
    names = dict((model, label) for label, model in SPIRAL_MODELS)
    rows = []
    for r in sorted((r for r in runs if r.ok), key=lambda r: (str(r.model), str(r.setting("dataset.n_obs")), r.id)):
        like = (f"ELBO {fmt(r.number('test_elbo'), '.2f')}" if r.number("test_elbo") is not None
                else f"NLL {fmt(r.number('test_nll'), '.2f')}")
        solver = "–"
        if r.model == "latent_ode":
            solver = (f"{r.setting('solver.method')} rtol {r.setting('solver.rtol'):g} atol {r.setting('solver.atol'):g}"
                      f"{' adjoint' if r.setting('solver.adjoint') else ''}; error vs rtol 1e-7: "
                      f"{fmt(r.number('extrap_solver_error'))}")
        rows.append([r.id, names.get(r.model, r.model), r.setting("dataset.n_obs"), fmt(r.number("test_rmse")),
                     f"{fmt(r.number('test_rmse_clockwise'), '.3f')} / {fmt(r.number('test_rmse_counter_clockwise'), '.3f')}",
                     fmt(r.number("test_rmse_median"), ".3f"), fmt(r.number("test_recon_rmse")), like,
                     f"{fmt(r.number('nfe_forward'), '.1f')} / {fmt(r.number('nfe_backward'), '.1f')}", steps_cell([r]),
                     fmt(r.number("sec_per_step"), ".3f"), fmt(r.number("wall_time"), ".0f"), solver])
    if rows:
        rep.add("### Per run: test metrics, NFE per training step (forward / backward), time", "")
        rep.add(*md_table(["run", "model", "n_obs", "test_rmse", "clockwise / counter-cl.", "median",
                           "test_recon_rmse", "test_elbo / test_nll", "NFE-F / NFE-B", "steps acc./rej.", "s/step", "wall s",
                           "solver"],
                          rows))


def sections() -> tuple:
    """This family's sections of node-report, in order."""
    return (table2,)
