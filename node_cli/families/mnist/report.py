"""The MNIST sections of node-report: Table 1, Figure 3 (ODE-Net statistics, with `tolsweep`) and memory
against depth, each beside the paper's values (paper section 3)."""
from __future__ import annotations

import json
from pathlib import Path

from ...core import stats
from ...core.checks import one_line
from ...core.page import Page, mean, plt_figure, run_fields, select
from ...core.tables import fmt, md_table, pct

MiB = 2 ** 20
# Table 1 of the paper: label, model, test error, parameters, memory, time.
PAPER_TABLE1 = [
    ("1-layer MLP", "mlp", 0.0160, 0.24e6, "–", "–"),
    ("ResNet", "resnet", 0.0041, 0.60e6, "O(L)", "O(L)"),
    ("RK-Net", "rknet", 0.0047, 0.22e6, "O(L̃)", "O(L̃)"),
    ("ODE-Net", "odenet", 0.0042, 0.22e6, "O(1)", "O(L̃)"),
]
# Epoch-matched third-party test errors (paper.md: skalermo/pytorch-mnist logs of the same networks, dopri5 1e-3,
# SGD momentum 0.9, constant lr 0.01, no augmentation, batch 128): {model: {epochs trained: test error}}.
EPOCH_MATCHED = {
    "odenet": {1: 0.0247, 2: 0.0159, 5: 0.0113, 10: 0.0083, 30: 0.0063},
    "resnet": {1: 0.0183, 2: 0.0176, 5: 0.0101, 10: 0.0096, 30: 0.0040},
    "rknet": {1: 0.0288, 2: 0.0119, 5: 0.0108, 10: 0.0072, 30: 0.0065},
}
SWEEP = "tolsweep.json"   # what `node-report tolsweep` writes (tolsweep.py)
# Table 1's claims about test error, as comparisons over seeds (A, B, claim, margin in percentage points): the
# ODE-Net and the RK-Net match the ResNet (the paper: 0.42% and 0.47% against 0.41%) with a third of its
# parameters, and every convolutional network is below the MLP.
ORDERINGS = (("odenet", "resnet", "within", 0.3), ("rknet", "resnet", "within", 0.3),
             ("odenet", "mlp", "lower", 0.0), ("resnet", "mlp", "lower", 0.0))


