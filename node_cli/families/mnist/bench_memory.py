"""`node-bench memory`: activation bytes and peak memory of one MNIST training step (forward + backward, no
update) on one fixed batch: ODE-Net (adjoint) and RK-Net (backprop through the solver) at several tolerances from
the same initial weights, and ResNets of several depths."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...core.clock import environment
from ...core.measure import activation_bytes, peak_memory, peak_memory_method, saved_by_shape
from ...core.progress import bar
from ...core.meter import Count
from ...core.tables import write_table
from .bench import MEMORY_COLUMNS, VARIANTS, mnist_overrides

MiB = 2 ** 20


def memory_rows(args, device, log) -> list[dict]:
    from .models import build_mnist_model
    from .task import MnistTask

    base_cfg = args.configure(mnist_overrides(args, "odenet"))
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
    for model_name, setting, overrides in bar(settings, desc="node-bench memory", unit="setting", leave=False):
        cfg = args.configure(overrides + [f"solver.method={args.method}", f"trainer.batch_size={args.batch}",
                                   f"device={args.device}"])
        model = build_mnist_model(cfg.model, cfg.solver).to(device)
        if model_name != "resnet":
            model.load_state_dict(state)
        else:
            torch.manual_seed(args.seed)
        loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
        with Count(model) as c:
            act = activation_bytes(model, loss_fn)
        peak = peak_memory(model, loss_fn, device)
        rows.append(dict(model=model_name, setting=setting, tol=float(cfg.solver.rtol) if model_name != "resnet"
                         else None, blocks=int(cfg.model.blocks) if model_name == "resnet" else None,
                         adjoint=bool(cfg.solver.adjoint) if model_name != "resnet" else None,
                         batch=len(x), nfe_forward=c.nfe_forward, nfe_backward=c.nfe_backward, activation_bytes=act,
                         peak_memory_bytes=peak, peak_memory_method=peak_memory_method(device),
                         largest_saved=saved_by_shape(model, loss_fn) if model_name == "odenet" else None))
        log(f"  memory {model_name} {setting}: NFE {c.nfe_forward}/{c.nfe_backward}, activations {act / MiB:.2f} MiB, "
            f"peak {peak / MiB:.2f} MiB")
    return rows


def memory_header(args, device, rows) -> str:
    env = environment(args.line, device)
    lines = ["## Memory of one training step (forward + backward, no update)",
             f"`{env['command']}` on {env['machine']} ({env['device']}), batch {args.batch}, {args.method}, one "
             f"fixed MNIST batch, the same initial ODE weights at every tolerance. Activations: bytes autograd saves "
             f"for backward (core.measure.activation_bytes); peak: {peak_memory_method(device)}."]
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


def run_memory(args, device, out, log) -> list[str]:
    log("node-bench memory")
    rows = memory_rows(args, device, log)
    text = write_table(out, "memory", rows, MEMORY_COLUMNS, memory_header(args, device, rows))
    memory_plot(rows, out / "memory.png")
    return [text]
