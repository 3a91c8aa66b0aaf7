"""`node-bench reference`: every family's node-run training step against a plain torchdiffeq loop.

Each family gives, through the registry (`Family.reference`), one `ReferenceLoop` per row: a loop written the way
its reference script writes it (odeint called directly on the field, a Python NFE counter, the script's optimizer
and trace) on node-run's field architecture, initial weights and batches. Here, in one process:

1. timing: `--warmup` untimed then `--reps` timed training steps of each, alternated (A B B A ...) on the same
   batch, the global random state reseeded the same way before each (a latent ODE draws its z0 noise); medians,
   and the speed-up is the median of the per-step ratios (reference seconds / node-run seconds);
2. the field's own cost: one evaluation of node-run's field, forward (no graph) and forward + backward, on the
   state it saw in the first timed step, timed alone; times the step's NFE (forward evaluations with a graph
   unless the adjoint solves forward without one, backward evaluations with their vector-Jacobian product);
3. the ODE block's share: a few more node-run steps with marks on every ODE block's inputs and outputs (forward
   hooks, identity autograd nodes) that time the block's forward and its backward; `overhead_share` is what
   the block took beyond the field's own cost, the rest of the step is the model's non-ODE work.
"""
from __future__ import annotations

import math
import time

import torch

from .. import families
from ..core.checks import ConfigError, DataError
from ..core.clock import environment, median
from ..core.meter import Count, blocks as meter_blocks
from ..core.solve import ODEBlock
from ..core.tables import write_table


def loops() -> dict:
    """family name -> {row: builder} of every family with reference loops."""
    return {f.name: f.reference() for f in families.every() if f.reference()}


