"""The flows sections of node-report (paper section 4): Figures 5-6 (maximum likelihood, the paper setting),
Figure 4 (density matching: the paper setting's cells, then each cell's best run over the settings tried, as
docs/families/flows.md tunes the NF's learning rate and the CNF's flow time) and the seminorm adjoint's NFE-B; then
FFJORD (beyond the paper): the regularisation table (RNODE against unregularised, NFE and test NLL, with the NFE
over training as a figure), the dimension-scaling table of `node-bench ffjord`, and flow matching against maximum
likelihood (`model.loss`: test NLL, NFE, time to a given NLL, with the NLL over time as a figure), when such runs
are present."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from ...core.page import Page, limited, mean, plt_figure, run_fields, select, steps_cell
from ...core.tables import fmt, md_table
from ...core.rundir import read_metrics
from ...core.runs import Run


def flows(rep: Page) -> None:
    runs = rep.section("## Figures 4-6: continuous normalizing flows in 2-D (paper section 4)", "flows", "flow",
                       "`scripts/flows_tables.sh`")
    if not runs:
        return
    _flows_ml(rep, [r for r in runs if r.setting("dataset.name") in ("circles", "moons")])
    _flows_density(rep, [r for r in runs if r.setting("dataset.name") == "density"])
    _best_of_settings(rep, runs)
    _seminorm(rep, runs)
    _ffjord(rep, [r for r in runs if r.model == "ffjord"])


def _capacity(run: Run):
    return run.setting("model.width") if run.model == "cnf" else run.setting("model.depth")


def _flows_ml(rep: Page, runs) -> None:
    rep.add("### Figures 5-6: maximum likelihood on Two Circles and Two Moons", "")
    if not runs:
        rep.add("No maximum-likelihood flow runs (experiments cnf_circles, cnf_moons, nf_circles, nf_moons).", "")
        return
    rows_md, rows_csv, pics = [], [], []
    for data in ("circles", "moons"):
        for label, model, key in (("CNF", "cnf", "M"), ("NF", "nf", "K")):
            cell = rep.paper_setting([r for r in runs if r.model == model and r.setting("dataset.name") == data])
            used, skipped = select(cell)
            if not cell:
                continue
            rep.mark(used, "Figures 5-6")
            nll, se, floor = mean(used, "test_nll"), mean(used, "test_nll_stderr"), mean(used, "test_nll_data")
            cap = _capacity(used[0]) if used else None
            rows_md.append([data, f"{label} ({key} = {cap})" if used else label,
                            fmt(nll) + (f" ± {se:.4f}" if se is not None else ""), fmt(floor),
                            "– (figures only; paper: CNF M=64 vs NF K=64)", fmt(mean(used, "nfe_forward"), ".1f"),
                            steps_cell(used), fmt(mean(used, "sec_per_step"), ".3f"), f"{used[0].steps} steps" if used else "no finished run",
                            rep.runs_cell(used, skipped)])
            rows_csv.append(dict(dataset=data, model=label, capacity=cap, test_nll=nll, test_nll_stderr=se,
                                 data_nll=floor, paper="figures only",
                                 nfe_forward=mean(used, "nfe_forward"), solver_accepted=mean(used, "solver_accepted"),
                                 solver_rejected=mean(used, "solver_rejected"), sec_per_step=mean(used, "sec_per_step"),
                                 steps=used[0].steps if used else None, **run_fields(used)))
            if used:
                r = used[0]
                pics += [(f"{label} on {data}: {what} ({r.id})",
                          rep.copy(r, f"{what}.png", f"fig5_6_{model}_{data}_{what}_{r.id}.png"))
                         for what in ("flow", "density")]
    rep.add(*md_table(["data", "flow", "test NLL (nats)", "true density's NLL", "paper", "NFE-F", "steps acc./rej.",
                       "s / step", "budget", "runs"], rows_md))
    rep.add(f"CSV: `{rep.csv('flows_ml.csv', rows_csv)}`. Test NLL ± its standard error on the family's fixed test "
            "set; the true density's NLL on the same points is the floor (docs/families/flows.md). The paper shows these as "
            "figures (samples and density along the flow), without numbers.", "")
    rep.add(*[f"- {text}: ![{text}]({f})" for text, f in pics if f], "")


def _flows_density(rep: Page, runs) -> None:
    rep.add("### Figure 4: density matching, NF (depth K) against CNF (width M)", "")
    if not runs:
        rep.add("No density-matching runs (experiments density_cnf, density_nf with dataset.target=u1..u4).", "")
        return
    cells: dict[tuple, list] = {}
    for r in rep.paper_setting(runs, ignore=("model.width", "model.depth")):
        cells.setdefault((str(r.setting("dataset.target")), r.model, _capacity(r)), []).append(r)
    targets = sorted({k[0] for k in cells})
    columns = sorted({(m, c) for _, m, c in cells if isinstance(c, int)}, key=lambda mc: (mc[0] != "nf", mc[1]))
    rows_md, rows_csv, chosen = [], [], {}
    for t in targets:
        for m, cap in columns:
            if (t, m, cap) not in cells:
                continue
            used, skipped = select(cells[(t, m, cap)])
            rep.mark(used, "Figure 4")
            kl, se = mean(used, "test_kl"), mean(used, "test_kl_stderr")
            label = f"{'NF K' if m == 'nf' else 'CNF M'} = {cap}"
            rows_md.append([t.upper(), label, fmt(kl) + (f" ± {se:.4f}" if se is not None else ""), "– (figure only)", f"{used[0].steps} steps" if used else
                            "no finished run", rep.runs_cell(used, skipped)])
            rows_csv.append(dict(target=t, flow=m, capacity=cap, test_kl=kl, test_kl_stderr=se, paper="figure only",
                                 steps=used[0].steps if used else None, **run_fields(used)))
            if used:
                chosen[(t, m, cap)] = (kl, used[0])
    rep.add(*md_table(["target", "flow", "test KL(q||p)", "paper", "budget", "runs"], rows_md))
    rep.add(f"CSV: `{rep.csv('figure4.csv', rows_csv)}`.", "")
    if not chosen:
        return
    _figure4_loss(rep, chosen, targets)
    _figure4_grid(rep, chosen, targets, columns)


def _figure4_loss(rep: Page, chosen: dict, targets: list) -> None:
    """Test KL against capacity (NF depth K, CNF width M), a panel per target."""
    from matplotlib.ticker import NullFormatter
    fig, axes = plt_figure(1, len(targets), figsize=(4 * len(targets), 3.6), squeeze=False)
    for ax, t in zip(axes[0], targets):
        for m, name in (("nf", "NF (K)"), ("cnf", "CNF (M)")):
            pts = sorted((cap, v[0]) for (tt, mm, cap), v in chosen.items() if tt == t and mm == m and v[0] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        caps = sorted({cap for (tt, _, cap) in chosen if tt == t})
        ax.set_xscale("log", base=2)
        ax.set_xticks(caps, [str(c) for c in caps])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="K (NF) or M (CNF)", ylabel="test KL(q||p)", title=t.upper())
        ax.legend(fontsize=8)
    fig.tight_layout()
    rep.add(f"Loss against K/M: ![Figure 4 loss]({rep.savefig(fig, 'figure4_loss.png')})", "")


def _figure4_grid(rep: Page, chosen: dict, targets: list, columns: list) -> None:
    """Each chosen run's density.png, targets by rows and NF K / CNF M by columns."""
    import matplotlib.pyplot as plt
    tiles = {}
    for key, (_, run) in chosen.items():
        if (run.path / "density.png").is_file():
            tiles[key] = plt.imread(run.path / "density.png")
        else:
            run.problems.append("figure density.png missing")
    aspect = min((img.shape[0] / img.shape[1] for img in tiles.values()), default=1.0)   # height / width
    width = 2.4 / max(aspect, 0.3)
    fig, axes = plt_figure(len(targets), len(columns), figsize=(width * len(columns), 2.4 * len(targets) + 0.3),
                           squeeze=False)
    for i, t in enumerate(targets):
        for j, (m, cap) in enumerate(columns):
            ax = axes[i][j]
            ax.axis("off")
            ax.set_title(f"{t.upper()} {'NF K' if m == 'nf' else 'CNF M'}={cap}", fontsize=8)
            if (t, m, cap) in tiles:
                ax.imshow(tiles[(t, m, cap)])
            else:
                ax.text(0.5, 0.5, "no run", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    fig.tight_layout()
    rep.add(f"Grid of targets × NF K × CNF M (each run's density.png): "
            f"![Figure 4 grid]({rep.savefig(fig, 'figure4_grid.png')})", "")


SETTINGS = ("trainer.lr", "model.t1", "model.hidden", "solver.rtol")   # settings a grid cell's runs may differ in


def _best_of_settings(rep: Page, runs) -> None:
    """Figure 4 again, each cell's lowest-KL run over every setting tried (one table per training length): how
    docs/families/flows.md compares the NF at its best learning rate with the CNF at its best flow time."""
    density = [r for r in runs if r.ok and r.setting("dataset.name") == "density" and r.number("test_kl") is not None]
    for steps in sorted({r.setting("trainer.max_steps") for r in density}, key=str):
        cells: dict[tuple, list[Run]] = {}
        for r in (r for r in density if r.setting("trainer.max_steps") == steps):
            cells.setdefault((str(r.setting("dataset.target")), r.model, _capacity(r)), []).append(r)
        best = {k: min(v, key=lambda r: r.number("test_kl")) for k, v in cells.items()}
        columns = sorted({(m, c) for _, m, c in cells}, key=lambda mc: (mc[0] != "nf", str(mc[1])))
        rows_md, rows_csv = [], []
        for target in sorted({t for t, _, _ in cells}):
            row = [target.upper()]
            for m, cap in columns:
                here = cells.get((target, m, cap), [])
                if not here:
                    row.append("–")
                    continue
                r = best[(target, m, cap)]
                varied = [k for k in SETTINGS if len({str(x.setting(k)) for x in here}) > 1]
                which = ", ".join(f"{k.split('.')[-1]} {r.setting(k):g}" for k in varied)
                kl = r.number("test_kl")
                row.append(fmt(kl, ".4f" if kl < 0.1 else ".3f") + (f" ({which}; best of {len(here)})" if varied
                                                                     else "") + f" {r.id}")
                rows_csv.append(dict(steps=steps, target=target, flow=m, capacity=cap, test_kl=kl,
                                     test_kl_stderr=r.number("test_kl_stderr"), **{k: r.setting(k) for k in SETTINGS},
                                     runs_in_cell=len(here), run_id=r.id, run_dir=str(r.path)))
            rows_md.append(row)
        rep.mark(list(best.values()), "Figure 4 (best of settings)")
        pairs = [(t, c) for (t, m, c) in best if m == "cnf" and (t, "nf", c) in best]
        kl = {k: (r.number("test_kl"), r.number("test_kl_stderr") or 0.0) for k, r in best.items()}
        lower = sum(kl[(t, "cnf", c)][0] < kl[(t, "nf", c)][0] for t, c in pairs)
        clear = sum(kl[(t, "nf", c)][0] - kl[(t, "cnf", c)][0] > 2 * math.hypot(kl[(t, "cnf", c)][1],
                                                                                kl[(t, "nf", c)][1]) for t, c in pairs)
        rep.add(f"#### Best run per cell over the settings tried: {steps} steps", "")
        rep.add(*md_table(["target"] + [f"{m.upper()} {'K' if m == 'nf' else 'M'}={c}" for m, c in columns], rows_md))
        name = f"figure4_best_{steps}"
        rep.add(f"CSV: `{rep.csv(name + '.csv', rows_csv)}`. Every finished density run counts, whatever its "
                f"settings; a cell names the settings its runs differ in ({', '.join(SETTINGS)}) and the winner's. "
                f"CNF below the NF at M = K in {lower} of {len(pairs)} pairs ({clear} by more than twice the "
                f"combined standard error).", "")
        rep.add(f"![KL against K and M]({rep.savefig(_kl_plot(best, columns), name + '.png')})", "")


def _kl_plot(best, columns):
    """KL against K (NF) and M (CNF), one line per target and model, both axes logarithmic."""
    fig, ax = plt_figure(figsize=(5, 3.5))
    for i, target in enumerate(sorted({t for t, _, _ in best})):
        for model, style in (("nf", "--"), ("cnf", "-")):
            caps = sorted(c for m, c in columns if m == model and (target, m, c) in best)
            if caps:
                ax.plot(caps, [best[(target, model, c)].number("test_kl") for c in caps], style, marker="o",
                        color=f"C{i}", label=f"{model.upper()} {target.upper()}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="K (NF layers) or M (CNF width)", ylabel="KL(q||p), nats")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _seminorm(rep: Page, runs) -> None:
    """NFE per training step of CNF runs that differ only in solver.adjoint_norm (same experiment and budget)."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.model == "cnf" and r.setting("solver.adjoint") and r.ok:
            groups.setdefault((r.setting("name"), r.setting("solver.adjoint_norm"), r.steps), []).append(r)
    pairs = [(k, groups[k], groups[(k[0], "seminorm", k[2])]) for k in groups
             if k[1] == "default" and (k[0], "seminorm", k[2]) in groups]
    if not pairs:
        return
    rows = []
    for (name, _, steps), default, semi in sorted(pairs, key=lambda p: str(p[0])):
        metric = "test_nll" if mean(default, "test_nll") is not None else "test_kl"
        for norm, used in (("default", default), ("seminorm", semi)):
            rows.append([name, steps, norm, fmt(mean(used, "nfe_forward"), ".1f"), fmt(mean(used, "nfe_backward"), ".1f"),
                         fmt(mean(used, "sec_per_step"), ".3f"), f"{metric} {fmt(mean(used, metric))}", rep.ids(used)])
        saved = 1 - mean(semi, "nfe_backward") / mean(default, "nfe_backward")
        rows.append([name, steps, "NFE-B saved by seminorm", "", f"{100 * saved:.2f}%", "", "", ""])
        rep.mark(default + semi, "seminorm table")
    rep.add("### Seminorm adjoint (Kidger et al. 2021): mean NFE per training step, same experiment and budget", "")
    rep.add(*md_table(["experiment", "steps", "adjoint_norm", "NFE-F", "NFE-B", "s / step", "test metric", "runs"],
                      rows))


def _lam(run: Run) -> tuple:
    return (run.setting("model.kinetic") or 0.0, run.setting("model.jacobian") or 0.0)


def _ffjord(rep: Page, runs) -> None:
    """RNODE's regularisers against the unregularised FFJORD (same data, budget, trace and solver), and the
    exact-against-Hutchinson table of `node-bench ffjord` found under the report's folders."""
    traces = sorted({p.resolve() for d in rep.dirs for p in Path(d).rglob("ffjord_trace.csv")})
    if not runs and not traces:
        return
    rep.add("### FFJORD: free-form CNF, Hutchinson's trace, RNODE regularisers (beyond the paper)", "")
    _ffjord_regularisation(rep, [r for r in runs if r.ok and _loss(r) == "mle"])
    _lambda_selection(rep, [r for r in runs if r.ok and not limited(r) and _loss(r) == "mle"])
    _objectives(rep, [r for r in runs if r.ok])
    for path in traces:
        md = path.with_suffix(".md")
        rep.add("#### Dimension scaling: seconds per training step, exact against Hutchinson trace "
                f"(`{rep.where(path)}`)", "")
        if md.is_file():
            rep.add(*md.read_text().splitlines()[1:], "")
        else:
            with open(path) as f:
                rows = list(csv.DictReader(f))
            rep.table(list(rows[0]) if rows else [], [list(r.values()) for r in rows])


def _ffjord_regularisation(rep: Page, runs) -> None:
    groups: dict[tuple, dict] = {}
    for r in runs:
        key = (r.setting("dataset.name"), r.steps, r.setting("model.trace"), r.setting("solver.method"), r.setting("solver.rtol"), r.setting("seed"))
        groups.setdefault(key, {}).setdefault(_lam(r), []).append(r)
    pairs = [(k, g) for k, g in sorted(groups.items(), key=lambda kv: str(kv[0])) if (0.0, 0.0) in g and len(g) > 1]
    if not pairs:
        if runs:
            rep.add("No FFJORD run pairs (unregularised and model.kinetic / model.jacobian > 0, same data, budget, "
                    "trace, solver and seed); make them with `scripts/ffjord_tables.sh`.", "")
        return
    rows_md, rows_csv, curves = [], [], {}
    for (data, steps, trace, method, rtol, seed), g in pairs:
        plain = g[(0.0, 0.0)][0]
        for lam in sorted(g):
            r = g[lam][0]
            nll, floor = r.number("test_nll"), r.number("test_nll_data")
            f, ef = r.number("nfe_forward"), r.number("eval_nfe_forward")
            cut_train = plain.number("nfe_forward") / f if lam != (0.0, 0.0) and f else None
            cut_eval = plain.number("eval_nfe_forward") / ef if lam != (0.0, 0.0) and ef else None
            dnll = nll - plain.number("test_nll") if lam != (0.0, 0.0) else None
            label = "none" if lam == (0.0, 0.0) else f"kinetic {lam[0]:g}, jacobian {lam[1]:g}"
            rows_md.append([data, label, fmt(nll, ".3f") + (f" ± {r.number('test_nll_stderr'):.3f}"
                                                            if r.number("test_nll_stderr") is not None else ""),
                            fmt(r.number("val_nll"), ".3f"), fmt(floor, ".3f"), fmt(dnll, "+.3f"), fmt(f, ".1f"),
                            fmt(r.number("nfe_backward"), ".1f"),
                            fmt(ef, ".0f"), fmt(cut_train, ".2f") + ("×" if cut_train else ""),
                            fmt(cut_eval, ".2f") + ("×" if cut_eval else ""), fmt(r.number("test_kinetic"), ".3f"),
                            fmt(r.number("test_jacobian"), ".3f"), fmt(r.number("t1"), ".2f"),
                            fmt(r.number("sec_per_step"), ".3f"), f"{steps} steps", r.id])
            rows_csv.append(dict(dataset=data, kinetic=lam[0], jacobian=lam[1], trace=trace, method=method, rtol=rtol,
                                 seed=seed, steps=steps, test_nll=nll, test_nll_stderr=r.number("test_nll_stderr"),
                                 val_nll=r.number("val_nll"), val_nll_stderr=r.number("val_nll_stderr"),
                                 test_nll_data=floor, delta_nll=dnll, nfe_forward=f, nfe_backward=r.number("nfe_backward"),
                                 eval_nfe_forward=ef, nfe_cut_train=cut_train, nfe_cut_eval=cut_eval,
                                 test_kinetic=r.number("test_kinetic"), test_jacobian=r.number("test_jacobian"), t1=r.number("t1"),
                                 sec_per_step=r.number("sec_per_step"), wall_time=r.number("wall_time"), run_id=r.id,
                                 run_dir=str(r.path)))
            curves.setdefault(data, []).append((label, read_metrics(r.path)))
            rep.mark([r], "FFJORD regularisation")
    rep.add("#### Regularisation: RNODE (kinetic + Jacobian) against unregularised FFJORD", "")
    rep.add(*md_table(["data", "regularisers", "test NLL (nats)", "val NLL", "true density's NLL", "Δ NLL",
                       "NFE-F / step",
                       "NFE-B / step", "eval NFE-F", "NFE-F cut (train)", "NFE-F cut (eval)", "test ∫|f|²",
                       "test ∫|J|²_F", "t1", "s / step", "budget", "run"], rows_md))
    rep.add(f"CSV: `{rep.csv('ffjord_regularisation.csv', rows_csv)}`. NFE-F / step: mean over training; eval NFE-F: "
            "the final evaluation's solve (exact trace, model.eval_tol). Cut: the unregularised run's NFE over the "
            "regularised one's. Δ NLL: regularised minus unregularised (RNODE's target: NFE cut ≥ 2× at "
            "|Δ NLL| ≤ 0.05). The regularisers on the test set are the exact integrals of |f|² and |df/dz|²_F over "
            "the flow.", "")
    fig, axes = plt_figure(1, len(curves), figsize=(4 * len(curves), 3.3), squeeze=False)
    for ax, (data, lines) in zip(axes[0], curves.items()):
        for i, (label, rows) in enumerate(lines):   # one colour per setting: train solid, evaluation dashed
            rows = [x for x in rows if x.get("nfe_forward") is not None]
            ax.plot([x["step"] for x in rows], [x["nfe_forward"] for x in rows], "o-", ms=3, color=f"C{i}",
                    label=f"train, {label}")
            ax.plot([x["step"] for x in rows], [x.get("eval_nfe_forward") for x in rows], "x--", ms=3,
                    color=f"C{i}", label=f"eval, {label}")
        ax.set(xlabel="step", ylabel="NFE-F", title=data)
        ax.legend(fontsize=6)
    fig.tight_layout()
    rep.add(f"NFE-F over training (train: mean per step since the previous evaluation; eval: the evaluation's "
            f"solve): ![FFJORD NFE over training]({rep.savefig(fig, 'ffjord_nfe.png')})", "")


VAL_MARGIN = 0.05   # nats: RNODE's criterion, "within 0.05 nats of the unregularised NLL"


def choose_lambda(val: dict, margin: float = VAL_MARGIN):
    """The regularisation weight the validation split picks: among the λ = (λ_K, λ_J) > 0 whose mean val NLL is
    within `margin` nats of the unregularised runs' (both means over the seeds the two share), the largest
    (by λ_K + λ_J, then λ_K); None when none qualifies. `val` maps λ to {seed: val_nll}; (0.0, 0.0) is
    unregularised and must be present. Chosen this way, no test number takes part in the choice."""
    plain, chosen = val[(0.0, 0.0)], None
    for lam, by_seed in val.items():
        shared = [s for s in by_seed if s in plain]
        if lam == (0.0, 0.0) or not shared:
            continue
        gap = sum(by_seed[s] - plain[s] for s in shared) / len(shared)
        if gap <= margin and (chosen is None or (sum(lam), lam) > (sum(chosen), chosen)):
            chosen = lam
    return chosen


def _lambda_selection(rep: Page, runs) -> None:
    """RNODE's λ chosen on the validation split (choose_lambda), then the test NLL and NFE of that λ only,
    against the unregularised runs of the same seeds: per data set, budget, trace, solver and flow-time setting."""
    groups: dict[tuple, dict] = {}
    for r in runs:
        key = (r.setting("dataset.name"), r.steps, r.setting("model.trace"), r.setting("solver.method"), r.setting("solver.rtol"),
               r.setting("model.learn_t1"))
        groups.setdefault(key, {}).setdefault(_lam(r), {})[r.setting("seed")] = r   # one run per seed (the last found)
    groups = {k: g for k, g in groups.items() if (0.0, 0.0) in g and len(g) > 1}
    if not groups:
        return
    rows_md, rows_csv, missing = [], [], []
    for (data, steps, trace, method, rtol, learn_t1), g in sorted(groups.items(), key=lambda kv: str(kv[0])):
        val = {lam: {s: r.number("val_nll") for s, r in by_seed.items() if r.number("val_nll") is not None}
               for lam, by_seed in g.items()}
        if not val[(0.0, 0.0)]:
            missing.append(f"{data} ({steps} steps)")
            continue
        lam = choose_lambda(val)
        tried = ", ".join(f"{k:g}/{j:g}" for k, j in sorted(g, key=lambda x: (sum(x), x)) if (k, j) != (0.0, 0.0))
        if lam is None:
            rows_md.append([data, steps, tried, f"none within {VAL_MARGIN:g} nats"] + [""] * 7
                           + [rep.ids([r for by_seed in g.values() for r in by_seed.values()])])
            rows_csv.append(dict(dataset=data, steps=steps, trace=trace, method=method, rtol=rtol,
                                 learn_t1=learn_t1, lambdas_tried=tried, chosen=None))
            continue
        seeds = sorted(s for s in val[lam] if s in val[(0.0, 0.0)])
        plain, reg = [g[(0.0, 0.0)][s] for s in seeds], [g[lam][s] for s in seeds]
        rep.mark(plain + reg, "RNODE λ chosen on validation")
        dval = sum(val[lam][s] - val[(0.0, 0.0)][s] for s in seeds) / len(seeds)
        dtest = [b.number("test_nll") - a.number("test_nll") for a, b in zip(plain, reg)]
        cut_train = mean(plain, "nfe_forward") / mean(reg, "nfe_forward")
        cut_eval = mean(plain, "eval_nfe_forward") / mean(reg, "eval_nfe_forward")
        close = sum(dtest) / len(dtest) <= VAL_MARGIN
        verdict = "; ".join(f"{where}: {'yes' if close and cut >= 2 else 'no'}"
                            for where, cut in (("train", cut_train), ("eval", cut_eval)))
        rows_md.append([data, steps, tried, f"{lam[0]:g}/{lam[1]:g} (val Δ {dval:+.3f})", ", ".join(map(str, seeds)),
                        _interval([r.number("test_nll") for r in plain], plain[0].number("test_nll_stderr")),
                        _interval([r.number("test_nll") for r in reg], reg[0].number("test_nll_stderr")),
                        ("+" if sum(dtest) >= 0 else "") + _interval(dtest, None),
                        f"{fmt(mean(plain, 'nfe_forward'), '.1f')} → {fmt(mean(reg, 'nfe_forward'), '.1f')} "
                        f"({cut_train:.2f}×)",
                        f"{fmt(mean(plain, 'eval_nfe_forward'), '.0f')} → "
                        f"{fmt(mean(reg, 'eval_nfe_forward'), '.0f')} ({cut_eval:.2f}×)", verdict, rep.ids(plain + reg)])
        rows_csv.append(dict(dataset=data, steps=steps, trace=trace, method=method, rtol=rtol, learn_t1=learn_t1,
                             lambdas_tried=tried, chosen=f"{lam[0]:g}/{lam[1]:g}", kinetic=lam[0], jacobian=lam[1],
                             seeds=" ".join(map(str, seeds)), val_delta_nll=dval,
                             test_nll_plain=mean(plain, "test_nll"), test_nll_chosen=mean(reg, "test_nll"),
                             test_delta_nll=sum(dtest) / len(dtest), nfe_forward_plain=mean(plain, "nfe_forward"),
                             nfe_forward_chosen=mean(reg, "nfe_forward"), nfe_cut_train=cut_train,
                             eval_nfe_forward_plain=mean(plain, "eval_nfe_forward"),
                             eval_nfe_forward_chosen=mean(reg, "eval_nfe_forward"), nfe_cut_eval=cut_eval,
                             claim_train=close and cut_train >= 2, claim_eval=close and cut_eval >= 2,
                             **run_fields(plain + reg)))
    rep.add("#### RNODE's λ chosen on the validation split, then its test NLL and NFE", "")
    if rows_md:
        rep.add(*md_table(["data", "steps", "λ_K/λ_J tried", "chosen (val Δ NLL)", "seeds", "test NLL, none (95%)",
                           "test NLL, chosen (95%)", "Δ test NLL (paired, 95%)", "NFE-F / step (cut)",
                           "eval NFE-F (cut)", "2× at ≤ 0.05 nats?", "runs"], rows_md))
        rep.add(f"CSV: `{rep.csv('ffjord_lambda_selection.csv', rows_csv)}`. Rule: the largest λ (λ_K + λ_J) "
                f"whose mean validation NLL (`val_nll`, dataset.val_size points from dataset.val_seed, never the "
                f"test set) is within {VAL_MARGIN:g} nats of the unregularised runs' over the same seeds; only that "
                "λ's test numbers are shown. 95% intervals: Student's t over seeds, or with one seed 1.96 × the "
                "test-set standard error; Δ test NLL: chosen minus unregularised, paired by seed (the same training "
                "draws and test set). Cut: the unregularised mean NFE over the chosen λ's. 2× at ≤ 0.05 nats: "
                "the mean Δ test NLL ≤ 0.05 and the cut ≥ 2×, in training and at evaluation.", "")
    if missing:
        rep.add(f"No λ chosen for {', '.join(missing)}: the unregularised runs have no `val_nll` (made before "
                "dataset.val_size existed, or with dataset.val_size=0).", "")


def _loss(run: Run) -> str:
    return run.setting("model.loss", "mle")   # runs made before model.loss existed trained by maximum likelihood


MARGIN = 0.05   # nats: "reaches the NLL" means within MARGIN of the best objective's mean final test NLL
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _objective_label(run: Run) -> str:
    lam = _lam(run)
    return _loss(run) + (f" + RNODE (λ_K {lam[0]:g}, λ_J {lam[1]:g})" if lam != (0.0, 0.0) else "")


def _interval(values: list, stderr: float | None) -> str:
    """mean ± the half-width of a 95% interval: Student's t over seeds, or, with one seed, 1.96 test-set s.e."""
    m = sum(values) / len(values)
    if len(values) > 1:
        sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
        return f"{m:.3f} ± {T975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values)):.3f}"
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


def _objectives(rep: Page, runs) -> None:
    """Flow matching (model.loss=cfm|otcfm) against maximum likelihood (with and without RNODE) on each data set
    that has flow-matching runs: per objective (its longest-budget runs, seeds averaged) the final test NLL, the
    gap to the true density's, the NFE of the likelihood and of sampling at evaluation, s / step, and the time each
    run took to first reach within MARGIN of the best objective's NLL; then the NLL over time as a figure."""
    datasets = sorted({r.setting("dataset.name") for r in runs if _loss(r) != "mle"})
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
                        _interval(nll, used[0].number("test_nll_stderr")), fmt(floor, ".3f"),
                        fmt(mean(used, "test_nll") - floor, "+.3f") if floor is not None else "–",
                        fmt(mean(used, "eval_nfe_forward"), ".0f"), fmt(mean(used, "eval_nfe_sample"), ".0f"),
                        fmt(mean(used, "nfe_forward"), ".1f"), fmt(mean(used, "sec_per_step"), ".4f"),
                        used[0].steps, f"{fmt(reach_train, '.1f')} ({len(got)}/{len(used)})",
                        fmt(reach_wall, ".0f"), fmt(mean(used, "wall_time"), ".0f"), rep.ids(used)])
        for r, hit in zip(used, hits):
            numbers = {k: r.number(k) for k in ("test_nll", "test_nll_stderr", "test_nll_data", "eval_nfe_forward",
                                                "eval_nfe_sample", "nfe_forward", "nfe_backward", "sec_per_step")}
            rows_csv.append(dict(dataset=data, objective=label, loss=_loss(r), seed=r.setting("seed"), steps=r.steps,
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


def sections() -> tuple:
    """This family's sections of node-report, in order."""
    return (flows,)
