"""The flows sections of node-report (paper section 4): Figures 5-6 (maximum likelihood, the paper setting),
Figure 4 (density matching: the paper setting's cells, then each cell's best run over the settings tried, as
docs/families/flows.md tunes the NF's learning rate and the CNF's flow time) and the seminorm adjoint's NFE-B; then,
beyond the paper, FFJORD and RNODE (report_ffjord.py) and flow matching (report_fm.py), when such runs are present."""
from __future__ import annotations

import math

from ...core.page import Page, mean, plt_figure, run_fields, select, steps_cell
from ...core.tables import fmt, md_table
from ...core.runs import Run
from .report_ffjord import ffjord


def flows(rep: Page) -> None:
    runs = rep.section("## Figures 4-6: continuous normalizing flows in 2-D (paper section 4)", "flows", "flow",
                       "`scripts/flows_tables.sh`")
    if not runs:
        return
    _flows_ml(rep, [r for r in runs if r.setting("dataset.name") in ("circles", "moons")])
    _flows_density(rep, [r for r in runs if r.setting("dataset.name") == "density"])
    _best_of_settings(rep, runs)
    _seminorm(rep, runs)
    ffjord(rep, [r for r in runs if r.model == "ffjord"])


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


def sections() -> tuple:
    """This family's sections of node-report, in order."""
    return (flows,)
