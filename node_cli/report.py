"""`node-report DIR...`: the paper's tables and figures, regenerated from node-run runs, the paper's values beside.

    node-report outputs/multirun/mnist_odenet/... outputs/mnist_mlp/... [--out REPORT_DIR]
    node-report tolsweep RUN_DIR [--tols ...]      # Figure 3 (a)-(c) data from a trained checkpoint (tolsweep.py)

Every folder under the given ones that holds `.hydra/config.yaml`, `summary.json` or `metrics.jsonl` is a run,
single or inside a multirun sweep; what a run *is* comes from its `.hydra/config.yaml` (task, model, dataset,
solver), never from folder names. A run is used when its summary says `status: ok`; failed, interrupted and
unfinished runs (no summary yet) are listed as such. A table cell uses the runs whose model and solver settings
equal the paper setting (the experiment's config file, the cell's own sweep key aside) with the longest budget
(most optimizer steps); several seeds are averaged. Other runs (other tolerances, depths, ...) feed the figures.

The report folder holds report.md, the tables as CSV (each row with the IDs and folders of its runs) and the
figures as PNG. Each family is one function below reading the runs' files: `table1`, `figure3`, `memory`,
`table2` (spirals), `flows`.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import functools
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .run import CHECKPOINT, METRICS, SUMMARY

MiB = 2 ** 20
CONFIG = Path(".hydra") / "config.yaml"
KNOWN = {  # task -> model names this report knows how to place
    "classify": ("mlp", "resnet", "rknet", "odenet"),
    "latent": ("rnn", "rnn_dt", "latent_ode"),
    "flow": ("cnf", "nf"),
}
HEADLINE = ("test_error", "test_rmse", "test_nll", "test_kl")

# Table 1 of the paper: label, model, test error, parameters, memory, time.
PAPER_TABLE1 = [
    ("1-layer MLP", "mlp", 0.0160, 0.24e6, "–", "–"),
    ("ResNet", "resnet", 0.0041, 0.60e6, "O(L)", "O(L)"),
    ("RK-Net", "rknet", 0.0047, 0.22e6, "O(L̃)", "O(L̃)"),
    ("ODE-Net", "odenet", 0.0042, 0.22e6, "O(1)", "O(L̃)"),
]
# Table 2 of the paper: predictive RMSE on the test set by observations per trajectory (of 100).
PAPER_TABLE2 = {"rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813}, "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346}}
SPIRAL_MODELS = [("RNN", "rnn"), ("RNN + time gaps", "rnn_dt"), ("Latent ODE", "latent_ode")]


# ---------------------------------------------------------------------------------------------------- runs


@dataclass(eq=False)
class Run:
    path: Path
    cfg: dict | None = None
    summary: dict | None = None
    metrics: list = field(default_factory=list)
    status: str = "unfinished"
    problems: list = field(default_factory=list)
    id: str = ""
    used: list = field(default_factory=list)

    def c(self, dotted: str, default=None):
        node = self.cfg
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def s(self, key: str):
        """A finite number from the summary, else None."""
        v = (self.summary or {}).get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def task(self):
        return self.c("task")

    @property
    def model(self):
        return self.c("model.name")

    @property
    def kind(self) -> str:
        return f"{self.task}/{self.model}" if self.cfg else "?"

    @property
    def known(self) -> bool:
        return self.cfg is not None and self.model in KNOWN.get(self.task, ())

    @property
    def steps(self) -> int:
        return int((self.summary or {}).get("steps") or 0)


def load_run(path: Path) -> Run:
    run = Run(path)
    cfg_file = path / CONFIG
    if cfg_file.is_file():
        try:
            from omegaconf import OmegaConf
            loaded = OmegaConf.load(cfg_file)
            try:
                run.cfg = OmegaConf.to_container(loaded, resolve=True)   # e.g. solver.atol=${solver.rtol}
            except Exception:
                run.cfg = OmegaConf.to_container(loaded, resolve=False)
        except Exception as exc:
            run.problems.append(f"{CONFIG} is unreadable: {_line(exc)}")
    else:
        run.problems.append(f"no {CONFIG}: cannot tell what this run is")
    if (path / METRICS).is_file():
        bad = 0
        for line in (path / METRICS).read_text(errors="replace").splitlines():
            try:
                run.metrics.append(json.loads(line))
            except ValueError:
                bad += int(bool(line.strip()))
        if bad:
            run.problems.append(f"{METRICS}: {bad} unreadable line(s) skipped (half-written?)")
    if (path / SUMMARY).is_file():
        try:
            run.summary = json.loads((path / SUMMARY).read_text())
            run.status = str(run.summary.get("status", "unknown"))
        except ValueError as exc:
            run.status = "unreadable"
            run.problems.append(f"{SUMMARY} is not valid JSON (half-written?): {_line(exc)}")
    else:
        last = run.metrics[-1].get("step") if run.metrics else None
        run.problems.append(f"no {SUMMARY}: still running or stopped before the end"
                            + (f" (last logged step {last})" if last is not None else " (nothing logged yet)"))
    if run.cfg is not None and not run.known:
        run.problems.append(f"unknown kind: task {run.task!r}, model {run.model!r} (this report knows "
                            + "; ".join(f"{t}: {', '.join(m)}" for t, m in KNOWN.items()) + ")")
    if run.summary and run.status != "ok" and run.summary.get("error"):
        run.problems.append(f"{run.status}: {run.summary['error']}")
    return run


def _line(exc) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _natural(path: Path):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def discover(dirs) -> tuple[list[Run], list[dict], list[str]]:
    """Every run and every tolerance sweep under `dirs`, plus messages about folders that hold none."""
    runs: dict[Path, Run] = {}
    sweeps: dict[Path, dict] = {}
    messages = []
    for d in map(Path, dirs):
        if not d.is_dir():
            messages.append(f"{d}: no such folder")
            continue
        found = set()
        for marker in ("config.yaml", SUMMARY, METRICS):
            for f in d.rglob(marker):
                if marker == "config.yaml" and f.parent.name != ".hydra":
                    continue
                folder = (f.parent.parent if marker == "config.yaml" else f.parent).resolve()
                found.add(folder)
        for folder in found:
            runs.setdefault(folder, None)
        for f in d.rglob("tolsweep.json"):
            try:
                data = json.loads(f.read_text())
                data["file"] = str(f.resolve())
                sweeps[f.resolve()] = data
            except ValueError as exc:
                messages.append(f"{f}: unreadable tolerance sweep ({_line(exc)})")
        if not found:
            messages.append(f"{d}: no runs found (a run folder holds {CONFIG}, {SUMMARY} or {METRICS})")
    loaded = [load_run(p) for p in sorted(runs, key=_natural)]
    for i, run in enumerate(loaded, 1):
        run.id = f"R{i}"
    return loaded, [sweeps[k] for k in sorted(sweeps)], messages


# --------------------------------------------------------------------------------- paper setting and selection


def experiment_of(run: Run) -> str | None:
    """The experiment config file that is the paper setting for this run's kind."""
    t, m, d = run.task, run.model, run.c("dataset.name")
    if t == "classify":
        return f"mnist_{m}"
    if t == "latent":
        return f"spiral_{m}"
    if t == "flow":
        return f"density_{m}" if d == "density" else f"{m}_{d}"
    return None


