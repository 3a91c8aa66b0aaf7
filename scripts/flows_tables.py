"""Print the flow tables (test NLL on Two Circles / Two Moons, KL for U1-U4 at 2, 8, 32, seminorm NFE-B) from
every run under the given folders, and plot KL against K/M (Figure 4) into the first folder as kl_vs_size.png. Runs are identified by their .hydra/config.yaml, never by folder names;
when several runs share a cell, the newest is shown and the count is reported.

    python scripts/flows_tables.py outputs/flows_tables [more folders]
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from omegaconf import OmegaConf


def load_runs(roots):
    runs = []
    for root in roots:
        for summary in Path(root).rglob("summary.json"):
            config = summary.parent / ".hydra" / "config.yaml"
            if not config.exists():
                continue
            cfg = OmegaConf.load(config)
            s = json.loads(summary.read_text())
            if cfg.get("task") == "flow" and s.get("status") == "ok":
                runs.append((summary.stat().st_mtime, cfg, s))
    return sorted(runs, key=lambda r: r[0])


def size(cfg) -> int:
    return cfg.model.width if cfg.model.name == "cnf" else cfg.model.depth


def budget(cfg) -> str:
    t = cfg.trainer
    decay = " cosine" if t.get("schedule") == "cosine" else ""
    return f"{t.max_steps} x {t.batch_size}, {t.optimizer} lr {t.lr:g}{decay}"


def fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def cells(runs, key):
    """key(cfg) -> cell id or None; returns {cell: (newest run, count)}."""
    out = {}
    for _, cfg, s in runs:
        k = key(cfg)
        if k is not None:
            out[k] = ((cfg, s), out.get(k, (None, 0))[1] + 1)
    return out


def nll_table(runs):
    table = cells(runs, lambda c: (c.dataset.name, c.model.name, size(c), c.solver.adjoint_norm, c.trainer.max_steps,
                                   c.trainer.lr) if c.dataset.name != "density" else None)
    if not table:
        return
    print("Maximum likelihood: test NLL in nats on the fixed test set (+- standard error); data NLL: the true density")
    print(f"| data set | model | params | budget | test NLL | data NLL (floor) | NFE-F / NFE-B per step | s/step | runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (ds, model, k, norm, _, _), ((cfg, s), count) in sorted(table.items(), key=lambda kv: tuple(map(str, kv[0]))):
        label = f"{model.upper()} {'M' if model == 'cnf' else 'K'}={k}" + (" seminorm" if norm == "seminorm" else "")
        print(f"| {ds} | {label} | {s.get('params', 0):,} | {budget(cfg)} | {fmt(s['test_nll'])} +- "
              f"{fmt(s.get('test_nll_stderr'))} | {fmt(s.get('test_nll_data'))} | {fmt(s['nfe_forward'], 1)} / "
              f"{fmt(s['nfe_backward'], 1)} | {fmt(s['sec_per_step'], 3)} | {count} |")
    print()


SETTINGS = ("trainer.lr", "model.t1", "model.hidden", "solver.rtol")   # settings a cell's runs may differ in


def kl_table(runs, figure):
    """One table per training length; each cell shows its lowest-KL run, with the settings that differ between
    the cell's runs (the NF's lr sweep, the CNF's two flow times)."""
    density = [r for r in runs if r[1].dataset.name == "density"]
    lengths = sorted({cfg.trainer.max_steps for _, cfg, _ in density})
    for steps in lengths:
        table = {}
        for _, cfg, s in density:
            if cfg.trainer.max_steps == steps:
                table.setdefault((cfg.dataset.target, cfg.model.name, size(cfg)), []).append((cfg, s))
        best = {k: min(v, key=lambda r: r[1]["test_kl"]) for k, v in table.items()}
        columns = sorted({(m, k) for (_, m, k) in table}, key=lambda mk: (mk[0] != "nf", mk[1]))
        print(f"Density matching, {steps} steps: KL(q||p) in nats on the fixed base samples (log Z by quadrature)")
        print("| target | " + " | ".join(f"{m.upper()} {'K' if m == 'nf' else 'M'}={k}" for m, k in columns) + " |")
        print("|---|" + "---|" * len(columns))
        for target in sorted({t for (t, _, _) in table}):
            row = []
            for m, k in columns:
                runs_here = table.get((target, m, k), [])
                if not runs_here:
                    row.append("-")
                    continue
                cfg, s = best[(target, m, k)]
                varied = [k for k in SETTINGS if len({OmegaConf.select(r[0], k) for r in runs_here}) > 1]
                which = ", ".join(f"{k.split('.')[-1]} {OmegaConf.select(cfg, k):g}" for k in varied)
                row.append(fmt(s["test_kl"], 4 if s["test_kl"] < 0.1 else 3) + (f" ({which}; best of {len(runs_here)})" if varied else ""))
            print(f"| {target.upper()} | " + " | ".join(row) + " |")
        path = figure if steps == lengths[-1] else figure.with_name(f"{figure.stem}_{steps}{figure.suffix}")
        plot_kl({k: (v, 1) for k, v in best.items()}, columns, path)
        budgets = sorted({f"{c.model.name.upper()}: {budget(c)}" for v in table.values() for c, _ in v})
        pairs = [(t, k) for (t, m, k) in best if m == "cnf" and (t, "nf", k) in best]
        kl = {key: (s["test_kl"], s.get("test_kl_stderr") or 0.0) for key, (_, s) in best.items()}
        lower = sum(kl[(t, "cnf", k)][0] < kl[(t, "nf", k)][0] for t, k in pairs)
        clear = sum(kl[(t, "nf", k)][0] - kl[(t, "cnf", k)][0] > 2 * math.hypot(kl[(t, "cnf", k)][1], kl[(t, "nf", k)][1])
                    for t, k in pairs)
        print(f"budgets: {'; '.join(budgets)}; largest standard error "
              f"{max(s.get('test_kl_stderr') or 0 for (_, s) in best.values()):.3f}; "
              f"CNF below the NF's best at M = K in {lower} of {len(pairs)} pairs "
              f"({clear} by more than twice the combined standard error)")
        print()