def table1(rep: Page) -> None:
    if not rep.section("## Table 1: MNIST (paper section 3)", "mnist", "MNIST",
                       "`scripts/table1.sh` (quick budget) or `FULL=1 scripts/table1.sh`"):
        return
    rows_md, rows_csv, has_steps, cells = [], [], False, {}
    for label, model, p_err, p_params, p_mem, p_time in PAPER_TABLE1:
        used, skipped = select(rep.paper_setting(rep.of("mnist", model)))
        rep.mark(used, "Table 1")
        cells[model] = (label, used)
        err, params = mean(used, "test_error"), mean(used, "params")
        act, peak = mean(used, "activation_bytes"), mean(used, "peak_memory_bytes")
        sps, nf, nb = mean(used, "sec_per_step"), mean(used, "nfe_forward"), mean(used, "nfe_backward")
        sa, sr = mean(used, "solver_accepted"), mean(used, "solver_rejected")   # runs from before these: None
        has_steps = has_steps or sa is not None
        steps, epochs = (used[0].steps, used[0].summary.get("epochs")) if used else (None, None)
        examples = mean(used, "test_examples")
        matched = epoch_matched(model, used)
        budget = (f"{steps} steps" + (f" ({epochs} epochs)" if epochs else "")
                  + (", cosine lr" if used[0].setting("trainer.schedule") == "cosine" else "")) if used else "no finished run"
        if examples is not None and examples != 10000:
            budget += f", {int(examples)} test images"
        rows_md.append([label, pct(err), pct(p_err), fmt(params, ",.0f"), f"{p_params / 1e6:.2f}M",
                        fmt(act and act / MiB, ".2f"), fmt(peak and peak / MiB, ".2f"), p_mem, fmt(sps, ".3f"),
                        p_time, f"{fmt(nf, '.1f')} / {fmt(nb, '.1f')}" if used else "–",
                        f"{fmt(sa, '.1f')} / {fmt(sr, '.1f')}" if sa is not None else "–",
                        f"{pct(matched[1])} (epoch {matched[0]})" if matched else "–", budget,
                        rep.runs_cell(used, skipped)])
        rows_csv.append(dict(model=label, model_name=model, test_error=err, paper_test_error=p_err, params=params,
                             paper_params=p_params, activation_bytes=act, peak_memory_bytes=peak,
                             paper_memory=p_mem, sec_per_step=sps, paper_time=p_time, nfe_forward=nf,
                             nfe_backward=nb, solver_accepted=sa, solver_rejected=sr, steps=steps, epochs=epochs,
                             test_examples=examples, epoch_matched_epoch=matched and matched[0],
                             epoch_matched_test_error=matched and matched[1],
                             **run_fields(used)))
    header = ["model", "test error", "paper", "params", "paper", "activation MiB", "peak MiB", "paper memory",
              "s / step", "paper time", "NFE-F / NFE-B", "steps acc./rej.", "third-party, epoch-matched", "budget",
              "runs"]
    if not has_steps:   # no run records solver steps (runs made before they were counted): no such column
        header.remove("steps acc./rej.")
        rows_md = [row[:11] + row[12:] for row in rows_md]
    rep.add(*md_table(header, rows_md))
    rep.add(f"CSV: `{rep.csv('table1.csv', rows_csv)}`. Activation MiB: bytes autograd saves for backward in one "
            "training step (batch of the run); peak MiB: the step's peak allocation above its start "
            f"({_methods(rep.of('mnist', ok_only=True))}). NFE-F / NFE-B: function evaluations per training step, "
            "averaged over the run; without the adjoint NFE-B is 0 by construction"
            + ("; steps acc./rej.: accepted / rejected steps of the forward solves per training step (adaptive "
               "Runge-Kutta solvers only: 0 for fixed-grid solvers and models without an ODE block)"
               if has_steps else "") + ". Third-party, epoch-matched: the test error of the same network in "
            "skalermo/pytorch-mnist's logs (constant lr 0.01, no augmentation) after the most epochs it logged (1, 2, 5, "
            "10, 30) not beyond ours (full training set only). Paper memory/time are "
            "asymptotic (L layers, L̃ evaluations); the memory figure below measures them.", "")
    comparisons(rep, cells)


def comparisons(rep: Page, cells: dict) -> None:
    """Table 1's claims about test error over seeds (core/stats.py): paired by seed, since every seed trains on
    the same MNIST and is scored on the same test images."""
    lines, rows = [], []
    for a, b, claim, margin in ORDERINGS:
        if cells.get(a, (0, []))[1] and cells.get(b, (0, []))[1]:
            md, row = stats.comparison(cells[a], cells[b], "test_error", claim, margin, spec=".2f", scale=100,
                                       unit=" points")
            lines.append(md)
            rows.append(row)
    if lines:
        used = [r for _, runs in cells.values() for r in runs]
        rep.add("### Table 1's claims over seeds (test error in %)", "",
                "Runs pair by seed (the same training and test images for every seed; the seed changes the "
                "initialisation, the crops and the batch order); the 95% interval is the paired t interval of the "
                "mean difference, and a claim is established when the interval lies inside it.", "",
                *md_table(stats.COLUMNS, lines),
                f"CSV: `{rep.csv('table1_comparisons.csv', rows)}`. Made from: {stats.machines(used)}.", "")


def epoch_matched(model: str, runs) -> tuple[int, float] | None:
    """(epochs, test error) of the third-party log at the most epochs not beyond the runs' completed epochs; None
    without runs, for a subset of the training set, or before the first logged epoch."""
    epochs = [r.summary.get("epochs") or 0 for r in runs if r.setting("dataset.limit") is None]
    if not epochs or len(epochs) < len(runs):
        return None
    logged = [e for e in EPOCH_MATCHED.get(model, {}) if e <= min(epochs)]
    return (max(logged), EPOCH_MATCHED[model][max(logged)]) if logged else None


def _methods(runs) -> str:
    methods = sorted({str(r.summary.get("peak_memory_method")) for r in runs if r.summary.get("peak_memory_method")})
    return ", ".join(methods) or "no measurement"


