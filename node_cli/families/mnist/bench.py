"""`node-bench step` and `node-bench memory`: the MNIST family's benchmarks (plain `node-bench` runs both).

`step` builds, in one process and from the same initial weights, node-run's training step (MnistTask, the
optimizer of core/train.py, the body of `fit`'s loop) and the baseline of `reference.py` (torchvision DataLoader
with PIL transforms, `odeint` on an nn.Module, a Python NFE counter). It first runs both on the same fixed batch
(loss, NFE, activation bytes, peak memory), then times whole training iterations (data included), alternating
the runners (ABBA order) so that a shared, noisy CPU slows them alike; it reports medians and the median of the
per-repetition ratios. Time inside a step is split by `core.clock.StepClock` into the vector field, the ODE
solver's own work and the rest of the loop (data, other layers, loss, optimizer).

`memory` (bench_memory.py): activation bytes and peak memory of one step, ODE-Net and RK-Net at several
tolerances and ResNets of several depths.
"""
from __future__ import annotations

import torch

from ...core.checks import ConfigError
from ...core.clock import StepClock, environment, median
from ...core.measure import activation_bytes, peak_memory
from ...core.progress import bar
from ...core.meter import Count, blocks as ode_blocks
from ...core.tables import write_table
from .data import default_root

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


def mnist_overrides(args, model: str, variant: str | None = None) -> list[str]:
    out = [f"experiment=mnist_{model}", f"trainer.batch_size={args.batch}", f"seed={args.seed}",
           f"dataset.root={args.data_root}", "dataset.download=false", f"device={args.device}"]
    if model != "resnet":
        out += [f"solver.method={args.method}", f"solver.rtol={args.tol}", f"solver.atol={args.tol}"]
    if args.limit:
        out.append(f"dataset.limit={args.limit}")
    return out + (VARIANTS[variant][0] if variant else [])


class NodeRunner:
    """node-run's MNIST training step: MnistTask's batches and loss, train.py's optimizer, fit's loop body."""

    def __init__(self, label: str, cfg, device: torch.device):
        from ...core.train import make_optimizer
        from .task import MnistTask

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
        return ode_blocks(self.model)

    def fields(self):
        return [b.vector_field for b in self.blocks()]

    def loss_on(self, batch):
        return self.task.loss(batch)

    def step(self):
        batch = next(self.batches)
        with Count(self.model) as c:
            loss = self.task.loss(batch)
            if not torch.isfinite(loss):
                raise RuntimeError("non-finite training loss")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return loss.item(), c.nfe_forward, c.nfe_backward


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


def bench_model(args, model: str, device: torch.device, log) -> list[dict]:
    cfg = args.configure(mnist_overrides(args, model))
    runners = [NodeRunner("node-run", cfg, device)]
    for v in args.variants:
        if model in ("odenet", "rknet") and not (v == "seminorm" and model == "rknet"):
            runners.append(NodeRunner(f"node-run {v}", args.configure(mnist_overrides(args, model, v)), device))
    for r in runners[1:]:
        r.model.load_state_dict(runners[0].model.state_dict())
    runners.append(ReferenceRunner("reference", model, cfg, runners[0].model, device, args.ref_workers))

    batch = runners[0].task.memory_batch()
    checks = {r.label: fixed_batch_check(r, batch, device) for r in runners}

    clock = StepClock(device)
    times = {r.label: dict(sec=[], nfe_f=[], nfe_b=[], field=[], ode=[], loss=[]) for r in runners}
    total = args.warmup + args.steps
    for rep in bar(range(total), desc=f"node-bench step {model}", unit="repetition", leave=False):
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
            check_nfe=f"{checks[r.label]['check_nfe_forward']}/{checks[r.label]['check_nfe_backward']}",
            **checks[r.label]))
    return rows


STEP_COLUMNS = [
    ("model", "model", str), ("runner", "runner", str), ("sec_per_step", "s/step", "{:.3f}"),
    ("examples_per_sec", "examples/s", "{:.0f}"), ("speedup_vs_reference", "speed-up vs ref", "{:.2f}x"),
    ("nfe_forward", "NFE-F", "{:g}"), ("nfe_backward", "NFE-B", "{:g}"), ("field_share", "field", "{:.0%}"),
    ("solver_share", "solver", "{:.0%}"), ("rest_share", "rest", "{:.0%}"),
    ("check_nfe", "NFE-F/B fixed batch", None), ("activation_bytes", "activations MiB", "mib"),
    ("peak_memory_bytes", "peak MiB", "mib")]
MEMORY_COLUMNS = [
    ("model", "model", str), ("setting", "setting", str), ("nfe_forward", "NFE-F", "{:g}"),
    ("nfe_backward", "NFE-B", "{:g}"), ("activation_bytes", "activations MiB", "mib"),
    ("peak_memory_bytes", "peak MiB", "mib")]


def step_header(args, device, rows) -> str:
    env = environment(args.line, device)
    lines = ["## Training step: node-run against the reference-style baseline",
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




# ------------------------------------------------------------------------------------- node-bench step | memory
def add_arguments(p) -> None:
    p.add_argument("--data-root", type=str, default=None, help="MNIST root (default: node-run's)")
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


def check_arguments(args, items, numbers) -> None:
    """Turn the comma-separated options into lists and refuse bad values (ConfigError, one line)."""
    from pathlib import Path

    args.models = items(args.models, MODELS, "--models model")
    args.variants = items(args.variants, tuple(VARIANTS), "--variants variant")
    args.tols = numbers(args.tols, "tols", float)
    args.blocks = numbers(args.blocks, "blocks", int)
    for key in ("batch", "steps", "limit"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ConfigError(f"--{key}={value} is not allowed: it must be a positive integer")
    if not args.tol > 0:
        raise ConfigError(f"--tol={args.tol} is not allowed: it must be positive")
    if args.warmup < 0 or args.ref_workers < 0:
        raise ConfigError("--warmup and --ref-workers must be at least 0")
    args.data_root = Path(args.data_root or default_root()).expanduser()


def run_step(args, device, out, log) -> list[str]:
    rows = []
    for model in args.models:
        log(f"node-bench step: {model}")
        rows += bench_model(args, model, device, log)
    return [write_table(out, "step", rows, STEP_COLUMNS, step_header(args, device, rows))]