def plot_kl(table, columns, path):
    """Figure 4's bottom panel: KL against K (NF) and M (CNF), one line per target and model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, target in enumerate(sorted({t for (t, _, _) in table})):
        for model, style in (("nf", "--"), ("cnf", "-")):
            ks = sorted(k for m, k in columns if m == model and (target, m, k) in table)
            if ks:
                ax.plot(ks, [table[(target, model, k)][0][1]["test_kl"] for k in ks], style, marker="o",
                        color=f"C{i}", label=f"{model.upper()} {target.upper()}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("K (NF layers) or M (CNF width)")
    ax.set_ylabel("KL(q||p), nats")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")


def seminorm_table(runs):
    table = cells(runs, lambda c: (c.name, c.solver.adjoint_norm, c.trainer.max_steps)
                  if c.model.name == "cnf" and c.solver.adjoint else None)
    pairs = [(k, table[k], table.get((k[0], "seminorm", k[2]))) for k in table if k[1] == "default"]
    pairs = [p for p in pairs if p[2]]
    if not pairs:
        return
    print("Seminorm adjoint (Kidger et al. 2021): mean NFE per training step, same seed and budget")
    print("| experiment | adjoint_norm | NFE-F | NFE-B | s/step | test metric |")
    print("|---|---|---|---|---|---|")
    for (name, _, _), ((_, d), _), ((_, m), _) in pairs:
        metric = "test_nll" if "test_nll" in d else "test_kl"
        for norm, s in (("default", d), ("seminorm", m)):
            print(f"| {name} | {norm} | {fmt(s['nfe_forward'], 1)} | {fmt(s['nfe_backward'], 1)} | "
                  f"{fmt(s['sec_per_step'], 3)} | {metric} {fmt(s[metric])} |")
        saved = 1 - m["nfe_backward"] / d["nfe_backward"]
        print(f"NFE-B saved by seminorm on {name}: {100 * saved:.2f}% ({d['nfe_backward']:.3f} -> {m['nfe_backward']:.3f} per step)")
    print()


def main(argv=None):
    roots = (argv if argv is not None else sys.argv[1:]) or ["outputs"]
    runs = load_runs(roots)
    if not runs:
        sys.exit(f"no finished flow runs under {', '.join(roots)}")
    nll_table(runs)
    kl_table(runs, Path(roots[0]) / "kl_vs_size.png")
    seminorm_table(runs)


if __name__ == "__main__":
    main()
