"""`node-report tolsweep RUN_DIR`: evaluate a trained MNIST ODE-Net checkpoint at many solver tolerances, no
retraining (the data of the paper's Figure 3 (a)-(c)).

For every tolerance (rtol = atol = tol) on the same fixed batch of test images:
- forward pass without gradients: NFE-F of the ODE block, wall time of the model's forward pass (best of
  `--repeats`), the batch's classification error, and the numerical error of the block's output h(t1) against a
  reference solve of the same block on the same inputs at `--reference` tolerance in float64
  (`error_rms` = RMS over all elements of h_tol(t1) - h_ref(t1); `error_max` the largest absolute difference;
  `error_rel` = error_rms / RMS(h_ref(t1)));
- one training step's forward + backward (the run's own gradient mode: adjoint or backprop through the
  solver): NFE-F and NFE-B of that step, its wall time, and the bytes autograd saves for backward
  (core.measure.activation_bytes, the same meter as the runs' summaries).

Results go to a new folder (default RUN_DIR/tolsweep, then tolsweep_2, ...): tolsweep.json and tolsweep.csv.
Nothing the run wrote is touched. `node-report` picks these files up when it scans the run's folder.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import math
import sys
import time
from pathlib import Path

import torch

from ...core.checks import ConfigError, DataError, one_line, resolve_device
from ...core.measure import activation_bytes
from ...core.rundir import write_json
from ...core.solve import ODEBlock

DEFAULT_TOLS = "1e-1,3e-2,1e-2,3e-3,1e-3,3e-4,1e-4,3e-5,1e-5"
RESULT = "tolsweep.json"
COLUMNS = ("tol", "nfe_forward", "forward_seconds", "error_rms", "error_max", "error_rel", "batch_error",
           "step_nfe_forward", "step_nfe_backward", "step_seconds", "activation_bytes")


def parse_tols(text: str) -> list[float]:
    try:
        tols = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--tols={text!r} is not a comma-separated list of numbers (e.g. {DEFAULT_TOLS})") from None
    if not tols or any(not (math.isfinite(t) and t > 0) for t in tols):
        raise ConfigError(f"--tols={text!r}: every tolerance must be a positive number")
    return sorted(set(tols), reverse=True)


def new_out_dir(run_dir: Path, out: str | None) -> Path:
    """A folder for the results that holds nothing yet: never overwrite an earlier sweep or the run's files."""
    if out:
        path = Path(out)
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"--out {path} is not empty; choose a new folder (earlier results are never overwritten)")
        return path
    for k in range(1, 1000):
        path = run_dir / ("tolsweep" if k == 1 else f"tolsweep_{k}")
        if not path.exists():
            return path
    raise ConfigError(f"{run_dir} already holds 999 tolerance sweeps; pass --out DIR")


def load(run_dir: Path, device: str):
    """The run's task (data + model) with the checkpoint's weights loaded, and the checkpoint itself: node-eval's
    loading (config + checkpoint + task, node_cli.families.trained.load_run), refusing anything but an MNIST ODE block."""
    from ..trained import load_run

    def accept(cfg):
        if cfg.get("task") != "classify":
            raise ConfigError(f"tolsweep evaluates MNIST classifiers with an ODE block (task classify, model odenet "
                              f"or rknet); {run_dir} is task {cfg.get('task')!r}, model {cfg.model.get('name')!r}")
        if cfg.model.get("name") not in ("odenet", "rknet"):
            raise ConfigError(f"tolsweep needs a model with one ODE block (model odenet or rknet); {run_dir} is model "
                              f"{cfg.model.get('name')!r}")

    loaded = load_run(run_dir, device, accept=accept)
    task, cfg = loaded.task, loaded.cfg
    blocks = [m for m in task.model.modules() if isinstance(m, ODEBlock)]
    if len(blocks) != 1:
        raise ConfigError(f"tolsweep needs a model with one ODE block (model odenet or rknet); {run_dir} is model "
                          f"{cfg.model.name!r} with {len(blocks)}")
    return task, blocks[0], loaded.ckpt, cfg