def tolerance_sweeps(rep: Page) -> list[dict]:
    """Every tolerance sweep under the report's folders; an unreadable one, or one whose run was not scanned, is a
    problem of the report."""
    sweeps, seen = [], set()
    for d in rep.dirs:
        for f in sorted(Path(d).rglob(SWEEP)) if Path(d).is_dir() else []:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            try:
                data = json.loads(f.read_text())
            except ValueError as exc:
                rep.messages.append(f"{f}: unreadable tolerance sweep ({one_line(exc, 200)})")
                continue
            data["file"] = str(f.resolve())
            if data.get("kind") != "tolsweep":
                continue
            if Path(data.get("run_dir", "")) not in rep.by_path:
                rep.messages.append(f"tolerance sweep {rep.where(data['file'])}: its run {data.get('run_dir')} is "
                                    "not among the scanned runs (plotted under its folder name)")
            sweeps.append(data)
    return sweeps


def figure3(rep: Page) -> None:
    rep.add("## Figure 3: ODE-Net statistics (paper section 3)", "")
    sweeps = tolerance_sweeps(rep)
    swept = {Path(s.get("run_dir", "")) for s in sweeps}
    odes = [r for r in rep.of("mnist", "odenet", ok_only=True) if r.path in swept or not rep.differences(r)]
    if not odes and not sweeps:
        rep.add("No finished ODE-Net run found. Make one with `scripts/figure3.sh`.", "")
        return
    fig, axes = plt_figure(2, 2, figsize=(10, 8))
    (a, b), (c, d) = axes
    rows = _sweep_panels(rep, sweeps, a, b, c)
    train_rows = _training_panels(rep, odes, c, d)
    hi = max([1] + [r["step_nfe_forward"] for r in rows] + [r["nfe_forward"] for r in train_rows])
    c.plot([0, hi], [0, hi / 2], color="0.7", lw=1, ls=":", label="NFE-B = NFE-F / 2 (paper: about half)")
    c.set(xlabel="NFE-F", ylabel="NFE-B")
    c.legend(fontsize=7)
    d.set(xlabel="training step", ylabel="NFE per training step")
    if train_rows:
        d.legend(fontsize=7)
    for ax, tag in zip(axes.flat, "abcd"):
        ax.set_title(f"({tag})", loc="left")
    fig.tight_layout()
    rep.add(f"![Figure 3]({rep.savefig(fig, 'figure3.png')})", "")
    if rows:
        rep.csv("figure3_tolsweep.csv", rows)
    if train_rows:
        rep.csv("figure3_training.csv", train_rows)
    _sweep_list(rep, sweeps)
    backward_table(rep, sweeps)
    claims = _claims(rep, odes, sweeps)
    if claims:
        rep.add("Numbers behind the panels, beside the paper's claims (NFE grows over training; NFE falls as the "
                "tolerance loosens while the error grows; NFE-B is about half of NFE-F with the adjoint):", "",
                *md_table(["run", "source", "NFE-F", "NFE-B / NFE-F (paper ≈ 0.5)", "numerical error"], claims))
    rep.add("(a) NFE-F against the numerical error of the ODE block's output as the tolerance varies; (b) NFE-F "
            "against wall time of a forward pass (relative to the fastest); (c) NFE-B against NFE-F per training "
            "step (paper: backward about half of forward); (d) NFE per training step over training (paper: it grows). "
            "Points in (c)-(d) marked 'training' are the runs' metrics.jsonl windows (CSV `figure3_training.csv`).",
            "")


