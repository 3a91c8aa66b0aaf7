"""`node-bench`: how fast node-run trains and how much memory a training step keeps, measured, not assumed.

    node-bench                      # `step` then `memory` with their defaults (about 3 minutes on a 2-core CPU)
    node-bench step                 # node-run's MNIST training step against the reference-style baseline
    node-bench memory               # activation bytes / peak memory of one step: ODE-Net, RK-Net, ResNet depths
    node-bench families             # spirals and flows: seconds to reach the quick config's accuracy, node-run's
                                    # tolerance against the reference scripts' default tolerance

`step` builds, in one process and from the same initial weights, node-run's training step (MnistTask, the
optimizer of train.py, the body of `fit`'s loop) and the baseline of `reference.py` (torchvision DataLoader with
PIL transforms, `odeint` on an nn.Module, a Python NFE counter). It first runs both on the same fixed batch
(loss, NFE, activation bytes, peak memory), then times whole training iterations (data included), alternating
the runners (ABBA order) so that a shared, noisy CPU slows them alike; it reports medians and the median of the
per-repetition ratios. Time inside a step is split into the vector field (its forward calls and the backward
of each call, found with autograd marks on the field's input and output), the ODE solver's own work (the rest of
the ODE block's forward and backward) and the rest of the loop (data, other layers, loss, optimizer).

Everything is written under --out (default outputs/bench/<time>/): CSV and Markdown tables, a PNG for memory,
and bench.json with the command, the machine and the thread count.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ConfigError, resolve_device, validate
from .metrics import activation_bytes, peak_memory, peak_memory_method
from .mnist import DataError, default_root
from .solver import ODEBlock, nfe

MiB = 2 ** 20
MODELS = ("odenet", "rknet", "resnet")
# node-run variants for `step --variants` / `memory --variants`: extra config overrides on top of the experiment.
VARIANTS = {
    "plain_rk": (["model.fast_rk=false"], "torchdiffeq's own Runge-Kutta stage arithmetic"),
    "seminorm": (["solver.adjoint_norm=seminorm"], "seminorm adjoint (changes NFE-B: not an equal-NFE row)"),
    "channels_last": (["model.channels_last=true"], "NHWC memory format"),
    "compile": (["model.compile=true"], "torch.compile of the vector field"),
}
ODE_ONLY = ("plain_rk", "seminorm", "channels_last", "compile")
REFERENCE = {"odenet": dict(network="odenet", adjoint=True), "rknet": dict(network="odenet", adjoint=False),
             "resnet": dict(network="resnet", adjoint=False)}


# ------------------------------------------------------------------------------------------------------ config
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    from .tasks import check_task

    with initialize_config_module(config_module="node_cli.conf", version_base="1.3"):
        try:
            cfg = hydra_compose("config", overrides=overrides)
        except Exception as exc:  # Hydra's composition errors
            raise ConfigError(" ".join(str(exc).split())) from None
    validate(cfg)
    check_task(cfg)
    return cfg


def mnist_overrides(args, model: str, variant: str | None = None) -> list[str]:
    out = [f"experiment=mnist_{model}", f"trainer.batch_size={args.batch}", f"seed={args.seed}",
           f"dataset.root={args.data_root}", "dataset.download=false", f"device={args.device}"]
    if model != "resnet":
        out += [f"solver.method={args.method}", f"solver.rtol={args.tol}", f"solver.atol={args.tol}"]
    if args.limit:
        out.append(f"dataset.limit={args.limit}")
    return out + (VARIANTS[variant][0] if variant else [])


# ---------------------------------------------------------------------------------------------- instrumentation
class _Mark(torch.autograd.Function):
    """Identity whose backward calls `callback`: marks when autograd reaches a tensor."""

    @staticmethod
    def forward(ctx, x, callback):
        ctx.callback = callback
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.callback()
        return grad, None


class StepClock:
    """Seconds spent in vector fields and in ODE blocks (forward and backward) while attached to a model."""

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.field = self.ode = 0.0
        self.handles = []

    def now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset(self) -> None:
        self.field = self.ode = 0.0

    def _timed(self, attr: str):
        """Forward pre/post hooks adding a module's forward time, and its backward time between two marks, to attr."""
        state = {}

        def add(seconds):
            setattr(self, attr, getattr(self, attr) + seconds)

        def pre(module, args):
            record = {"start": self.now(), "backward": None}
            state["record"] = record
            y = args[-1] if attr == "field" else args[0]
            if torch.is_grad_enabled() and isinstance(y, torch.Tensor) and y.requires_grad:
                def end():
                    if record["backward"] is not None:
                        add(self.now() - record["backward"])
                        record["backward"] = None
                y = _Mark.apply(y, end)
                return (*args[:-1], y) if attr == "field" else (y, *args[1:])
            return None

        def post(module, args, out):
            record = state.pop("record")
            add(self.now() - record["start"])
            if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
                def start():
                    record["backward"] = self.now()
                return _Mark.apply(out, start)
            return None

        return pre, post

    def attach(self, fields, blocks) -> None:
        for attr, modules in (("field", fields), ("ode", blocks)):
            for m in modules:
                pre, post = self._timed(attr)
                self.handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# ------------------------------------------------------------------------------------------------------ runners
