"""The flows task: continuous normalizing flows against planar normalizing flows in 2-D (paper section 4,
Figures 4-6). Models: models.py; data and energies: data.py; figures: plots.py.

Objectives (`dataset.name`): `circles` / `moons` train by maximum likelihood on fresh samples each step and report
`test_nll` (nats) on a fixed held-out set, beside `test_nll_data`, the NLL of the true generating density on the
same points (the floor); `density` fits exp(-U) for `dataset.target` in u1..u4 by minimising
KL(q||p) = E_q[log q + U] + log Z and reports `test_kl` on a fixed set of base samples (log Z by quadrature, so
the KL is exact up to Monte Carlo error, `test_kl_stderr`; `test_kl_unnormalized` is E_q[log q + U] alone).
A run is one epoch of `trainer.max_steps` fresh batches. The CNF's evaluations and figures solve at
rtol = atol = `model.eval_tol`, whatever tolerance it trained with.

The toy sets of FFJORD (`8gaussians`, `pinwheel`, `checkerboard`, `2spirals`, `rings`, `swissroll`; toys.py) train
by maximum likelihood like circles and moons, with the floor where the density is known. `model=ffjord`
(ffjord.py) trains with its configured trace and regularisers and is evaluated with the exact trace; its
evaluations also report the regularisers on the test set (`test_kinetic`, `test_jacobian`: the exact integrals
of |f|^2 and |df/dz|_F^2, batch means), their training estimates since the last evaluation (`train_kinetic`,
`train_jacobian`, when a regulariser is on) and the flow time `t1`. With `model.loss=cfm|otcfm` the same field
trains by flow matching instead (ffjord.py; no solve in training, so NFE-F/NFE-B per step are 0) and is
evaluated exactly as the maximum-likelihood one.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import math

import torch
from omegaconf import ListConfig

from ...core.checks import ConfigError, boolean, choice, integer, number, positive
from ...core.progress import bar
from ...core.meter import Count
from . import data as toy2d
from . import toys
from .ffjord import ACTIVATIONS, LOSSES, NOISES, TRACES, build_ffjord
from .models import MODELS, build_model

DATASETS = toy2d.DATASETS + toys.TOYS + ("density",)
EVAL_CHUNK = 5000


class FlowTask:
    def __init__(self, cfg, device: torch.device):
        d = cfg.dataset
        self.cfg, self.device = cfg, device
        self.density = d.name == "density"
        self.batch_size = cfg.trainer.batch_size
        self.steps = cfg.trainer.max_steps
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.ffjord = cfg.model.name == "ffjord"
        self.model = (build_ffjord(cfg) if self.ffjord else build_model(cfg, generative=self.density)).to(device)
        # the regularisers' training estimates since the last evaluation
        self.reg_sums, self.reg_steps = dict(kinetic=0.0, jacobian=0.0), 0
        logging.getLogger("node_run").info(
            "%s: fresh samples every step from seed=%s; fixed test set of %d from dataset.test_seed=%s",
            f"density matching of {d.target}" if self.density else f"{d.name} data", cfg.seed, d.test_size,
            d.test_seed)
        test_gen = torch.Generator().manual_seed(d.test_seed)
        self.test = self._draw(d.test_size, test_gen)
        self.fixed = self._draw(self.batch_size, torch.Generator().manual_seed(d.test_seed + 1))
        # the validation split (model choice, e.g. RNODE's lambda) from a generator of its own, so the training
        # draws, the test set and the model are exactly what they are without it; .get: runs made before it existed
        val_size = 0 if self.density else d.get("val_size", 0)
        self.val = self._draw(val_size, torch.Generator().manual_seed(d.val_seed)) if val_size else None
        if self.ffjord:   # fixed base points whose push to the data (no density) is the sampling NFE
            self.base = (d.base_std * torch.randn(d.test_size, 2, generator=torch.Generator().manual_seed(
                d.test_seed + 2))).to(device)
        self.log_z = toy2d.log_normalizer(d.target) if self.density else None
        if d.name in toys.TOYS:   # -log of the true data density on the test set (None where it is not known)
            log_p = toys.data_log_density(d.name, self.test.cpu())
            self.data_nll = None if log_p is None else -log_p
        elif not self.density:   # -log of the true data density on the test set: the floor of test_nll
            self.data_nll = -toy2d.data_log_density(d.name, self.test.cpu(), d.noise, d.get("factor", 0.5))

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Data points (maximum likelihood) or base points (density matching)."""
        d = self.cfg.dataset
        if self.density:
            x = d.base_std * torch.randn(n, 2, generator=generator)
        elif d.name in toys.TOYS:
            x = toys.sample(d.name, n, generator)
        else:
            x = toy2d.sample_data(d.name, n, generator, d.noise, d.get("factor", 0.5))
        return x.to(self.device)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return toy2d.energy(self.cfg.dataset.target, x)

    def steps_per_epoch(self) -> int:
        return self.steps   # fresh samples every step: the whole run is one epoch of trainer.max_steps batches

    def generators(self) -> list:
        return [self.generator]

    def train_batches(self, epoch: int):
        for _ in range(self.steps):
            yield self._draw(self.batch_size, self.generator)

    def loss(self, batch) -> torch.Tensor:
        if self.ffjord:
            loss = self.model.loss(batch)
            if self.model.regularised:
                self.reg_steps += 1
                for k, v in self.model.regs.items():   # kept on the device: no sync per step; read at evaluation
                    self.reg_sums[k] = self.reg_sums[k] + v.detach().double()
            return loss
        if self.density:
            x, log_q = self.model.sample(batch)
            return (log_q + self.energy(x)).mean()
        return -self.model.log_prob(batch).mean()

    @contextlib.contextmanager
    def eval_solver(self):
        """Evaluations and figures solve at rtol = atol = model.eval_tol (when set), whatever training used, and
        FFJORD with the exact trace, whatever it trained with."""
        block = getattr(self.model, "block", None)
        tol = self.cfg.model.get("eval_tol")
        with contextlib.nullcontext() if block is None or tol is None else block.tolerance(tol), \
                self.model.exact() if self.ffjord else contextlib.nullcontext():
            yield

    @torch.no_grad()
    def evaluate(self, limit: int | None) -> dict:
        self.model.eval()
        n = len(self.test) if limit is None else min(limit, len(self.test))
        values = []
        regs = dict(kinetic=[], jacobian=[])
        with self.eval_solver():
            for i in bar(range(0, n, EVAL_CHUNK), self.cfg.trainer.get("progress", True), desc="evaluation",
                         unit="chunk", leave=False):
                batch = self.test[i:min(i + EVAL_CHUNK, n)]
                if self.ffjord:    # exact trace, and the regularisers' exact integrals in the same solve
                    values.append(-self.model.log_prob(batch, regularise=True))
                    for k, v in self.model.regs.items():
                        regs[k].append(v.item() * len(batch))
                elif self.density:   # log q(x) + U(x) at x = flow(z0): E_q of it is KL(q||p) - log Z
                    x, log_q = self.model.sample(batch)
                    values.append(log_q + self.energy(x))
                else:              # -log p(x) on held-out data
                    values.append(-self.model.log_prob(batch))
            if self.ffjord:   # sampling alone: the same number of base points pushed to the data, no trace; its
                with Count(self.model, aside=True) as sampling:   # solves are not the evaluation's eval_nfe_forward
                    for i in range(0, n, EVAL_CHUNK):
                        self.model.generate(self.base[i:min(i + EVAL_CHUNK, n)])
        self.model.train()
        v = torch.cat(values).double()
        mean, stderr = v.mean().item(), (v.std() / math.sqrt(n)).item() if n > 1 else float("nan")
        out = dict(test_examples=n)
        if self.density:
            out.update(test_kl=mean + self.log_z, test_kl_stderr=stderr, test_kl_unnormalized=mean, log_z=self.log_z)
        else:
            out.update(test_nll=mean, test_nll_stderr=stderr,
                       test_nll_data=None if self.data_nll is None else self.data_nll[:n].mean().item())
        if self.ffjord:
            out.update(test_kinetic=sum(regs["kinetic"]) / n, test_jacobian=sum(regs["jacobian"]) / n,
                       t1=float(self.model.t1.detach()), eval_nfe_sample=sampling.per_solve)
            if self.model.regularised:
                steps = max(self.reg_steps, 1)
                out.update({f"train_{k}": float(v) / steps for k, v in self.reg_sums.items()})
                self.reg_sums, self.reg_steps = dict(kinetic=0.0, jacobian=0.0), 0
        out.update(self.validation(limit))
        return out

    @torch.no_grad()
    def validation(self, limit: int | None) -> dict:
        """val_nll (and its standard error) on the first `limit` points (None: all) of the validation split,
        computed as test_nll is (the same solver settings and, for FFJORD, the same exact-trace solve); {} without
        a validation split. Its solves are counted aside: the evaluation's `eval_nfe_forward` is the test set's."""
        if self.val is None:
            return {}
        n = len(self.val) if limit is None else min(limit, len(self.val))
        self.model.eval()
        with self.eval_solver(), Count(self.model, aside=True):
            v = torch.cat([-(self.model.log_prob(batch, regularise=True) if self.ffjord else self.model.log_prob(batch))
                           for batch in self.val[:n].split(EVAL_CHUNK)]).double()
        self.model.train()
        return dict(val_examples=n, val_nll=v.mean().item(),
                    val_nll_stderr=(v.std() / math.sqrt(n)).item() if n > 1 else float("nan"))

    def memory_batch(self):
        return self.fixed

    def finish(self, run) -> dict:
        self.model.eval()
        from .plots import plot_density, plot_stages

        with self.eval_solver():
            files = [plot_density(self, run.path / "density.png"), plot_stages(self, run.path / "flow.png")]
        self.model.train()
        return dict(figures=[f.name for f in files])