def _sweep_panels(rep: Page, sweeps: list, a, b, c) -> list[dict]:
    """Panels (a)-(b), and the sweeps' points of (c), from the tolerance sweeps; their rows (figure3_tolsweep.csv)."""
    rows = []
    for s in sweeps:
        run = rep.by_path.get(Path(s.get("run_dir", "")))
        label = run.id if run else Path(s.get("run_dir", "?")).name
        if run:
            rep.mark([run], "Figure 3 (a-c)")
        pts = sorted(s.get("rows", []), key=lambda r: r["nfe_forward"])
        nfe_f = [p["nfe_forward"] for p in pts]
        fastest = min((p["forward_seconds"] for p in pts), default=1.0) or 1.0
        a.plot([p["error_rms"] for p in pts], nfe_f, "o-", label=label)
        b.plot(nfe_f, [p["forward_seconds"] / fastest for p in pts], "o-", label=label)
        c.plot([p["step_nfe_forward"] for p in pts], [p["step_nfe_backward"] for p in pts], "o-",
               label=f"{label}: tolerance sweep")
        for p in pts:
            rows.append(dict(run_id=label, run_dir=s.get("run_dir"), sweep_file=s.get("file"), **p))
        for variant, vpts in _variants(s).items():
            c.plot([p["step_nfe_forward"] for p in vpts], [p["step_nfe_backward"] for p in vpts], ".--", lw=1,
                   label=f"{label}: adjoint, {variant}")
    if sweeps:
        from matplotlib.ticker import NullFormatter
        a.set(xscale="log", xlabel="numerical error (RMS of h(t1) vs float64 reference)", ylabel="NFE-F")
        a.xaxis.set_minor_formatter(NullFormatter())
        b.set(xlabel="NFE-F", ylabel="forward time relative to the fastest")
        a.legend(fontsize=8)
        b.legend(fontsize=8)
    else:
        for ax in (a, b):
            ax.text(0.5, 0.5, "no tolerance sweep:\nnode-report tolsweep RUN_DIR", ha="center", va="center",
                    transform=ax.transAxes)
    return rows


def _training_panels(rep: Page, odes: list, c, d) -> list[dict]:
    """Panel (d), and the training points of (c), from the runs' metrics; their rows (figure3_training.csv)."""
    train_rows = []
    for run in odes:
        rep.mark([run], "Figure 3 (d)")
        pts = [m for m in run.metrics if m.get("nfe_forward") is not None and m.get("step")]
        d.plot([m["step"] for m in pts], [m["nfe_forward"] for m in pts], "o-", ms=3, label=f"{run.id} NFE-F")
        if any(m.get("nfe_backward") for m in pts):
            d.plot([m["step"] for m in pts], [m["nfe_backward"] for m in pts], "x--", ms=3, label=f"{run.id} NFE-B")
        c.scatter([m["nfe_forward"] for m in pts], [m.get("nfe_backward") or 0 for m in pts], s=10, alpha=0.6,
                  label=f"{run.id}: training")
        train_rows += [dict(run_id=run.id, run_dir=str(run.path), step=m["step"], epoch=m.get("epoch"),
                            nfe_forward=m["nfe_forward"], nfe_backward=m.get("nfe_backward")) for m in pts]
    return train_rows


def _sweep_list(rep: Page, sweeps: list) -> None:
    """The tolerance sweeps behind panels (a)-(b), or how to make one."""
    if not sweeps:
        rep.add("Panels (a)-(b) need a tolerance sweep of a trained ODE-Net: `node-report tolsweep RUN_DIR`, "
                "then rerun node-report on a folder that contains RUN_DIR.", "")
        return
    lines = []
    for s in sweeps:
        run = rep.by_path.get(Path(s.get("run_dir", "")))
        lines.append([run.id if run else "(not scanned)", rep.where(s.get("file", "")), s.get("checkpoint_step"),
                      "adjoint" if s.get("adjoint") else "backprop", s.get("batch"),
                      f"{s.get('reference_tol')} ({s.get('reference_dtype')}, NFE {s.get('reference_nfe')})",
                      s.get("device")])
    rep.add("Tolerance sweeps (`node-report tolsweep`, CSV `figure3_tolsweep.csv`):", "",
            *md_table(["run", "sweep file", "checkpoint step", "gradient", "batch", "reference tol", "device"],
                      lines))