class NodeRunner:
    """node-run's MNIST training step: MnistTask's batches and loss, train.py's optimizer, fit's loop body."""

    def __init__(self, label: str, cfg, device: torch.device):
        from .classify import MnistTask
        from .train import make_optimizer

        self.label, self.cfg, self.device = label, cfg, device
        torch.manual_seed(cfg.seed)
        self.task = MnistTask(cfg, device)
        self.model = self.task.model
        self.optimizer = make_optimizer(cfg.trainer, self.model.parameters())
        self.batches = self._forever()

    def _forever(self):
        epoch = 0
        while True:
            yield from self.task.train_batches(epoch)
            epoch += 1

    def blocks(self):
        return [m for m in self.model.modules() if isinstance(m, ODEBlock)]

    def fields(self):
        return [b.field.field for b in self.blocks()]

    def loss_on(self, batch):
        return self.task.loss(batch)

    def step(self):
        batch = next(self.batches)
        f0, b0 = nfe(self.model)
        loss = self.task.loss(batch)
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite training loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        f1, b1 = nfe(self.model)
        return loss.item(), f1 - f0, b1 - b0


class ReferenceRunner:
    """The baseline of reference.py, from the same initial weights as `source`."""

    def __init__(self, label: str, model_name: str, cfg, source: torch.nn.Module, device: torch.device, workers: int):
        from .reference import ReferenceTrainer, build_reference_model, copy_weights, inf_generator, reference_loader

        spec = REFERENCE[model_name]
        self.label, self.device = label, device
        self.model, self.feature_layers = build_reference_model(
            spec["network"], tol=float(cfg.solver.rtol), adjoint=spec["adjoint"], method=str(cfg.solver.method),
            blocks=int(cfg.model.get("blocks", 6)), channels=int(cfg.model.channels))
        copy_weights(source, self.model)
        self.model.to(device)
        loader = reference_loader(cfg.dataset.root or default_root(), int(cfg.trainer.batch_size),
                                  data_aug=bool(cfg.dataset.augment), num_workers=workers, limit=cfg.dataset.limit)
        self.trainer = ReferenceTrainer(self.model, self.feature_layers, inf_generator(loader), device,
                                        lr=float(cfg.trainer.lr), batch_size=int(cfg.trainer.batch_size))

    def blocks(self):
        return [m for m in self.feature_layers if hasattr(m, "odefunc")]

    def fields(self):
        return [b.odefunc for b in self.blocks()]

    def loss_on(self, batch):
        x, y = batch
        return self.trainer.criterion(self.model(x), y)

    def step(self):
        loss, f, b = self.trainer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss.item(), f, b


