"""`node-bench families`: for each family with a `BenchSpec`, seconds and function evaluations to reach the quick
config's accuracy, node-run's tolerance against the reference script's."""
from __future__ import annotations

import statistics
from pathlib import Path

from .. import families
from ..core.checks import ConfigError
from ..core.clock import environment
from ..core.progress import bar


def specs() -> dict:
    """family name -> its BenchSpec, for the families that have one."""
    return {f.name: f.bench for f in families.every() if f.bench is not None}


def to_target(rows, metric, target) -> dict:
    """Cost of a run up to its first evaluation with `metric` <= `target` (all of it if never reached), from the
    rows of metrics.jsonl (each row: means over the steps since the previous row). `seconds` sums the measured
    seconds per step; `seconds_median` is the run's median seconds per step times the steps (robust to a load
    spike on a shared machine); `nfe` counts forward and backward evaluations (machine-independent)."""
    steps = seconds = nfe_total = 0.0
    reached, per_step = None, []
    for r in rows:
        n = r["step"] - steps
        steps, seconds = r["step"], seconds + r["sec_per_step"] * n
        nfe_total += (r.get("nfe_forward", 0) + r.get("nfe_backward", 0)) * n
        per_step.append(r["sec_per_step"])
        if r.get(metric) is not None and r[metric] <= target:
            reached = r["step"]
            break
    return dict(reached_at_step=reached, steps=int(steps), seconds=seconds,
                seconds_median=statistics.median(per_step) * steps if per_step else float("nan"), nfe=nfe_total)


def family_rows(args, out: Path, log) -> list[dict]:
    from omegaconf import OmegaConf

    from ..core.rundir import read_metrics
    from ..experiment import configure, execute

    rows = []
    for name in bar(args.families, desc="node-bench families", unit="family", leave=False):
        spec = specs()[name]
        experiment, ref_overrides, metric = spec.experiment, list(spec.reference), spec.metric
        common = [f"experiment={experiment}", "trainer=quick", "trainer.progress=false", f"seed={args.seed}",
                  f"trainer.eval_every={args.eval_every}", f"device={args.device}",
                  f"threads={args.threads}"]   # node-bench's --threads, not the family's own threads=auto
        if args.family_steps:
            common.append(f"trainer.max_steps={args.family_steps}")
        try:
            runs = {}
            for label, extra in (("node-run", []), ("reference tolerance", ref_overrides)):
                cfg = configure(common + extra)
                if runs and (cfg.solver.rtol, cfg.solver.atol) == (runs["node-run"][0].solver.rtol,
                                                                   runs["node-run"][0].solver.atol):
                    log(f"  {name}: node-run already solves at the reference script's tolerance; one run only")
                    break
                run_dir = out / "families" / f"{name}-{label.replace(' ', '_')}"
                run_dir.mkdir(parents=True, exist_ok=False)
                (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
                log(f"  {name}: training {label} (rtol {cfg.solver.rtol:g}, atol {cfg.solver.atol:g}) -> {run_dir}")
                summary = execute(cfg, run_dir)
                runs[label] = (cfg, summary, read_metrics(run_dir))
        except (ConfigError, ImportError) as exc:
            rows.append(dict(family=name, experiment=experiment, status=f"not available: {exc}"))
            continue
        cfg, summary, metrics = runs["node-run"]
        target = summary.get(metric)
        base = to_target(metrics, metric, target)
        for label, (c, s, m) in runs.items():
            cost = to_target(m, metric, target)
            ok = cost["reached_at_step"] is not None
            rows.append(dict(family=name, experiment=experiment,
                             runner=label if len(runs) > 1 else "node-run = reference tolerance",
                             rtol=float(c.solver.rtol), atol=float(c.solver.atol), adjoint=bool(c.solver.adjoint),
                             metric=metric, target=target, final=s.get(metric), status=s.get("status"),
                             steps=s.get("steps"), nfe_forward=s.get("nfe_forward"),
                             nfe_backward=s.get("nfe_backward"), sec_per_step=s.get("sec_per_step"),
                             examples_per_sec=s.get("examples_per_sec"), activation_bytes=s.get("activation_bytes"),
                             peak_memory_bytes=s.get("peak_memory_bytes"),
                             reached_at_step=cost["reached_at_step"], seconds_to_target=cost["seconds"],
                             seconds_median_to_target=cost["seconds_median"], nfe_to_target=cost["nfe"],
                             ratio_seconds=cost["seconds"] / base["seconds"] if ok else None,
                             ratio_seconds_median=cost["seconds_median"] / base["seconds_median"] if ok else None,
                             ratio_nfe=cost["nfe"] / base["nfe"] if ok and base["nfe"] else None))
    return rows


COLUMNS = [
    ("family", "family", str), ("runner", "solved at", str), ("rtol", "rtol", "{:g}"), ("atol", "atol", "{:g}"),
    ("metric", "metric", str), ("final", "final", "{:.4f}"), ("nfe_forward", "NFE-F", "{:.1f}"),
    ("nfe_backward", "NFE-B", "{:.1f}"), ("sec_per_step", "s/step", "{:.3f}"),
    ("examples_per_sec", "examples/s", "{:.0f}"), ("activation_bytes", "activations MiB", "mib"),
    ("peak_memory_bytes", "peak MiB", "mib"), ("reached_at_step", "target at step", "{}"),
    ("nfe_to_target", "NFE to target", "{:.0f}"), ("seconds_to_target", "s to target", "{:.1f}"),
    ("seconds_median_to_target", "s to target (median s/step)", "{:.1f}"), ("ratio_nfe", "ratio NFE", "{:.2f}x"),
    ("ratio_seconds", "ratio s", "{:.2f}x"), ("ratio_seconds_median", "ratio s (median)", "{:.2f}x")]


def header(args, device) -> str:
    env = environment(args.line, device)
    return (f"## Families: seconds to reach the quick config's accuracy ({', '.join(args.families)})\n"
            f"`{env['command']}` on {env['machine']} ({env['threads']} torch threads). Target: the "
            f"node-run quick run's final metric; the same model and budget solved at the reference "
            f"script's tolerance. Costs up to the first evaluation that reaches the target: function "
            f"evaluations (forward + backward, machine-independent), training seconds (evaluations "
            f"excluded) as measured and as the run's median s/step times the steps (the runs are "
            f"sequential, so a load spike on a shared CPU hits one and not the other).")