def check(cfg) -> None:
    m, d, t = cfg.model, cfg.dataset, cfg.trainer
    choice(m.name, "model", MODELS + ("ffjord",))
    choice(d.name, "dataset", DATASETS)
    if m.name == "cnf":
        integer(m.get("width"), "model.width", 1)
        integer(m.get("hidden"), "model.hidden", 1)
        positive(m.get("t1"), "model.t1")
        if m.get("eval_tol") is not None:
            positive(m.get("eval_tol"), "model.eval_tol")
    elif m.name == "ffjord":
        check_ffjord(m)
        if d.name == "density":
            raise ConfigError("model=ffjord trains by maximum likelihood; dataset=density (density matching) is for "
                              f"model=cnf and model=nf; accepted datasets: {', '.join(DATASETS[:-1])}")
    else:
        integer(m.get("depth"), "model.depth", 1)
        positive(m.get("init_std", 0.1), "model.init_std")
    if d.name == "density":
        choice(d.get("target"), "dataset.target", toy2d.TARGETS)
    elif d.name in toy2d.DATASETS:
        positive(d.get("noise"), "dataset.noise")
        positive(d.get("factor", 0.5), "dataset.factor")
    positive(d.get("base_std"), "dataset.base_std")
    integer(d.get("test_size"), "dataset.test_size", 1)
    integer(d.get("test_seed"), "dataset.test_seed", 0)
    if d.name != "density" and d.get("val_size", 0):
        integer(d.get("val_size"), "dataset.val_size", 0)
        integer(d.get("val_seed"), "dataset.val_seed", 0)
        taken = {cfg.get("seed"): "seed (the training draws)", d.test_seed: "dataset.test_seed (the test set)",
                 d.test_seed + 1: "dataset.test_seed + 1 (the memory batch)",
                 d.test_seed + 2: "dataset.test_seed + 2 (FFJORD's sampling points)"}
        if d.val_seed in taken:
            raise ConfigError(f"dataset.val_seed={d.val_seed} is not allowed: it is also {taken[d.val_seed]}; the "
                              "validation split needs a seed of its own")
    if not t.max_steps:
        raise ConfigError("trainer.max_steps must be set for flow experiments: they draw fresh samples every "
                          "step, so the run length is trainer.max_steps, not epochs")
    if list(t.milestones):
        raise ConfigError("trainer.milestones are epochs, and a flow run is one epoch of trainer.max_steps fresh "
                          "batches: set trainer.milestones=[] (trainer.schedule=cosine decays the lr every step)")


