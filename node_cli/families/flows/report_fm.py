"""Flow matching against maximum likelihood in node-report's flows section (beyond the paper; `model.loss`): per data
set and objective, the test NLL with its interval, the gap to the true density's, NFE, s / step and the time to a
given NLL, with the NLL over time as a figure. Also what the FFJORD part reads of a run (its loss, its RNODE
weights) and its interval cell."""
from __future__ import annotations

import math

from ...core.page import Page, mean, plt_figure, select
from ...core.rundir import read_metrics
from ...core.runs import Run
from ...core.stats import sd, t_quantile
from ...core.tables import fmt, md_table


def run_lambdas(run: Run) -> tuple:
    return (run.setting("model.kinetic") or 0.0, run.setting("model.jacobian") or 0.0)


def run_loss(run: Run) -> str:
    return run.setting("model.loss", "mle")   # runs made before model.loss existed trained by maximum likelihood


MARGIN = 0.05   # nats: "reaches the NLL" means within MARGIN of the best objective's mean final test NLL


def _objective_label(run: Run) -> str:
    lam = run_lambdas(run)
    return run_loss(run) + (f" + RNODE (λ_K {lam[0]:g}, λ_J {lam[1]:g})" if lam != (0.0, 0.0) else "")


def interval(values: list, stderr: float | None) -> str:
    """mean ± the half-width of a 95% interval: Student's t over seeds, or, with one seed, 1.96 test-set s.e."""
    m, s = sum(values) / len(values), sd(values)
    if s is not None:
        return f"{m:.3f} ± {t_quantile(0.975, len(values) - 1) * s / math.sqrt(len(values)):.3f}"
    return f"{m:.3f} ± {1.96 * stderr:.3f}" if stderr is not None else f"{m:.3f}"


def _curve(run: Run) -> list[tuple]:
    """(step, training seconds, wall seconds, test NLL) at each evaluation of the run: training seconds add up the
    timed steps (sec_per_step x steps since the previous line), wall seconds are the run's clock, evaluations in."""
    out, train, last = [], 0.0, 0
    for row in read_metrics(run.path):
        if row.get("test_nll") is None or row.get("sec_per_step") is None:
            continue
        train += row["sec_per_step"] * (row["step"] - last)
        last = row["step"]
        out.append((row["step"], train, row.get("wall_time"), row["test_nll"]))
    return out


def _reached(curve: list[tuple], level: float):
    """(training s, wall s, step) at the first evaluation with test NLL <= level, or None."""
    return next(((train, wall, step) for step, train, wall, nll in curve if nll <= level), None)


def objectives(rep: Page, runs) -> None:
    """Flow matching (model.loss=cfm|otcfm) against maximum likelihood (with and without RNODE) on each data set
    that has flow-matching runs: per objective (its longest-budget runs, seeds averaged) the final test NLL, the
    gap to the true density's, the NFE of the likelihood and of sampling at evaluation, s / step, and the time each
    run took to first reach within MARGIN of the best objective's NLL; then the NLL over time as a figure."""
    datasets = sorted({r.setting("dataset.name") for r in runs if run_loss(r) != "mle"})
    if not datasets:
        return
    rows_md, rows_csv, panels = [], [], []
    for data in datasets:
        md, csv_rows, panel = _objective_rows(rep, [r for r in runs if r.setting("dataset.name") == data], data)
        rows_md += md
        rows_csv += csv_rows
        panels.append(panel)
    rep.add("#### Flow matching against maximum likelihood: the same field, data, solver and evaluation", "")
    rep.add(*md_table(["data", "objective", "seeds", "test NLL (95%)", "true density's NLL", "gap", "eval NFE (NLL)",
                       "eval NFE (sampling)", "train NFE-F / step", "s / step", "steps",
                       f"train s to best + {MARGIN:g} (runs that got there)", "wall s to it", "wall s in all",
                       "runs"], rows_md))
    rep.add(f"CSV: `{rep.csv('ffjord_objectives.csv', rows_csv)}`. Each objective's longest-budget runs, seeds "
            "averaged; 95% interval: Student's t over seeds, or with one seed 1.96 × the test-set standard error. "
            "Eval NFE: the final evaluation's solves at model.eval_tol, the exact-trace likelihood and the samples "
            "alone (the same number of base points, no trace). Train s: the timed training steps only (s / step × "
            f"steps); wall s: the run's clock, evaluations included. The level is the best objective's mean final "
            f"test NLL + {MARGIN:g} nats, met at the first evaluation at or below it (intermediate evaluations use "
            "trainer.eval_limit test points; null: all).", "")
    _objectives_figure(rep, panels)