@functools.lru_cache(maxsize=None)
def experiment_defaults(name: str) -> dict | None:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from .cli import options
    if name not in options("experiment"):
        return None
    with initialize_config_module(config_module="node_cli.conf", version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=[f"experiment={name}"]), resolve=True)


def _flat(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _flat(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


OPTIMIZER_KEYS = ("optimizer", "lr", "lr_batch_denom", "momentum", "weight_decay", "schedule", "min_lr_ratio")


def differences(run: Run, ignore=()) -> list[str]:
    """`key=value` for each model/solver/optimizer setting where the run differs from its experiment's config file
    (the training budget is not a difference: `select` keeps each cell's longest budget)."""
    name = experiment_of(run)
    defaults = experiment_defaults(name) if name else None
    if not defaults or not run.cfg:
        return []
    out = []
    for group in ("model", "solver"):
        mine = dict(_flat(run.cfg.get(group) or {}, f"{group}."))
        for key, value in _flat(defaults.get(group) or {}, f"{group}."):
            if key in mine and key not in ignore and mine[key] != value:
                out.append(f"{key}={mine[key]}")
    mine, theirs = run.cfg.get("trainer") or {}, defaults.get("trainer") or {}
    for key in OPTIMIZER_KEYS:
        if key in mine and key in theirs and mine[key] != theirs[key]:
            out.append(f"trainer.{key}={mine[key]}")
    return out


def select(cands: list[Run]) -> tuple[list[Run], list[tuple[Run, str]]]:
    """The runs a cell reports (finished ok, the longest budget; seeds averaged) and the others with why not."""
    ok = [r for r in cands if r.ok]
    top = max((r.steps for r in ok), default=0)
    used = [r for r in ok if r.steps == top]
    skipped = [(r, r.status if not r.ok else f"shorter budget: {r.steps} steps") for r in cands if r not in used]
    return used, skipped


def mean(runs, key):
    values = [v for v in (r.s(key) for r in runs) if v is not None]
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------------ the report


def fmt(v, spec=".4f", none="–"):
    return none if v is None else format(v, spec)


def pct(v):
    return "–" if v is None else f"{100 * v:.2f}%"


def md_table(header, rows) -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    return (["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""])


class Report:
    def __init__(self, out: Path, runs: list[Run], sweeps: list[dict], messages: list[str]):
        self.out, self.runs, self.sweeps, self.messages = out, runs, sweeps, messages
        self.md: list[str] = []
        self.files: list[str] = []
        self.problems: list[str] = []
        self.by_path = {r.path: r for r in runs}

    def add(self, *lines):
        self.md.extend(lines)

    def ids(self, runs) -> str:
        return ", ".join(r.id for r in runs) or "–"

    def runs_cell(self, used, skipped) -> str:
        text = self.ids(used)
        if skipped:
            text += "; not used: " + ", ".join(f"{r.id} ({why})" for r, why in skipped)
        return text

    def mark(self, runs, where: str):
        for r in runs:
            if where not in r.used:
                r.used.append(where)

    def of(self, task, model=None, ok_only=False) -> list[Run]:
        out = [r for r in self.runs if r.known and r.task == task and (model is None or r.model == model)]
        return [r for r in out if r.ok] if ok_only else out

    def section(self, heading: str, task: str, what: str, make: str) -> list[Run]:
        """Start a section: its heading, then the family's runs, or a line saying how to make them."""
        self.add(heading, "")
        runs = self.of(task)
        if not runs:
            self.add(f"No {what} runs found. Make them with {make}.", "")
        return runs

    def paper_setting(self, runs, ignore=()) -> list[Run]:
        return [r for r in runs if not differences(r, ignore)]

    def csv(self, name: str, rows: list[dict]) -> str:
        with open(self.out / name, "w", newline="") as f:
            fields = list(dict.fromkeys(k for row in rows for k in row))
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        self.files.append(name)
        return name

    def savefig(self, fig, name: str) -> str:
        import matplotlib.pyplot as plt
        fig.savefig(self.out / name, dpi=110)
        plt.close(fig)
        self.files.append(name)
        return name

    def copy(self, run: Run, filename: str, name: str) -> str | None:
        src = run.path / filename
        if not src.is_file():
            run.problems.append(f"figure {filename} missing")
            return None
        shutil.copyfile(src, self.out / name)
        self.files.append(name)
        return name

    def where(self, path) -> str:
        try:
            return os.path.relpath(path)
        except ValueError:
            return str(path)


def plt_figure(*args, **kwargs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def run_fields(runs) -> dict:
    return dict(n_runs=len(runs), run_ids=" ".join(r.id for r in runs), run_dirs=";".join(str(r.path) for r in runs))


# ------------------------------------------------------------------------------------------ MNIST: Table 1


def table1(rep: Report) -> None:
    if not rep.section("## Table 1: MNIST (paper section 3)", "classify", "MNIST",
                       "`scripts/table1.sh` (quick budget) or `FULL=1 scripts/table1.sh`"):
        return
    rows_md, rows_csv = [], []
    for label, model, p_err, p_params, p_mem, p_time in PAPER_TABLE1:
        used, skipped = select(rep.paper_setting(rep.of("classify", model)))
        rep.mark(used, "Table 1")
        err, params = mean(used, "test_error"), mean(used, "params")
        act, peak = mean(used, "activation_bytes"), mean(used, "peak_memory_bytes")
        sps, nf, nb = mean(used, "sec_per_step"), mean(used, "nfe_forward"), mean(used, "nfe_backward")
        steps, epochs = (used[0].steps, used[0].summary.get("epochs")) if used else (None, None)
        examples = mean(used, "test_examples")
        budget = (f"{steps} steps" + (f" ({epochs} epochs)" if epochs else "")) if used else "no finished run"
        if examples is not None and examples != 10000:
            budget += f", {int(examples)} test images"
        rows_md.append([label, pct(err), pct(p_err), fmt(params, ",.0f"), f"{p_params / 1e6:.2f}M",
                        fmt(act and act / MiB, ".2f"), fmt(peak and peak / MiB, ".2f"), p_mem, fmt(sps, ".3f"),
                        p_time, f"{fmt(nf, '.1f')} / {fmt(nb, '.1f')}" if used else "–", budget,
                        rep.runs_cell(used, skipped)])
        rows_csv.append(dict(model=label, model_name=model, test_error=err, paper_test_error=p_err, params=params,
                             paper_params=p_params, activation_bytes=act, peak_memory_bytes=peak,
                             paper_memory=p_mem, sec_per_step=sps, paper_time=p_time, nfe_forward=nf,
                             nfe_backward=nb, steps=steps, epochs=epochs, test_examples=examples,
                             **run_fields(used)))
    rep.add(*md_table(["model", "test error", "paper", "params", "paper", "activation MiB", "peak MiB",
                       "paper memory", "s / step", "paper time", "NFE-F / NFE-B", "budget", "runs"], rows_md))
    rep.add(f"CSV: `{rep.csv('table1.csv', rows_csv)}`. Activation MiB: bytes autograd saves for backward in one "
            "training step (batch of the run); peak MiB: the step's peak allocation above its start "
            f"({_methods(rep.of('classify', ok_only=True))}). NFE-F / NFE-B: function evaluations per training step, "
            "averaged over the run; without the adjoint NFE-B is 0 by construction. Paper memory/time are "
            "asymptotic (L layers, L̃ evaluations); the memory figure below measures them.", "")


def _methods(runs) -> str:
    methods = sorted({str(r.summary.get("peak_memory_method")) for r in runs if r.summary.get("peak_memory_method")})
    return ", ".join(methods) or "no measurement"


# -------------------------------------------------------------------------------- MNIST: Figure 3 (ODE-Net)


def figure3(rep: Report) -> None:
    rep.add("## Figure 3: ODE-Net statistics (paper section 3)", "")
    sweeps = [s for s in rep.sweeps if s.get("kind") == "tolsweep"]
    swept = {Path(s.get("run_dir", "")) for s in sweeps}
    odes = [r for r in rep.of("classify", "odenet", ok_only=True) if r.path in swept or not differences(r)]
    if not odes and not sweeps:
        rep.add("No finished ODE-Net run found. Make one with `scripts/figure3.sh`.", "")
        return
    fig, axes = plt_figure(2, 2, figsize=(10, 8))
    (a, b), (c, d) = axes
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
    if sweeps:
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
    else:
        rep.add("Panels (a)-(b) need a tolerance sweep of a trained ODE-Net: `node-report tolsweep RUN_DIR`, "
                "then rerun node-report on a folder that contains RUN_DIR.", "")
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
    if claims:
        rep.add("Numbers behind the panels, beside the paper's claims (NFE grows over training; NFE falls as the "
                "tolerance loosens while the error grows; NFE-B is about half of NFE-F with the adjoint):", "",
                *md_table(["run", "source", "NFE-F", "NFE-B / NFE-F (paper ≈ 0.5)", "numerical error"], claims))
    rep.add("(a) NFE-F against the numerical error of the ODE block's output as the tolerance varies; (b) NFE-F "
            "against wall time of a forward pass (relative to the fastest); (c) NFE-B against NFE-F per training "
            "step (paper: backward about half of forward); (d) NFE per training step over training (paper: it grows). "
            "Points in (c)-(d) marked 'training' are the runs' metrics.jsonl windows (CSV `figure3_training.csv`).",
            "")


# ---------------------------------------------------------------------------------------- MNIST: memory


def memory(rep: Report) -> None:
    rep.add("## Memory against depth (paper Table 1, memory column)", "")
    series: dict[str, list] = {}
    for run in rep.of("classify", ok_only=True):
        if run.s("activation_bytes") is None:
            continue
        if run.model == "resnet":
            name, depth = "ResNet: residual blocks L", run.c("model.blocks")
        elif run.model in ("odenet", "rknet"):
            adj = bool(run.c("solver.adjoint"))
            name = ("ODE-Net (adjoint): NFE-F L̃" if adj else
                    ("RK-Net (backprop through the solver): NFE-F L̃" if run.model == "rknet"
                     else "ODE-Net without adjoint: NFE-F L̃"))
            depth = run.s("memory_step_nfe_forward")
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
        act = [r.s("activation_bytes") / MiB for _, r in pts]
        peak = [(r.s("peak_memory_bytes") or 0) / MiB for _, r in pts]
        a.plot(xs, act, "o-", label=name)
        b.plot(xs, peak, "o-", label=name)
        for (x, r), m1, m2 in zip(pts, act, peak):
            rows.append(dict(series=name, depth=x, activation_mib=m1, peak_mib=m2, solver_rtol=r.c("solver.rtol"),
                             model_blocks=r.c("model.blocks"), run_id=r.id, run_dir=str(r.path)))
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


# ----------------------------------------------------------------------------- spirals: Table 2, Figures 8-9


def table2(rep: Report) -> None:
    runs = rep.section("## Table 2 and Figures 8-9: latent ODE on spirals (paper section 5)", "latent", "spirals",
                       "`scripts/spirals_table.sh`")
    if not runs:
        return
    n_obs = sorted({30, 50, 100} | {r.c("dataset.n_obs") for r in runs if isinstance(r.c("dataset.n_obs"), int)})
    rows_md, rows_csv, figures = [], [], []
    for label, model in SPIRAL_MODELS:
        cands = rep.paper_setting(rep.of("latent", model))
        for n in n_obs:
            paper = PAPER_TABLE2.get(model, {}).get(n)
            cell = [r for r in cands if r.c("dataset.n_obs") == n]
            used, skipped = select(cell)
            if not cell and paper is None:
                continue
            rep.mark(used, "Table 2")
            rmse, steps = mean(used, "test_rmse"), (used[0].steps if used else None)
            rows_md.append([label, f"{n}/{used[0].c('dataset.n_points', 100) if used else 100}", fmt(rmse),
                            fmt(paper), f"{steps} steps" if used else "no finished run",
                            rep.runs_cell(used, skipped)])
            rows_csv.append(dict(model=label, model_name=model, n_obs=n, test_rmse=rmse, paper_test_rmse=paper,
                                 steps=steps, **run_fields(used)))
            if used:
                figures.append((label, model, n, used[0]))
    rep.add(*md_table(["model", "observations", "test RMSE", "paper", "budget", "runs"], rows_md))
    rep.add(f"CSV: `{rep.csv('table2.csv', rows_csv)}`. RMSE of the extrapolation beyond the observed window on "
            "the test spirals (the family's evaluation protocol: docs/latent_ode.md). The paper has no "
            "'RNN + time gaps' row.", "")
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


# ------------------------------------------------------------------------------------ flows: Figures 4-6


def flows(rep: Report) -> None:
    runs = rep.section("## Figures 4-6: continuous normalizing flows in 2-D (paper section 4)", "flow", "flow",
                       "`scripts/flows_tables.sh`")
    if not runs:
        return
    _flows_ml(rep, [r for r in runs if r.c("dataset.name") in ("circles", "moons")])
    _flows_density(rep, [r for r in runs if r.c("dataset.name") == "density"])


def _capacity(run: Run):
    return run.c("model.width") if run.model == "cnf" else run.c("model.depth")


def _flows_ml(rep: Report, runs) -> None:
    rep.add("### Figures 5-6: maximum likelihood on Two Circles and Two Moons", "")
    if not runs:
        rep.add("No maximum-likelihood flow runs (experiments cnf_circles, cnf_moons, nf_circles, nf_moons).", "")
        return
    rows_md, rows_csv, pics = [], [], []
    for data in ("circles", "moons"):
        for label, model, key in (("CNF", "cnf", "M"), ("NF", "nf", "K")):
            cell = rep.paper_setting([r for r in runs if r.model == model and r.c("dataset.name") == data])
            used, skipped = select(cell)
            if not cell:
                continue
            rep.mark(used, "Figures 5-6")
            nll, se, floor = mean(used, "test_nll"), mean(used, "test_nll_stderr"), mean(used, "test_nll_data")
            cap = _capacity(used[0]) if used else None
            rows_md.append([data, f"{label} ({key} = {cap})" if used else label,
                            fmt(nll) + (f" ± {se:.4f}" if se is not None else ""), fmt(floor),
                            "– (figures only; paper: CNF M=64 vs NF K=64)", fmt(mean(used, "nfe_forward"), ".1f"),
                            fmt(mean(used, "sec_per_step"), ".3f"), f"{used[0].steps} steps" if used else "no finished run",
                            rep.runs_cell(used, skipped)])
            rows_csv.append(dict(dataset=data, model=label, capacity=cap, test_nll=nll, test_nll_stderr=se,
                                 data_nll=floor, paper="figures only",
                                 nfe_forward=mean(used, "nfe_forward"), sec_per_step=mean(used, "sec_per_step"),
                                 steps=used[0].steps if used else None, **run_fields(used)))
            if used:
                r = used[0]
                pics += [(f"{label} on {data}: {what} ({r.id})",
                          rep.copy(r, f"{what}.png", f"fig5_6_{model}_{data}_{what}_{r.id}.png"))
                         for what in ("flow", "density")]
    rep.add(*md_table(["data", "flow", "test NLL (nats)", "true density's NLL", "paper", "NFE-F", "s / step",
                       "budget", "runs"], rows_md))
    rep.add(f"CSV: `{rep.csv('flows_ml.csv', rows_csv)}`. Test NLL ± its standard error on the family's fixed test "
            "set; the true density's NLL on the same points is the floor (docs/flows.md). The paper shows these as "
            "figures (samples and density along the flow), without numbers.", "")
    rep.add(*[f"- {text}: ![{text}]({f})" for text, f in pics if f], "")


def _flows_density(rep: Report, runs) -> None:
    rep.add("### Figure 4: density matching, NF (depth K) against CNF (width M)", "")
    if not runs:
        rep.add("No density-matching runs (experiments density_cnf, density_nf with dataset.target=u1..u4).", "")
        return
    cells: dict[tuple, list] = {}
    for r in rep.paper_setting(runs, ignore=("model.width", "model.depth")):
        cells.setdefault((str(r.c("dataset.target")), r.model, _capacity(r)), []).append(r)
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


SECTIONS = (table1, figure3, memory, table2, flows)


# -------------------------------------------------------------------------------------------- runs, problems


def runs_section(rep: Report) -> None:
    rep.add("## Runs", "")
    rows, rows_csv = [], []
    for r in rep.runs:
        head = next(((k, r.s(k)) for k in HEADLINE if r.s(k) is not None), (None, None))
        diffs = differences(r) if r.known else []
        rows.append([r.id, r.status, r.kind, r.c("name", "?"), ", ".join(diffs) or "–",
                     f"{head[0]} {head[1]:.4g}" if head[0] else "–", r.steps if r.summary else "–",
                     ", ".join(r.used) or "–", rep.where(r.path)])
        rows_csv.append(dict(run_id=r.id, status=r.status, task=r.task, model=r.model, experiment=r.c("name"),
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
    for s in rep.sweeps:
        if Path(s.get("run_dir", "")) not in rep.by_path:
            problems.append(f"tolerance sweep {rep.where(s.get('file', ''))}: its run {s.get('run_dir')} is not "
                            "among the scanned runs (plotted under its folder name)")
    rep.add("## Problems", "")
    rep.add(*([f"- {p}" for p in problems] or ["None."]), "")
    rep.problems = problems


def build(dirs, out: Path, command: str = "node-report") -> Report:
    runs, sweeps, messages = discover(dirs)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out, runs, sweeps, messages)
    counts = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    rep.add("# node-run report: Neural ODEs (Chen et al. 2018), paper beside ours", "",
            f"Made {datetime.datetime.now().isoformat(timespec='seconds')} by `{command}`.",
            f"{len(runs)} runs under {', '.join(f'`{d}`' for d in dirs)}: "
            + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none") + ". "
            "Run IDs (R1, ...) are listed with their folders under 'Runs'; every CSV row names its runs' folders.", "")
    for section in SECTIONS:
        try:
            section(rep)
        except Exception as exc:  # one family's bad data must not cost the rest of the report
            rep.add(f"**{section.__name__}: could not be made: {type(exc).__name__}: {_line(exc)}**", "")
            rep.messages.append(f"section {section.__name__} could not be made: {type(exc).__name__}: {_line(exc)}")
    runs_section(rep)
    (out / "report.md").write_text("\n".join(rep.md) + "\n")
    return rep


def prepare_out(out: str | None, force: bool) -> Path:
    if out is None:
        return Path("outputs") / "report" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not (force and (path / "report.md").is_file()):
            raise SystemExit(f"node-report: error: {path} is not empty; choose a new --out folder "
                             "(or --force to replace an earlier report there)")
        for f in path.iterdir():
            if f.is_file() and f.suffix in (".md", ".csv", ".png"):
                f.unlink()
    if (path / SUMMARY).exists() or (path / CHECKPOINT).exists():
        raise SystemExit(f"node-report: error: {path} is a run folder; choose another --out")
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "tolsweep":
        from .tolsweep import main as tolsweep_main
        return tolsweep_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="node-report",
        description="Regenerate the paper's tables and figures from node-run runs (single runs and multirun "
                    "sweeps, any mix), the paper's values beside. `node-report tolsweep RUN_DIR` evaluates a "
                    "trained ODE-Net at many tolerances for Figure 3 (see `node-report tolsweep -h`).")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders to scan for runs (recursively)")
    p.add_argument("--out", default=None, help="report folder (default outputs/report/<time>); must be new or empty")
    p.add_argument("--force", action="store_true", help="replace an earlier report in --out")
    args = p.parse_args(argv)
    out = prepare_out(args.out, args.force)
    rep = build(args.dirs, out, "node-report " + " ".join(argv))
    for m in rep.problems:
        print(f"node-report: warning: {m}", file=sys.stderr)
    ok = sum(r.ok for r in rep.runs)
    print(f"node-report: {len(rep.runs)} runs ({ok} ok), {len(rep.files)} tables/figures -> {out / 'report.md'}")
    if not rep.runs:
        print("node-report: error: no runs found under " + " ".join(args.dirs), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