def check_ffjord(m) -> None:
    """The keys of conf/model/ffjord.yaml."""
    hidden = m.get("hidden")
    if not isinstance(hidden, (list, tuple, ListConfig)) or not len(hidden):
        raise ConfigError(f"model.hidden={hidden!r} is not allowed: it must be a non-empty list of widths, "
                          "e.g. [64,64,64]")
    for h in hidden:
        integer(h, "model.hidden entry", 1)
    choice(m.get("activation"), "model.activation", tuple(ACTIVATIONS))
    positive(m.get("t1"), "model.t1")
    boolean(m.get("learn_t1"), "model.learn_t1")
    choice(m.get("trace"), "model.trace", TRACES)
    choice(m.get("noise"), "model.noise", NOISES)
    boolean(m.get("fast_trace", True), "model.fast_trace")
    number(m.get("kinetic"), "model.kinetic", 0)
    number(m.get("jacobian"), "model.jacobian", 0)
    positive(m.get("eval_tol"), "model.eval_tol", allow_none=True)
    loss = m.get("loss", "mle")   # .get: runs made before model.loss existed
    choice(loss, "model.loss", LOSSES)
    number(m.get("fm_sigma", 0.0), "model.fm_sigma", 0)
    if loss == "mle":
        return
    if m.learn_t1:
        raise ConfigError(f"model.loss={loss} regresses the field on a path of fixed length t1, which gives the flow "
                          "time no gradient: set model.learn_t1=false (and model.t1)")
    if m.kinetic or m.jacobian:
        raise ConfigError(f"model.kinetic and model.jacobian are RNODE's regularisers of maximum likelihood; with "
                          f"model.loss={loss} set them to 0")
    if loss == "otcfm" and importlib.util.find_spec("ot") is None:
        raise ConfigError("model.loss=otcfm needs POT (the Python Optimal Transport library) for its minibatch "
                          "coupling: pip install 'node-run[ot]' (or use model.loss=cfm)")
