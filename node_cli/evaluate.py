"""`node-eval RUN_DIR [solver.KEY=VALUE ...] [--split test] [--device cpu|cuda|auto]`: evaluate a finished (or
stopped) run's checkpoint again, on the whole test split, at the run's own solver settings or at other ones.

- The run is what its `.hydra/config.yaml` says; its `checkpoint.pt` is read with `weights_only=True`
  (core.runs.read_checkpoint). The two must describe the same run (they may differ only in the budget keys
  `node-run resume=` may change).
- Only `solver.*` settings may be overridden (Hydra-style `key=value`, values parsed as OmegaConf parses them:
  `solver.rtol=1e-5` is a float, `solver.adjoint=false` a bool, `solver.step_size=null` None). Any other key would
  evaluate something other than the run, and is refused.
- A model with `model.eval_tol` (the CNF) evaluates at rtol = atol = eval_tol, whatever it trained with. When
  `solver.rtol` and/or `solver.atol` are overridden on such a run, those overrides are what the evaluation uses
  instead: an overridden tolerance takes the override, one not overridden stays at eval_tol (the tolerance the
  run's own evaluation used), and the summary's `tolerance_from` and `eval_tol_note` say so. Without such an
  override it evaluates at eval_tol exactly as the run did.
- The result goes to `RUN_DIR/eval/<YYYY-mm-dd_HH-MM-SS-ffffff>/eval.json` (written atomically, only once the
  evaluation succeeded); nothing else in the run folder is written or changed.

Loading the run (config + checkpoint + the family's task with the weights): node_cli/families/trained.py, which
`node-report tolsweep` uses too. Families are reached only through the registry (`node_cli.families`).
"""
from __future__ import annotations

# First, before anything below loads torch: libgomp reads its wait settings once, when torch loads
from .core.threads import prepare_environment

prepare_environment()

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from .core.checks import DEVICES, ConfigError, DataError, one_line
from .core.rundir import read_summary, write_json
from .core.meter import Count
from .core import threads
from .families import get as family
from .families.trained import evaluated_solver, load_run, parse_overrides

SPLITS = ("test",)
EVAL_DIR = "eval"
RESULT = "eval.json"   # not summary.json: node-report would take the folder for a run


# -------------------------------------------------------------------------------------------- evaluation
def new_eval_dir(run_dir: Path) -> Path:
    """RUN_DIR/eval/<time>, made here (never an existing one)."""
    base = run_dir / EVAL_DIR
    base.mkdir(exist_ok=True)
    while True:
        path = base / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def evaluate(run_dir, overrides: list[str] | tuple = (), split: str = "test", device: str = "cpu") -> Path:
    """Evaluate the run's checkpoint on `split`; returns the written eval.json."""
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not available; accepted: {', '.join(SPLITS)}")
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r} is not available; accepted: {', '.join(DEVICES)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder")
    changes = parse_overrides(overrides)
    loaded = load_run(run_dir, device, changes)
    cfg, task, dev = loaded.cfg, loaded.task, loaded.device
    used = threads.apply(cfg.get("threads", "auto"), family(cfg.task).threads)   # as node-run would train it
    tic = time.perf_counter()
    with Count(task.model) as counted:
        metrics = task.evaluate(None)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - tic
    try:
        run_status = read_summary(run_dir).get("status")
    except (OSError, ValueError):
        run_status = None
    summary = dict(kind="node-eval", status="ok", run_dir=str(run_dir.resolve()), experiment=cfg.get("name"),
                   task=cfg.task, model=cfg.model.get("name"), dataset=cfg.dataset.get("name"), split=split)
    summary.update(metrics)
    summary.update(eval_nfe_forward=counted.per_solve, eval_nfe_forward_total=counted.nfe_forward, solver=evaluated_solver(cfg), tolerance_from=loaded.tolerance_from,
                   overrides=list(overrides), checkpoint_step=loaded.ckpt.get("step"),
                   checkpoint_final=loaded.ckpt.get("final"), checkpoint_metrics=loaded.ckpt.get("metrics"),
                   run_status=run_status, wall_time=seconds, device=str(dev), torch=torch.__version__, **used,
                   created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    if loaded.notes:
        summary["eval_tol_note"] = " ".join(loaded.notes)
    out = new_eval_dir(run_dir) / RESULT
    write_json(out, summary)
    return out


def report_lines(summary: dict, path: Path) -> list[str]:
    s = summary["solver"]
    lines = [f"node-eval: {summary['run_dir']} at step {summary['checkpoint_step']} ({summary['model']}), "
             f"{summary['split']} split on {summary['device']}: {s['method']} rtol={s['rtol']:g} atol={s['atol']:g}"
             f" ({summary['tolerance_from']}) in {summary['wall_time']:.1f} s"]
    for key, value in summary.items():
        if key.startswith("test_") and isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"  {key:<28} {value:.6g}")
    lines.append(f"  {'eval_nfe_forward':<28} {summary['eval_nfe_forward']:.6g}")
    if summary.get("eval_tol_note"):
        lines.append(f"  note: {summary['eval_tol_note']}")
    lines.append(f"node-eval: wrote {path}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="node-eval",
        description="Evaluate a node-run run's checkpoint on its whole test split, at its own solver settings or "
                    "with solver.* overrides. Writes RUN_DIR/eval/<time>/eval.json; the run's own files are "
                    "never touched.")
    p.add_argument("run_dir", help="a node-run run folder (.hydra/config.yaml and checkpoint.pt)")
    p.add_argument("overrides", nargs="*", help="solver.KEY=VALUE, e.g. solver.rtol=1e-5 solver.atol=1e-5 "
                                                 "solver.method=rk4 solver.step_size=0.05")
    p.add_argument("--split", default="test", help="the split to evaluate: test (the only one for now)")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    args = p.parse_args(argv)
    try:
        out = evaluate(args.run_dir, args.overrides, args.split, args.device)
    except ConfigError as exc:
        print(f"node-eval: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except DataError as exc:
        print(f"node-eval: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:   # eval.json is written only once the evaluation is done
        print("node-eval: interrupted; no eval.json written", file=sys.stderr)
        sys.exit(130)
    import json
    print("\n".join(report_lines(json.loads(out.read_text()), out)), flush=True)


if __name__ == "__main__":
    main()