def sweep(run_dir, tols, reference: float = 1e-8, batch: int = 128, repeats: int = 3, device: str = "cpu",
          out: str | None = None, progress: bool = True) -> Path:
    """Run the sweep; returns the folder holding tolsweep.json and tolsweep.csv."""
    run_dir = Path(run_dir).resolve()
    if min(tols) <= reference:
        raise ConfigError(f"--reference={reference:g} must be tighter than every swept tolerance (smallest "
                          f"{min(tols):g})")
    dev = resolve_device(device)
    out_dir = new_out_dir(run_dir, out)
    task, block, ckpt, cfg = load(run_dir, device)
    model = task.model.train()   # GroupNorm only: train and eval modes compute the same function
    x = task.images(task.test_x[:batch])
    y = task.test_y[:batch]

    seen = {}
    hook = block.register_forward_hook(lambda mod, inp, outp: seen.update(h0=inp[0], h1=outp))
    with torch.no_grad():
        model(x)                                             # captures the block's input h(0)
        ref_block = copy.deepcopy(block).double()
        ref_block.nfe_forward, ref_block.field.calls = 0, 0
        h0 = seen["h0"].detach()
        with ref_block.tolerance(reference):
            ref = ref_block(h0.double()).float()
    ref_nfe = ref_block.nfe_forward
    ref_rms = ref.pow(2).mean().sqrt().item()

    rows = []
    for tol in tols:
        with block.tolerance(tol):
            with torch.no_grad():
                best = math.inf
                for _ in range(max(1, repeats)):
                    before = block.nfe_forward
                    tic = time.perf_counter()
                    logits = model(x)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    best = min(best, time.perf_counter() - tic)
                    nfe_f = block.nfe_forward - before
                diff = seen["h1"] - ref
            f0, b0 = block.nfe_forward, block.nfe_backward
            tic = time.perf_counter()
            act = activation_bytes(model, lambda: task.loss((x, y)))
            step_seconds = time.perf_counter() - tic
            row = dict(tol=tol, nfe_forward=nfe_f, forward_seconds=best,
                       error_rms=diff.pow(2).mean().sqrt().item(), error_max=diff.abs().max().item(),
                       error_rel=diff.pow(2).mean().sqrt().item() / max(ref_rms, 1e-30),
                       batch_error=(logits.argmax(1) != y).float().mean().item(),
                       step_nfe_forward=block.nfe_forward - f0, step_nfe_backward=block.nfe_backward - b0,
                       step_seconds=step_seconds, activation_bytes=act)
        rows.append(row)
        if progress:
            print(f"  tol {tol:8.1e}: NFE-F {nfe_f:4d}  error {row['error_rms']:.2e}  forward {best:.3f} s  "
                  f"step NFE-F/B {row['step_nfe_forward']}/{row['step_nfe_backward']}", flush=True)
    hook.remove()

    result = dict(kind="tolsweep", run_dir=str(run_dir), experiment=cfg.get("name"), model=cfg.model.name,
                  adjoint=bool(block.adjoint), method=block.kwargs["method"], checkpoint_step=ckpt.get("step"),
                  checkpoint_metrics=ckpt.get("metrics"), reference_tol=reference, reference_nfe=ref_nfe,
                  reference_dtype="float64", batch=int(len(x)), repeats=repeats, device=str(dev),
                  torch=torch.__version__, created=datetime.datetime.now().isoformat(timespec="seconds"),
                  rows=rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULT, result)
    with open(out_dir / "tolsweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="node-report tolsweep",
        description="Evaluate a trained ODE-Net checkpoint at many solver tolerances (Figure 3 (a)-(c)), no "
                    "retraining. Writes RUN_DIR/tolsweep/ (or --out); the run's own files are never touched.")
    p.add_argument("run_dir", help="a node-run MNIST run folder with checkpoint.pt (model odenet or rknet)")
    p.add_argument("--tols", default=DEFAULT_TOLS, help=f"tolerances, rtol = atol (default {DEFAULT_TOLS})")
    p.add_argument("--reference", type=float, default=1e-8,
                   help="tolerance of the float64 reference solve the numerical error is measured against (1e-8)")
    p.add_argument("--batch", type=int, default=128, help="test images in the fixed batch (128)")
    p.add_argument("--repeats", type=int, default=3, help="forward passes timed per tolerance, best kept (3)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="cpu (default) | cuda | auto")
    p.add_argument("--out", default=None, help="results folder (default RUN_DIR/tolsweep, numbered if taken)")
    args = p.parse_args(argv)
    try:
        tols = parse_tols(args.tols)
        if args.batch < 1 or args.repeats < 1:
            raise ConfigError("--batch and --repeats must be positive integers")
        if not (math.isfinite(args.reference) and args.reference > 0):
            raise ConfigError(f"--reference={args.reference} must be a positive number")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available; use --device cpu or auto")
        print(f"node-report tolsweep: {args.run_dir} at {len(tols)} tolerances "
              f"(reference {args.reference:g} in float64, batch {args.batch})", flush=True)
        out = sweep(args.run_dir, tols, args.reference, args.batch, args.repeats, args.device, args.out)
    except (ConfigError, DataError) as exc:
        print(f"node-report tolsweep: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    print(f"node-report tolsweep: wrote {out / RESULT} and {out / 'tolsweep.csv'}", flush=True)