def _claims(rep: Page, odes: list, sweeps: list) -> list[list]:
    """The numbers behind the panels, a row per run's training and per tolerance sweep."""
    claims = []
    for run in odes:
        pts = [m for m in run.metrics if m.get("nfe_forward") and m.get("step")]
        if pts:
            f0, f1 = pts[0]["nfe_forward"], pts[-1]["nfe_forward"]
            ratio = [m["nfe_backward"] / m["nfe_forward"] for m in pts if m.get("nfe_backward") is not None]
            claims.append([run.id, "training (metrics.jsonl)", f"{f0:.1f} → {f1:.1f} (steps {pts[0]['step']} → "
                           f"{pts[-1]['step']})", fmt(sum(ratio) / len(ratio) if ratio else None, ".2f"), "–"])
    for s in sweeps:
        run = rep.by_path.get(Path(s.get("run_dir", "")))
        pts = sorted(s.get("rows", []), key=lambda r: r["tol"])
        if pts:
            ratio = [p["step_nfe_backward"] / p["step_nfe_forward"] for p in pts if p["step_nfe_forward"]]
            claims.append([run.id if run else "?", f"tolerance sweep {pts[-1]['tol']:g} → {pts[0]['tol']:g}",
                           f"{pts[-1]['nfe_forward']} → {pts[0]['nfe_forward']}",
                           fmt(sum(ratio) / len(ratio) if ratio else None, ".2f"),
                           f"{pts[-1]['error_rms']:.2e} → {pts[0]['error_rms']:.2e}"])
    return claims


def memory(rep: Page) -> None:
    rep.add("## Memory against depth (paper Table 1, memory column)", "")
    series: dict[str, list] = {}
    for run in rep.of("mnist", ok_only=True):
        if run.number("activation_bytes") is None:
            continue
        if run.model == "resnet":
            name, depth = "ResNet: residual blocks L", run.setting("model.blocks")
        elif run.model in ("odenet", "rknet"):
            adj = bool(run.setting("solver.adjoint"))
            name = ("ODE-Net (adjoint): NFE-F L̃" if adj else
                    ("RK-Net (backprop through the solver): NFE-F L̃" if run.model == "rknet"
                     else "ODE-Net without adjoint: NFE-F L̃"))
            depth = run.number("memory_step_nfe_forward")
        else:
            continue
        if depth is not None:
            series.setdefault(name, []).append((float(depth), run))
    if not series:
        rep.add("No finished ResNet, RK-Net or ODE-Net run with a memory measurement. Make them with "
                "`scripts/memory.sh`.", "")
        return
    fig, (a, b) = plt_figure(1, 2, figsize=(11, 4.2))
    rows, summary = [], []
    claims = {"ResNet": "O(L)", "RK-Net": "O(L̃)", "ODE-Net (adjoint)": "O(1)", "ODE-Net without": "O(L̃)"}
    for name, pts in sorted(series.items()):
        pts.sort(key=lambda p: p[0])
        rep.mark([r for _, r in pts], "memory figure")
        xs = [x for x, _ in pts]
        act = [r.number("activation_bytes") / MiB for _, r in pts]
        peak = [(r.number("peak_memory_bytes") or 0) / MiB for _, r in pts]
        a.plot(xs, act, "o-", label=name)
        b.plot(xs, peak, "o-", label=name)
        for (x, r), m1, m2 in zip(pts, act, peak):
            rows.append(dict(series=name, depth=x, activation_mib=m1, peak_mib=m2, solver_rtol=r.setting("solver.rtol"),
                             model_blocks=r.setting("model.blocks"), run_id=r.id, run_dir=str(r.path)))
        claim = next((v for k, v in claims.items() if name.startswith(k)), "–")
        summary.append([name.split(":")[0], f"{xs[0]:g} – {xs[-1]:g}", f"{act[0]:.2f} – {act[-1]:.2f}",
                        fmt(_slope(xs, act), ".3f"), claim, rep.ids([r for _, r in pts])])
    a.set(xlabel="depth: residual blocks (ResNet) or NFE-F of the step (ODE solvers)",
          ylabel="activation memory (MiB saved for backward)", ylim=(0, None))
    b.set(xlabel="depth: residual blocks (ResNet) or NFE-F of the step (ODE solvers)",
          ylabel="peak memory of one step (MiB)", ylim=(0, None))
    a.legend(fontsize=7)
    fig.tight_layout()
    rep.add(f"![memory]({rep.savefig(fig, 'memory.png')})", "")
    rep.add(*md_table(["model", "depth range", "activation MiB", "MiB per unit of depth (fit)", "paper", "runs"],
                      summary))
    rep.add(f"CSV: `{rep.csv('memory.csv', rows)}`. Depth of an ODE solver is the NFE-F of the measured step "
            "(it varies with solver.rtol); of a ResNet, model.blocks. The paper's claim: constant memory with the "
            "adjoint, memory growing with evaluations when backpropagating through the solver, and with layers "
            "for a ResNet.", "")


