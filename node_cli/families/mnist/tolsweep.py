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

The backward study (Figure 3 (c)): at every tolerance, one training step's gradient by the adjoint with the
default norm, with the seminorm, and with the backward solve `--loose` times looser than the forward one. Each row
has NFE-F, NFE-B, their ratio and `grad_error` = |g - g_ref| / |g_ref| over all parameters, where g_ref is the
gradient of a float64 copy of the model on the same batch, solved forward and backward (adjoint) at `--reference`.
The paper's NFE-B of about half NFE-F came from scipy's Adams solver (torchdiffeq issue #97); torchdiffeq's dopri5
does not reproduce it at equal tolerances, and the loose row shows what a looser backward solve costs in gradient
accuracy: it is not a reproduction.

Results go to a new folder (default RUN_DIR/tolsweep, then tolsweep_2, ...): tolsweep.json, tolsweep.csv and
backward.csv.
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
import torch.nn.functional as F

from ...core.checks import ConfigError, DataError, one_line, resolve_device
from ...core.measure import activation_bytes
from ...core.progress import bar, say
from ...core.rundir import write_json
from ...core.solve import ODEBlock

DEFAULT_TOLS = "1e-1,3e-2,1e-2,3e-3,1e-3,3e-4,1e-4,3e-5,1e-5"
RESULT = "tolsweep.json"
BACKWARD_COLUMNS = ("variant", "tol", "adjoint_tol", "norm", "step_nfe_forward", "step_nfe_backward", "ratio",
                    "grad_error", "loss")
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
        if cfg.get("task") != "mnist":
            raise ConfigError(f"tolsweep evaluates MNIST classifiers with an ODE block (task mnist, model odenet "
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


def gradient(model, block, x, y) -> tuple[torch.Tensor, float, int, int]:
    """One training step's gradient over all parameters (flattened), its loss, and the step's NFE-F and NFE-B."""
    model.zero_grad(set_to_none=True)
    f0, b0 = block.nfe_forward, block.nfe_backward
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return g.detach(), loss.item(), block.nfe_forward - f0, block.nfe_backward - b0


def backward_study(model, block, x, y, tols, reference: float, loose: float, progress: bool = True) -> dict:
    """Figure 3 (c): NFE-B / NFE-F and gradient error of the adjoint for the default norm, the seminorm and a
    backward solve `loose` times looser, at every forward tolerance, against a float64 gradient at `reference`."""
    ref_model = copy.deepcopy(model).double()
    ref_block = next(m for m in ref_model.modules() if isinstance(m, ODEBlock))
    with ref_block.tolerance(reference), ref_block.backward_solve("default", reference, reference):
        g_ref, loss_ref, ref_f, ref_b = gradient(ref_model, ref_block, x.double(), y)
    g_ref = g_ref.float()
    variants = [("default", "default", 1.0), ("seminorm", "seminorm", 1.0), (f"adjoint tol x{loose:g}", "default", loose)]
    rows = []
    for tol in bar(tols, progress, desc="tolsweep: gradients", unit="tol"):
        for name, norm, factor in variants:
            with block.tolerance(tol), block.backward_solve(norm, tol * factor, tol * factor):
                g, loss, nf, nb = gradient(model, block, x, y)
            rows.append(dict(variant=name, tol=tol, adjoint_tol=tol * factor, norm=norm, step_nfe_forward=nf,
                             step_nfe_backward=nb, ratio=nb / nf if nf else None,
                             grad_error=((g - g_ref).norm() / g_ref.norm()).item(), loss=loss))
            if progress:
                r = rows[-1]
                say(f"  tol {tol:8.1e} {name:>16}: NFE-F/B {nf}/{nb} (ratio {r['ratio']:.2f})  "
                    f"gradient error {r['grad_error']:.2e}")
    return dict(reference_tol=reference, reference_nfe_forward=ref_f, reference_nfe_backward=ref_b,
                reference_loss=loss_ref, loose=loose, rows=rows)


def sweep(run_dir, tols, reference: float = 1e-8, batch: int = 128, repeats: int = 3, device: str = "cpu",
          out: str | None = None, progress: bool = True, loose: float = 10.0) -> Path:
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
    ref, ref_nfe = reference_output(model, block, x, seen, reference)
    rows = []
    for tol in bar(tols, progress, desc="tolsweep: forward", unit="tol"):
        rows.append(forward_row(task, block, x, y, tol, seen, ref, repeats, dev))
        if progress:
            row = rows[-1]
            say(f"  tol {tol:8.1e}: NFE-F {row['nfe_forward']:4d}  error {row['error_rms']:.2e}  forward "
                f"{row['forward_seconds']:.3f} s  step NFE-F/B {row['step_nfe_forward']}/{row['step_nfe_backward']}")
    hook.remove()
    backward = backward_study(model, block, x, y, tols, reference, loose, progress)

    result = dict(kind="tolsweep", run_dir=str(run_dir), experiment=cfg.get("name"), model=cfg.model.name,
                  adjoint=bool(block.adjoint), method=block.kwargs["method"], checkpoint_step=ckpt.get("step"),
                  checkpoint_metrics=ckpt.get("metrics"), reference_tol=reference, reference_nfe=ref_nfe,
                  reference_dtype="float64", batch=int(len(x)), repeats=repeats, device=str(dev),
                  torch=torch.__version__, created=datetime.datetime.now().isoformat(timespec="seconds"),
                  rows=rows, backward=backward)
    write_sweep(out_dir, result)
    return out_dir


def reference_output(model, block, x, seen: dict, reference: float) -> tuple[torch.Tensor, int]:
    """The block's output on the batch solved in float64 at `reference` (from its input h(0), which the forward
    hook filling `seen` captures), and that solve's NFE."""
    with torch.no_grad():
        model(x)                                             # captures the block's input h(0)
        ref_block = copy.deepcopy(block).double()
        ref_block.nfe_forward, ref_block.field.calls = 0, 0
        h0 = seen["h0"].detach()
        with ref_block.tolerance(reference):
            ref = ref_block(h0.double()).float()
    return ref, ref_block.nfe_forward


def forward_row(task, block, x, y, tol: float, seen: dict, ref: torch.Tensor, repeats: int, dev) -> dict:
    """One tolerance: the forward pass (its NFE, best time of `repeats`, error of the block's output against `ref`,
    batch error) and one training step (its NFE-F / NFE-B, time, activation bytes)."""
    model = task.model
    ref_rms = ref.pow(2).mean().sqrt().item()
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
        return dict(tol=tol, nfe_forward=nfe_f, forward_seconds=best,
                    error_rms=diff.pow(2).mean().sqrt().item(), error_max=diff.abs().max().item(),
                    error_rel=diff.pow(2).mean().sqrt().item() / max(ref_rms, 1e-30),
                    batch_error=(logits.argmax(1) != y).float().mean().item(),
                    step_nfe_forward=block.nfe_forward - f0, step_nfe_backward=block.nfe_backward - b0,
                    step_seconds=step_seconds, activation_bytes=act)


def write_sweep(out_dir: Path, result: dict) -> None:
    """tolsweep.json, and its forward and backward rows as tolsweep.csv and backward.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULT, result)
    for name, columns, table in (("tolsweep.csv", COLUMNS, result["rows"]),
                                 ("backward.csv", BACKWARD_COLUMNS, result["backward"]["rows"])):
        with open(out_dir / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)


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
    p.add_argument("--loose", type=float, default=10.0,
                   help="backward study: the loose variant's adjoint tolerance is this many times the forward one (10)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="cpu (default) | cuda | auto")
    p.add_argument("--out", default=None, help="results folder (default RUN_DIR/tolsweep, numbered if taken)")
    args = p.parse_args(argv)
    try:
        tols = parse_tols(args.tols)
        if args.batch < 1 or args.repeats < 1:
            raise ConfigError("--batch and --repeats must be positive integers")
        if not (math.isfinite(args.reference) and args.reference > 0):
            raise ConfigError(f"--reference={args.reference} must be a positive number")
        if not (math.isfinite(args.loose) and args.loose >= 1):
            raise ConfigError(f"--loose={args.loose} must be a number of at least 1 (the backward tolerance factor)")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available; use --device cpu or auto")
        print(f"node-report tolsweep: {args.run_dir} at {len(tols)} tolerances "
              f"(reference {args.reference:g} in float64, batch {args.batch})", flush=True)
        out = sweep(args.run_dir, tols, args.reference, args.batch, args.repeats, args.device, args.out,
                    loose=args.loose)
    except (ConfigError, DataError) as exc:
        print(f"node-report tolsweep: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    print(f"node-report tolsweep: wrote {out / RESULT}, {out / 'tolsweep.csv'} and {out / 'backward.csv'}",
          flush=True)