def node_step(task, optimizer):
    """node-run's training step, the body of core/train.py's loop: (batch) -> (loss, nfe_forward, nfe_backward)."""
    blocks = meter_blocks(task.model)   # found once, as the training loop's meter does

    def step(batch):
        with Count(blocks) as c:
            loss = task.loss(batch)
            if not torch.isfinite(loss):
                raise RuntimeError("non-finite training loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss.item(), c.nfe_forward, c.nfe_backward

    return step


def _tensors(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _like(x, values):
    return tuple(values) if isinstance(x, (tuple, list)) else values[0]


class _Mark(torch.autograd.Function):
    """Identity on several tensors whose backward calls `callback` (when autograd reaches them)."""

    @staticmethod
    def forward(ctx, callback, *xs):
        ctx.callback = callback
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *grads):
        ctx.callback()
        return (None, *grads)


class BlockClock:
    """Seconds in node-run's ODE blocks, forward and backward, while attached (forward hooks and marks)."""

    def __init__(self, blocks):
        self.seconds, self.handles, self.pending = 0.0, [], {}
        for b in blocks:
            self.handles += [b.register_forward_pre_hook(self.pre), b.register_forward_hook(self.post)]

    def add_since(self, key):
        start = self.pending.pop(key, None)
        if start is not None:
            self.seconds += time.perf_counter() - start

    def pre(self, module, args):
        self.pending["forward"] = time.perf_counter()
        if not torch.is_grad_enabled():
            return None
        xs = [x if x.requires_grad else x.detach().requires_grad_(True) for x in _tensors(args[0])]
        marked = _Mark.apply(lambda: self.add_since("backward"), *xs)   # the block's backward ends here
        return (_like(args[0], marked), *args[1:])

    def post(self, module, args, out):
        self.add_since("forward")
        if not torch.is_grad_enabled():
            return None

        def start():
            self.pending["backward"] = time.perf_counter()
        return _like(out, _Mark.apply(start, *_tensors(out)))

    def detach(self):
        for h in self.handles:
            h.remove()


def field_seconds(block: ODEBlock, t, y, reps: int) -> tuple[float, float]:
    """(forward without a graph, forward + backward) seconds of one evaluation of the block's field at (t, y):
    medians over `reps` calls. The backward differentiates every output with respect to the state and the
    parameters, as backprop through the solver and the adjoint's vector-Jacobian products do."""
    field = block.vector_field
    fwd, both = [], []
    for _ in range(reps):
        tic = time.perf_counter()
        with torch.no_grad():
            field(t, y)
        fwd.append(time.perf_counter() - tic)
        ys = [v.detach().requires_grad_(True) for v in _tensors(y)]
        tic = time.perf_counter()
        out = _tensors(field(t, _like(y, ys)))
        torch.autograd.backward([o for o in out if o.requires_grad],
                                [torch.ones_like(o) for o in out if o.requires_grad])
        both.append(time.perf_counter() - tic)
    field.zero_grad(set_to_none=True)
    return median(fwd), median(both)


def _first_state(blocks):
    """A forward pre-hook on every block's counted field that keeps the first (t, state) it is called with."""
    seen = {}

    def hook(module, args):
        if module not in seen:
            t, y = args[0], args[1]
            seen[module] = (t.detach().clone(), _like(y, [v.detach().clone() for v in _tensors(y)]))
    return seen, [b.field.register_forward_pre_hook(hook) for b in blocks]


def measure(name, loop, args, log) -> dict:
    task, cfg = loop.task, loop.cfg
    model = task.model
    from ..core.train import make_optimizer

    node = node_step(task, make_optimizer(cfg.trainer, model.parameters()))
    runners = {"node": node, "ref": loop.step}
    blocks = meter_blocks(model)
    rec = {k: dict(sec=[], nfe=[], loss=[]) for k in runners}
    seen, handles = {}, []
    total = args.warmup_steps + args.reps
    if len(loop.batches) < total + args.split_reps:
        raise ValueError(f"{name}: {len(loop.batches)} batches for {total + args.split_reps} steps")
    last = {}
    for rep in range(total):
        batch = loop.batches[rep]
        if rep == args.warmup_steps:
            seen, handles = _first_state(blocks)
        for key in (("node", "ref") if rep % 2 == 0 else ("ref", "node")):
            torch.manual_seed(args.seed + rep)
            tic = time.perf_counter()
            loss, f, b = runners[key](batch)
            sec = last[key] = time.perf_counter() - tic
            if rep >= args.warmup_steps:
                rec[key]["sec"].append(sec)
                rec[key]["nfe"].append(f + b)
                rec[key]["loss"].append(loss)
            if key == "node":
                for h in handles:
                    h.remove()
                handles = []
        log(f"  {name}: step {rep + 1}/{total}{' (warm-up)' if rep < args.warmup_steps else ''}: node-run "
            f"{last['node']:.4f}s, reference {last['ref']:.4f}s")

    node_sec, ref_sec = median(rec["node"]["sec"]), median(rec["ref"]["sec"])
    node_nfe, ref_nfe = median(rec["node"]["nfe"]), median(rec["ref"]["nfe"])
    ratios = [r / n for r, n in zip(rec["ref"]["sec"], rec["node"]["sec"])]

    # the ODE blocks' share of a step (marked steps), and the field's own cost: its evaluations in those steps
    # times one evaluation's seconds
    before = {blk: (blk.nfe_forward, blk.nfe_backward) for blk in blocks}
    torch.manual_seed(args.seed)
    clock = BlockClock(blocks)
    split = []
    for i in range(args.split_reps):
        clock.seconds = 0.0
        tic = time.perf_counter()
        node(loop.batches[total + i])
        split.append((clock.seconds, time.perf_counter() - tic))
    clock.detach()
    field_step = 0.0
    for blk in blocks:
        if blk.field in seen:
            t, y = seen[blk.field]
            fwd, both = field_seconds(blk, t, y, args.field_reps)
            evals_f = (blk.nfe_forward - before[blk][0]) / args.split_reps
            evals_b = (blk.nfe_backward - before[blk][1]) / args.split_reps
            field_step += evals_f * (fwd if blk.adjoint else both) + evals_b * both
    ode_share = median([o / s for o, s in split])
    split_sec = median([s for _, s in split])
    field_share = field_step / split_sec
    return dict(family=name, rtol=float(cfg.solver.rtol), atol=float(cfg.solver.atol),
                adjoint=bool(cfg.solver.adjoint), reference=loop.settings,
                node_sec_per_step=node_sec, ref_sec_per_step=ref_sec, node_nfe=node_nfe, ref_nfe=ref_nfe,
                per_step_ratio=median(ratios),
                per_nfe_ratio=(ref_sec / ref_nfe) / (node_sec / node_nfe) if node_nfe and ref_nfe else None,
                node_us_per_nfe=1e6 * node_sec / node_nfe if node_nfe else None,
                field_share=field_share, overhead_share=ode_share - field_share, non_ode_share=1 - ode_share,
                node_loss=rec["node"]["loss"][0], ref_loss=rec["ref"]["loss"][0],
                reps=args.reps, threads=torch.get_num_threads())


COLUMNS = [
    ("family", "family", str), ("node_sec_per_step", "node_sec_per_step", "{:.4f}"),
    ("ref_sec_per_step", "ref_sec_per_step", "{:.4f}"), ("node_nfe", "node_nfe", "{:g}"),
    ("ref_nfe", "ref_nfe", "{:g}"), ("per_step_ratio", "per_step_ratio", "{:.2f}x"),
    ("per_nfe_ratio", "per_nfe_ratio", "{:.2f}x"), ("field_share", "field_share", "{:.0%}"),
    ("overhead_share", "overhead_share", "{:.0%}"), ("non_ode_share", "non-ODE share", "{:.0%}"),
    ("node_us_per_nfe", "node-run µs/NFE", "{:.0f}"), ("reference", "reference loop", str)]


def header(args, device, rows) -> str:
    env = environment(args.line, device)
    return "\n".join([
        "## node-run against a plain torchdiffeq loop, per family",
        f"`{env['command']}` on {env['machine']} ({env['cores']} cores, {env['threads']} torch threads, "
        f"{env['device']}), torch {env['torch']}, load average at the end {env['load_average']}."
        + (f" node-run with `{args.node_overrides}`." if args.node_overrides.strip() else ""),
        f"{args.reps} timed training steps after {args.warmup_steps} warm-up, node-run and the reference alternated on "
        "the same batches from the same weights, at node-run's tolerances; medians; per_step_ratio is the median of "
        "the per-step ratios (reference seconds / node-run seconds: >1 means node-run is faster), per_nfe_ratio "
        "compares seconds per function evaluation (NFE = forward + backward evaluations per step). field_share: the "
        "field's own forward + backward, timed alone, times node-run's NFE, over node-run's step; overhead_share: "
        "the rest of the ODE blocks' time (solver, adjoint bookkeeping); non-ODE share: everything else (data, "
        "encoder, decoder, loss, optimizer)."])


def run(args, device, out, log) -> str:
    rows = []
    chosen = loops()
    extra = args.node_overrides.split()

    def configure(overrides):   # node-run's config of a row, with --node-overrides last
        return args.configure(list(overrides) + extra)

    for fam in args.families:
        for name, build in chosen[fam].items():
            log(f"node-bench reference: {name}")
            try:
                loop = build(configure, device, args.seed, args.warmup_steps + args.reps + args.split_reps)
                rows.append(measure(name, loop, args, log))
            except (ConfigError, DataError, ImportError, FileNotFoundError) as exc:
                log(f"  {name}: not available: {exc}")
                rows.append(dict(family=name, reference=f"not available: {exc}"))
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = None
    return write_table(out, "reference", rows, COLUMNS, header(args, device, rows))