def _slope(xs, ys):
    """Least-squares slope of ys against xs (None with fewer than two distinct depths)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else None


def sections() -> tuple:
    """This family's sections of node-report, in order."""
    return (table1, figure3, memory)


def _variants(sweep: dict) -> dict[str, list[dict]]:
    """The backward study's rows of a sweep by variant (default, seminorm, loose), each sorted by NFE-F."""
    out: dict[str, list[dict]] = {}
    for row in (sweep.get("backward") or {}).get("rows", []):
        out.setdefault(row["variant"], []).append(row)
    return {k: sorted(v, key=lambda r: r["step_nfe_forward"]) for k, v in out.items()}


def backward_table(rep: Page, sweeps: list[dict]) -> None:
    """Figure 3 (c) in numbers: NFE-B / NFE-F and the gradient error of each adjoint variant at every tolerance."""
    rows_csv = []
    for s in sweeps:
        variants = _variants(s)
        if not variants:
            continue
        run = rep.by_path.get(Path(s.get("run_dir", "")))
        names = list(variants)
        by_tol: dict[float, dict] = {}
        for name in names:
            for r in variants[name]:
                by_tol.setdefault(r["tol"], {})[name] = r
                rows_csv.append(dict(run_id=run.id if run else None, run_dir=s.get("run_dir"), **r))
        lines = []
        for tol in sorted(by_tol, reverse=True):
            cells = by_tol[tol]
            nf = next(iter(cells.values()))["step_nfe_forward"]
            lines.append([f"{tol:g}", nf] + [f"{fmt(cells[n]['ratio'], '.2f')} ({cells[n]['grad_error']:.1e})"
                                             if n in cells else "–" for n in names])
        b = s["backward"]
        rep.add(f"Backward pass of {run.id if run else s.get('run_dir')} (Figure 3 (c) in numbers): NFE-B / NFE-F of "
                "one training step by the adjoint, and in brackets the gradient's relative error |g - g_ref| / "
                f"|g_ref| against a float64 gradient at tolerance {b.get('reference_tol'):g} (NFE-F/B "
                f"{b.get('reference_nfe_forward')}/{b.get('reference_nfe_backward')}) on the same batch of "
                f"{s.get('batch')} test images:", "",
                *md_table(["tol", "NFE-F"] + [f"{n}: NFE-B/F (gradient error)" for n in names], lines))
    if rows_csv:
        rep.csv("figure3_backward.csv", rows_csv)
        rep.add("The paper's NFE-B of about half NFE-F came from scipy's implicit Adams solver (LSODE/VODE), not "
                "torchdiffeq (torchdiffeq issue #97); torchdiffeq's dopri5 adjoint does not reproduce it at equal "
                f"tolerances. {_backward_summary(rows_csv)} CSV `figure3_backward.csv`.", "")


def _backward_summary(rows: list[dict]) -> str:
    """One sentence on the backward study's rows (every sweep): mean NFE-B / NFE-F of each variant, and the loose
    variant's gradient error against the default norm's (median over tolerances)."""
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    ratio = {v: sum(r["ratio"] for r in rs if r["ratio"] is not None) / len(rs) for v, rs in by.items()}
    text = "Averaged over the tolerances here, NFE-B / NFE-F is " + ", ".join(
        f"{ratio[v]:.2f} ({v})" for v in by) + "."
    loose = [v for v in by if v not in ("default", "seminorm")]
    if loose and "default" in by:
        default = {(r["run_dir"], r["tol"]): r["grad_error"] for r in by["default"]}
        factors = sorted(r["grad_error"] / default[(r["run_dir"], r["tol"])] for r in by[loose[0]]
                         if default.get((r["run_dir"], r["tol"])))
        if factors:
            text += (f" The looser backward solve ({loose[0]}) pays for its fewer evaluations with "
                     f"{factors[len(factors) // 2]:.1f}x the default norm's gradient error (median over tolerances): a "
                     "trade of gradient accuracy for evaluations, not a reproduction of the paper's ratio.")
    return text