def fixed_batch_check(runner, batch, device) -> dict:
    """Loss, NFE, activation bytes and peak memory of one forward + backward (no update) on `batch`."""
    def calls():   # every evaluation of the vector fields so far, forward and backward together
        return sum(getattr(b, "nfe", 0) if hasattr(b, "odefunc") else b.field.calls for b in runner.blocks())

    seen = {}

    def forward():
        seen["start"] = calls()
        loss = runner.loss_on(batch)
        seen["forward"], seen["loss"] = calls(), loss.item()
        return loss

    act = activation_bytes(runner.model, forward)
    end = calls()
    peak = peak_memory(runner.model, lambda: runner.loss_on(batch), device)
    for b in runner.blocks():
        if hasattr(b, "odefunc"):
            b.nfe = 0          # the example's counter is reset by its own loop
    return dict(check_loss=seen["loss"], check_nfe_forward=seen["forward"] - seen["start"],
                check_nfe_backward=end - seen["forward"], activation_bytes=act, peak_memory_bytes=peak)


def median(values):
    return statistics.median(values) if values else float("nan")


def bench_model(args, model: str, device: torch.device, log) -> list[dict]:
    cfg = compose(mnist_overrides(args, model))
    runners = [NodeRunner("node-run", cfg, device)]
    for v in args.variants:
        if model in ("odenet", "rknet") and not (v == "seminorm" and model == "rknet"):
            runners.append(NodeRunner(f"node-run {v}", compose(mnist_overrides(args, model, v)), device))
    for r in runners[1:]:
        r.model.load_state_dict(runners[0].model.state_dict())
    runners.append(ReferenceRunner("reference", model, cfg, runners[0].model, device, args.ref_workers))

    batch = runners[0].task.memory_batch()
    checks = {r.label: fixed_batch_check(r, batch, device) for r in runners}

    clock = StepClock(device)
    times = {r.label: dict(sec=[], nfe_f=[], nfe_b=[], field=[], ode=[], loss=[]) for r in runners}
    total = args.warmup + args.steps
    for rep in range(total):
        order = runners if rep % 2 == 0 else runners[::-1]
        for r in order:
            clock.attach(r.fields(), r.blocks())
            clock.reset()
            tic = clock.now()
            loss, f, b = r.step()
            sec = clock.now() - tic
            clock.detach()
            if rep >= args.warmup:
                rec = times[r.label]
                for key, value in zip(("sec", "nfe_f", "nfe_b", "field", "ode", "loss"),
                                      (sec, f, b, clock.field, clock.ode, loss)):
                    rec[key].append(value)
        log(f"  {model}: repetition {rep + 1}/{total} " + " ".join(
            f"{r.label}={times[r.label]['sec'][-1]:.3f}s" for r in runners if times[r.label]["sec"]))

    ref = times["reference"]["sec"]
    rows = []
    for r in runners:
        t = times[r.label]
        sec = median(t["sec"])
        shares = [x / s for x, s in zip(t["field"], t["sec"])], [(o - fl) / s for o, fl, s in
                                                                 zip(t["ode"], t["field"], t["sec"])]
        rows.append(dict(
            model=model, runner=r.label, method=str(cfg.solver.method) if model != "resnet" else "-",
            tol=float(cfg.solver.rtol) if model != "resnet" else None,
            adjoint=bool(REFERENCE[model]["adjoint"]) if model != "resnet" else None,
            adjoint_norm=(str(r.cfg.solver.adjoint_norm) if isinstance(r, NodeRunner) else "default")
            if model == "odenet" else None,
            batch=args.batch, threads=torch.get_num_threads(), reps=len(t["sec"]),
            sec_per_step=sec, examples_per_sec=args.batch / sec,
            nfe_forward=median(t["nfe_f"]), nfe_backward=median(t["nfe_b"]),
            field_share=median(shares[0]), solver_share=median(shares[1]),
            rest_share=median([1 - a - b for a, b in zip(*shares)]),
            speedup_vs_reference=median([a / b for a, b in zip(ref, t["sec"])]),
            **checks[r.label]))
    return rows


# --------------------------------------------------------------------------------------------------- reporting
STEP_COLUMNS = [
    ("model", "model", str), ("runner", "runner", str), ("sec_per_step", "s/step", "{:.3f}"),
    ("examples_per_sec", "examples/s", "{:.0f}"), ("speedup_vs_reference", "speed-up vs ref", "{:.2f}x"),
    ("nfe_forward", "NFE-F", "{:g}"), ("nfe_backward", "NFE-B", "{:g}"), ("field_share", "field", "{:.0%}"),
    ("solver_share", "solver", "{:.0%}"), ("rest_share", "rest", "{:.0%}"),
    ("check_nfe_forward", "NFE-F/B fixed batch", None), ("activation_bytes", "activations MiB", "mib"),
    ("peak_memory_bytes", "peak MiB", "mib")]
