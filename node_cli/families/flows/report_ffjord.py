"""The FFJORD part of node-report's flows section (beyond the paper): RNODE's regularisers against the
unregularised FFJORD (NFE and test NLL, with the NFE over training as a figure), RNODE's λ chosen on the validation
split (`choose_lambda`), flow matching (report_fm.py) and the dimension-scaling table of `node-bench ffjord`."""
from __future__ import annotations

import csv
from pathlib import Path

from ...core.page import Page, limited, mean, plt_figure, run_fields
from ...core.rundir import read_metrics
from ...core.tables import fmt, md_table
from .report_fm import interval, objectives, run_lambdas, run_loss


def ffjord(rep: Page, runs) -> None:
    """RNODE's regularisers against the unregularised FFJORD (same data, budget, trace and solver), and the
    exact-against-Hutchinson table of `node-bench ffjord` found under the report's folders."""
    traces = sorted({p.resolve() for d in rep.dirs for p in Path(d).rglob("ffjord_trace.csv")})
    if not runs and not traces:
        return
    rep.add("### FFJORD: free-form CNF, Hutchinson's trace, RNODE regularisers (beyond the paper)", "")
    _ffjord_regularisation(rep, [r for r in runs if r.ok and run_loss(r) == "mle"])
    _lambda_selection(rep, [r for r in runs if r.ok and not limited(r) and run_loss(r) == "mle"])
    objectives(rep, [r for r in runs if r.ok])
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
        groups.setdefault(key, {}).setdefault(run_lambdas(r), []).append(r)
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
        groups.setdefault(key, {}).setdefault(run_lambdas(r), {})[r.setting("seed")] = r   # one run per seed (the last found)
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
                        interval([r.number("test_nll") for r in plain], plain[0].number("test_nll_stderr")),
                        interval([r.number("test_nll") for r in reg], reg[0].number("test_nll_stderr")),
                        ("+" if sum(dtest) >= 0 else "") + interval(dtest, None),
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