def _objective_rows(rep: Page, runs: list, data: str) -> tuple[list, list, tuple]:
    """One data set's objectives: the table's rows, the CSV's rows (a run each) and the figure's panel."""
    cells: dict[str, list[Run]] = {}
    for r in runs:
        cells.setdefault(_objective_label(r), []).append(r)
    cells = {label: select(cands)[0] for label, cands in sorted(cells.items())}
    best = min(mean(used, "test_nll") for used in cells.values())
    level = best + MARGIN
    rows_md, rows_csv, curves = [], [], {}
    for label, used in cells.items():
        curves[label] = [(r, _curve(r)) for r in used]
        hits = [_reached(c, level) for _, c in curves[label]]
        got = [h for h in hits if h is not None]
        nll = [r.number("test_nll") for r in used]
        floor = mean(used, "test_nll_data")
        reach_train = sum(h[0] for h in got) / len(got) if got else None
        reach_wall = sum(h[1] for h in got) / len(got) if got else None
        seeds = sorted({r.setting("seed") for r in used})
        rows_md.append([data, label, ", ".join(map(str, seeds)),
                        interval(nll, used[0].number("test_nll_stderr")), fmt(floor, ".3f"),
                        fmt(mean(used, "test_nll") - floor, "+.3f") if floor is not None else "–",
                        fmt(mean(used, "eval_nfe_forward"), ".0f"), fmt(mean(used, "eval_nfe_sample"), ".0f"),
                        fmt(mean(used, "nfe_forward"), ".1f"), fmt(mean(used, "sec_per_step"), ".4f"),
                        used[0].steps, f"{fmt(reach_train, '.1f')} ({len(got)}/{len(used)})",
                        fmt(reach_wall, ".0f"), fmt(mean(used, "wall_time"), ".0f"), rep.ids(used)])
        for r, hit in zip(used, hits):
            numbers = {k: r.number(k) for k in ("test_nll", "test_nll_stderr", "test_nll_data", "eval_nfe_forward",
                                                "eval_nfe_sample", "nfe_forward", "nfe_backward", "sec_per_step")}
            rows_csv.append(dict(dataset=data, objective=label, loss=run_loss(r), seed=r.setting("seed"), steps=r.steps,
                                 **numbers, level=level, train_s_to_level=hit[0] if hit else None,
                                 wall_s_to_level=hit[1] if hit else None,
                                 step_to_level=hit[2] if hit else None, wall_time=r.number("wall_time"),
                                 run_id=r.id, run_dir=str(r.path)))
        rep.mark(used, "flow matching against maximum likelihood")
    return rows_md, rows_csv, (data, level, mean(sum(cells.values(), []), "test_nll_data"), curves)


def _objectives_figure(rep: Page, panels: list) -> None:
    """Test NLL against wall-clock and training time, a column per data set."""
    fig, axes = plt_figure(2, len(panels), figsize=(4.2 * len(panels), 6.4), squeeze=False)
    colour = {label: f"C{i}" for i, label in enumerate(sorted({lb for p in panels for lb in p[3]}))}
    for j, (data, level, floor, curves) in enumerate(panels):
        for label, pairs in curves.items():
            for k, (_, curve) in enumerate(pairs):
                for row, x in ((0, 2), (1, 1)):
                    axes[row][j].plot([c[x] for c in curve], [c[3] for c in curve], "o-", ms=2,
                                      color=colour[label], label=label if k == 0 else None)
        nll = [c[3] for pairs in curves.values() for _, curve in pairs for c in curve]
        low = min(nll + ([floor] if floor is not None else []))
        for row, what in ((0, "wall-clock s (evaluations included)"), (1, "training s (timed steps)")):
            ax = axes[row][j]
            ax.set_ylim(low - 0.05, min(max(nll), level + 1.5) + 0.05)   # early evaluations may be far above
            ax.axhline(level, color="grey", ls="--", lw=0.8, label=f"best + {MARGIN:g}")
            if floor is not None:
                ax.axhline(floor, color="black", ls=":", lw=0.8, label="true density")
            ax.set_xscale("log")
            ax.set(xlabel=what, ylabel="test NLL (nats)", title=data)
            ax.legend(fontsize=6)
    fig.tight_layout()
    rep.add(f"Test NLL against time: ![NLL over time]({rep.savefig(fig, 'ffjord_objectives.png')})", "")