MEMORY_COLUMNS = [
    ("model", "model", str), ("setting", "setting", str), ("nfe_forward", "NFE-F", "{:g}"),
    ("nfe_backward", "NFE-B", "{:g}"), ("activation_bytes", "activations MiB", "mib"),
    ("peak_memory_bytes", "peak MiB", "mib")]


def _cell(row, key, fmt):
    if key == "check_nfe_forward":
        return f"{row['check_nfe_forward']}/{row['check_nfe_backward']}"
    value = row.get(key)
    if value is None:
        return "-"
    if fmt == "mib":
        return f"{value / MiB:.2f}"
    return fmt(value) if callable(fmt) else fmt.format(value)


def markdown(rows, columns) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_table(out: Path, name: str, rows: list[dict], columns, header: str) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    text = header + "\n\n" + markdown(rows, columns) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


def environment(args, device) -> dict:
    return dict(command="node-bench " + " ".join(args.argv), date=datetime.datetime.now().isoformat(timespec="seconds"),
                machine=_cpu_name(), cores=os.cpu_count(), threads=torch.get_num_threads(), device=str(device),
                cuda=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                torch=torch.__version__, python=platform.python_version(),
                load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def step_header(args, device, rows) -> str:
    env = environment(args, device)
    lines = [f"## Training step: node-run against the reference-style baseline",
             f"`{env['command']}` on {env['machine']} ({env['cores']} cores, {env['threads']} torch threads, "
             f"{env['device']}), torch {env['torch']}, load average at the end {env['load_average']}.",
             f"Batch {args.batch}; ODE models solved by {args.method} at rtol = atol = {args.tol:g}; "
             f"{args.steps} timed repetitions after {args.warmup} warm-up, runners alternated; medians; the "
             "speed-up is the median of per-repetition ratios (reference seconds / runner seconds). field / solver "
             "/ rest: shares of the step in the vector field (forward and its backward), in the ODE solver's own "
             "work, and in everything else. NFE-F/B fixed batch, activations and peak: one forward + backward "
             "of every runner on the same batch from the same weights."]
    for r in rows:
        if r["runner"] == "node-run" and r["model"] in ("odenet", "rknet"):
            ref = next(x for x in rows if x["model"] == r["model"] and x["runner"] == "reference")
            same = (r["check_nfe_forward"], r["check_nfe_backward"]) == (ref["check_nfe_forward"],
                                                                        ref["check_nfe_backward"])
            lines.append(f"- {r['model']}: node-run {r['speedup_vs_reference']:.2f}x the reference's speed; "
                         f"solver overhead {r['solver_share']:.0%} of node-run's step (reference "
                         f"{ref['solver_share']:.0%}); same NFE on the fixed batch: {'yes' if same else 'NO'}; "
                         f"loss {r['check_loss']:.6f} vs {ref['check_loss']:.6f}.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- memory
def saved_by_shape(model, forward, top: int = 4) -> str:
    """The largest tensors autograd saves during forward(), grouped by shape (parameters excluded)."""
    excluded = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, sizes = set(), {}

    def pack(t):
        try:
            s = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        if s.data_ptr() not in seen and s.data_ptr() not in excluded:
            seen.add(s.data_ptr())
            key = "x".join(map(str, t.shape)) or "scalar"
            n, b = sizes.get(key, (0, 0))
            sizes[key] = (n + 1, b + s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    loss.backward()
    model.zero_grad(set_to_none=True)
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1][1])[:top]
    return "; ".join(f"{n} x [{k}] {b / MiB:.2f} MiB" for k, (n, b) in biggest)


def memory_rows(args, device, log) -> list[dict]:
    from .classify import MnistTask
    from .models import build_mnist_model

    base_cfg = compose(mnist_overrides(args, "odenet"))
    torch.manual_seed(args.seed)
    task = MnistTask(base_cfg, device)
    x, y = task.memory_batch()
    state = {k: v.clone() for k, v in task.model.state_dict().items()}
    settings = [("odenet", f"tol {t:g}", ["experiment=mnist_odenet", f"solver.rtol={t}", f"solver.atol={t}"])
                for t in args.tols]
    settings += [("rknet", f"tol {t:g}", ["experiment=mnist_rknet", f"solver.rtol={t}", f"solver.atol={t}"])
                 for t in args.tols]
    for v in args.variants:
        if v in ("plain_rk",):
            settings += [("rknet", f"tol {t:g} {v}", ["experiment=mnist_rknet", f"solver.rtol={t}",
                                                        f"solver.atol={t}", *VARIANTS[v][0]]) for t in args.tols]
    settings += [("resnet", f"{k} blocks", ["experiment=mnist_resnet", f"model.blocks={k}"]) for k in args.blocks]
    rows = []
    for model_name, setting, overrides in settings:
        cfg = compose(overrides + [f"solver.method={args.method}", f"trainer.batch_size={args.batch}",
                                   f"device={args.device}"])
        model = build_mnist_model(cfg.model, cfg.solver).to(device)
        if model_name != "resnet":
            model.load_state_dict(state)
        else:
            torch.manual_seed(args.seed)
        loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
        f0, b0 = nfe(model)
        act = activation_bytes(model, loss_fn)
        f1, b1 = nfe(model)
        peak = peak_memory(model, loss_fn, device)
        rows.append(dict(model=model_name, setting=setting, tol=float(cfg.solver.rtol) if model_name != "resnet"
                         else None, blocks=int(cfg.model.blocks) if model_name == "resnet" else None,
                         adjoint=bool(cfg.solver.adjoint) if model_name != "resnet" else None,
                         batch=len(x), nfe_forward=f1 - f0, nfe_backward=b1 - b0, activation_bytes=act,
                         peak_memory_bytes=peak, peak_memory_method=peak_memory_method(device),
                         largest_saved=saved_by_shape(model, loss_fn) if model_name == "odenet" else None))
        log(f"  memory {model_name} {setting}: NFE {f1 - f0}/{b1 - b0}, activations {act / MiB:.2f} MiB, "
            f"peak {peak / MiB:.2f} MiB")
    return rows


def memory_header(args, device, rows) -> str:
    env = environment(args, device)
    lines = ["## Memory of one training step (forward + backward, no update)",
             f"`{env['command']}` on {env['machine']} ({env['device']}), batch {args.batch}, {args.method}, one "
             f"fixed MNIST batch, the same initial ODE weights at every tolerance. Activations: bytes autograd saves "
             f"for backward (metrics.activation_bytes); peak: {peak_memory_method(device)}."]
    ode = {r["tol"]: r for r in rows if r["model"] == "odenet"}
    if ode:
        lo, hi = ode[max(ode)], ode[min(ode)]
        lines.append(f"- ODE-Net (adjoint): activations at tol {min(ode):g} are "
                     f"{hi['activation_bytes'] / lo['activation_bytes']:.3f}x those at tol {max(ode):g} "
                     f"(NFE-F {lo['nfe_forward']} -> {hi['nfe_forward']}); peak "
                     f"{hi['peak_memory_bytes'] / max(lo['peak_memory_bytes'], 1):.3f}x.")
        lines.append(f"- What the adjoint keeps (largest saved tensors at tol {min(ode):g}): {hi['largest_saved']}.")
    rk = {r["tol"]: r for r in rows if r["model"] == "rknet" and "plain_rk" not in r["setting"]}
    if rk:
        lo, hi = rk[max(rk)], rk[min(rk)]
        lines.append(f"- RK-Net (backprop through dopri5): activations grow "
                     f"{hi['activation_bytes'] / lo['activation_bytes']:.2f}x from tol {max(rk):g} to {min(rk):g} "
                     f"(NFE-F {lo['nfe_forward']} -> {hi['nfe_forward']}).")
    return "\n".join(lines)


def memory_plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "activation_bytes", "saved for backward"),
                           (axes[1], "peak_memory_bytes", "peak allocated")):
        for model, style, label in (("odenet", "o-", "ODE-Net (adjoint): x = NFE-F"),
                                    ("rknet", "s-", "RK-Net (backprop): x = NFE-F"),
                                    ("resnet", "^-", "ResNet: x = residual blocks")):
            rs = [r for r in rows if r["model"] == model and "plain_rk" not in r["setting"]]
            if not rs:
                continue
            xs = [r["blocks"] if model == "resnet" else r["nfe_forward"] for r in rs]
            pts = sorted(zip(xs, [r[key] / MiB for r in rs]))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("depth: function evaluations (ODE) or blocks (ResNet)")
        ax.set_ylabel("MiB")
        ax.set_title(f"one training step: {title}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------- families
FAMILIES = {
    # name: (experiment, reference script's solver tolerance overrides, headline metric (lower is better))
    "spirals": ("spiral_latent_ode", ["solver.rtol=1e-7", "solver.atol=1e-9"], "test_rmse"),
    "flows": ("cnf_circles", ["solver.rtol=1e-5", "solver.atol=1e-5"], "test_nll"),
}


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

    from .cli import execute
    from .run import read_metrics
    from .tasks import FAMILIES as TASKS

    rows = []
    for name in args.families:
        experiment, ref_overrides, metric = FAMILIES[name]
        common = [f"experiment={experiment}", "trainer=quick", "trainer.progress=false", f"seed={args.seed}",
                  f"trainer.eval_every={args.eval_every}", f"device={args.device}"]
        if args.family_steps:
            common.append(f"trainer.max_steps={args.family_steps}")
        try:
            runs = {}
            for label, extra in (("node-run", []), ("reference tolerance", ref_overrides)):
                cfg = compose(common + extra)
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
            task = TASKS.get("latent" if name == "spirals" else "flow")
            rows.append(dict(family=name, experiment=experiment, status=f"not available: {exc} ({task})"))
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


FAMILY_COLUMNS = [
    ("family", "family", str), ("runner", "solved at", str), ("rtol", "rtol", "{:g}"), ("atol", "atol", "{:g}"),
    ("metric", "metric", str), ("final", "final", "{:.4f}"), ("nfe_forward", "NFE-F", "{:.1f}"),
    ("nfe_backward", "NFE-B", "{:.1f}"), ("sec_per_step", "s/step", "{:.3f}"),
    ("examples_per_sec", "examples/s", "{:.0f}"), ("activation_bytes", "activations MiB", "mib"),
    ("peak_memory_bytes", "peak MiB", "mib"), ("reached_at_step", "target at step", "{}"),
    ("nfe_to_target", "NFE to target", "{:.0f}"), ("seconds_to_target", "s to target", "{:.1f}"),
    ("seconds_median_to_target", "s to target (median s/step)", "{:.1f}"), ("ratio_nfe", "ratio NFE", "{:.2f}x"),
    ("ratio_seconds", "ratio s", "{:.2f}x"), ("ratio_seconds_median", "ratio s (median)", "{:.2f}x")]


# ------------------------------------------------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block
        raise ConfigError(f"{message} (see node-bench --help)")


def parse(argv):
    p = _Parser(prog="node-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="all", choices=("all", "step", "memory", "families"),
                   help="what to measure (default: step, then memory)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench/<time>)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared CPU more threads "
                   "mostly wait for each other; every runner gets the same)")
    p.add_argument("--data-root", type=Path, default=None, help="MNIST root (default: node-run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--method", default="dopri5", help="solver of the ODE models (default dopri5)")
    p.add_argument("--tol", type=float, default=1e-3, help="step: rtol = atol of the ODE models (default 1e-3)")
    p.add_argument("--models", default="odenet,rknet,resnet", help="step: comma-separated of " + ",".join(MODELS))
    p.add_argument("--steps", type=int, default=5, help="step: timed repetitions per runner (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="step: untimed repetitions first (default 1)")
    p.add_argument("--variants", default="", help="step/memory: extra node-run rows, comma-separated of "
                   + ",".join(VARIANTS))
    p.add_argument("--ref-workers", type=int, default=2, help="reference DataLoader workers (the example: 2)")
    p.add_argument("--limit", type=int, default=None, help="cap on MNIST training examples")
    p.add_argument("--tols", default="1e-1,1e-2,1e-3,1e-4,1e-5", help="memory: tolerances")
    p.add_argument("--blocks", default="1,2,4,6,12", help="memory: ResNet depths")
    p.add_argument("--families", default="spirals,flows", help="families: comma-separated of "
                   + ",".join(FAMILIES))
    p.add_argument("--family-steps", type=int, default=None, help="families: optimizer steps (default: trainer=quick)")
    p.add_argument("--eval-every", type=int, default=25, help="families: steps between evaluations (default 25)")
    args = p.parse_args(argv)
    args.argv = list(argv)

    def items(value, accepted, key):
        out = [v for v in value.split(",") if v]
        bad = [v for v in out if v not in accepted]
        if bad:
            raise ConfigError(f"unknown {key} {bad[0]!r}; accepted: {', '.join(accepted)}")
        return out

    def numbers(value, key, kind):
        try:
            out = [kind(v) for v in value.split(",") if v]
        except ValueError:
            raise ConfigError(f"--{key}={value!r} is not a comma-separated list of numbers") from None
        if not out or any(v <= 0 for v in out):
            raise ConfigError(f"--{key}={value!r}: every value must be positive")
        return out

    args.models = items(args.models, MODELS, "--models model")
    args.variants = items(args.variants, tuple(VARIANTS), "--variants variant")
    args.families = items(args.families, tuple(FAMILIES), "--families family")
    args.tols = numbers(args.tols, "tols", float)
    args.blocks = numbers(args.blocks, "blocks", int)
    for key in ("batch", "steps", "threads", "limit", "family_steps", "eval_every"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')}={value} is not allowed: it must be a positive integer")
    if args.tol <= 0:
        raise ConfigError(f"--tol={args.tol} is not allowed: it must be positive")
    if args.warmup < 0 or args.ref_workers < 0:
        raise ConfigError("--warmup and --ref-workers must be at least 0")
    args.data_root = (args.data_root or default_root()).expanduser()
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse(argv)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available; use --device auto or cpu")
        device = resolve_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        out = args.out or Path("outputs") / "bench" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        if out.exists() and any(out.glob("*.csv")):
            raise ConfigError(f"{out} already holds benchmark results; choose another --out (nothing is overwritten)")
        out.mkdir(parents=True, exist_ok=True)
    except ConfigError as exc:
        print(f"node-bench: error: {exc}", file=sys.stderr)
        return 2

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    report = []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ii]nference.*")
            if args.command in ("all", "step"):
                rows = []
                for model in args.models:
                    log(f"node-bench step: {model}")
                    rows += bench_model(args, model, device, log)
                report.append(write_table(out, "step", rows, STEP_COLUMNS, step_header(args, device, rows)))
            if args.command in ("all", "memory"):
                log("node-bench memory")
                rows = memory_rows(args, device, log)
                report.append(write_table(out, "memory", rows, MEMORY_COLUMNS, memory_header(args, device, rows)))
                memory_plot(rows, out / "memory.png")
            if args.command == "families":
                rows = family_rows(args, out, log)
                env = environment(args, device)
                header = (f"## Spirals and flows: seconds to reach the quick config's accuracy\n"
                          f"`{env['command']}` on {env['machine']} ({env['threads']} torch threads). Target: the "
                          f"node-run quick run's final metric; the same model and budget solved at the reference "
                          f"script's tolerance. Costs up to the first evaluation that reaches the target: function "
                          f"evaluations (forward + backward, machine-independent), training seconds (evaluations "
                          f"excluded) as measured and as the run's median s/step times the steps (the runs are "
                          f"sequential, so a load spike on a shared CPU hits one and not the other).")
                report.append(write_table(out, "families", rows, FAMILY_COLUMNS, header))
    except (ConfigError, DataError) as exc:
        print(f"node-bench: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    with open(out / "bench.json", "w") as f:
        json.dump(environment(args, device), f, indent=2)
    print("\n\n".join(report))
    print(f"\nnode-bench: tables in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
