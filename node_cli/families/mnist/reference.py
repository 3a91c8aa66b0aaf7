"""A plain MNIST baseline written the way torchdiffeq's `examples/odenet_mnist.py` writes it, for `node-bench`.

This is what node-run is measured against, not something node-run uses: a torchvision `DataLoader` with PIL
transforms (RandomCrop(28, padding=4), ToTensor), an `nn.Sequential` of the example's layers, `odeint` (or
`odeint_adjoint`) called directly on an `nn.Module` vector field whose `nfe` attribute is a Python counter, the
time channel concatenated to every convolution's input, and the example's loop body (lr set every iteration,
zero_grad, forward, read and reset the NFE counter, backward, step, read and reset it again).

The layers are created in the same order as node-run's, so `copy_weights(node_model, ref_model)` gives both the
same parameters and they can be compared on the same batch.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchdiffeq import odeint as odeint_direct, odeint_adjoint


def norm(dim):
    return nn.GroupNorm(min(32, dim), dim)


class ResBlock(nn.Module):
    def __init__(self, inplanes, planes):
        super().__init__()
        self.norm1 = norm(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.norm2 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)

    def forward(self, x):
        shortcut = x
        out = self.relu(self.norm1(x))
        out = self.conv1(out)
        out = self.norm2(out)
        out = self.relu(out)
        out = self.conv2(out)
        return out + shortcut


class ConcatConv2d(nn.Module):
    def __init__(self, dim_in, dim_out, ksize=3, stride=1, padding=0):
        super().__init__()
        self._layer = nn.Conv2d(dim_in + 1, dim_out, kernel_size=ksize, stride=stride, padding=padding)

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1, :, :]) * t
        ttx = torch.cat([tt, x], 1)
        return self._layer(ttx)


class ODEfunc(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1 = norm(dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.norm2 = norm(dim)
        self.conv2 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.norm3 = norm(dim)
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        out = self.norm1(x)
        out = self.relu(out)
        out = self.conv1(t, out)
        out = self.norm2(out)
        out = self.relu(out)
        out = self.conv2(t, out)
        out = self.norm3(out)
        return out


class ODEBlock(nn.Module):
    def __init__(self, odefunc, tol, adjoint, method="dopri5"):
        super().__init__()
        self.odefunc = odefunc
        self.integration_time = torch.tensor([0, 1]).float()
        self.tol, self.adjoint, self.method = tol, adjoint, method

    def forward(self, x):
        odeint = odeint_adjoint if self.adjoint else odeint_direct
        self.integration_time = self.integration_time.type_as(x)
        out = odeint(self.odefunc, x, self.integration_time, rtol=self.tol, atol=self.tol, method=self.method)
        return out[1]

    @property
    def nfe(self):
        return self.odefunc.nfe

    @nfe.setter
    def nfe(self, value):
        self.odefunc.nfe = value


class Flatten(nn.Module):
    def forward(self, x):
        shape = torch.prod(torch.tensor(x.shape[1:])).item()
        return x.view(-1, shape)


def build_reference_model(network: str, tol: float = 1e-3, adjoint: bool = True, blocks: int = 6,
                          channels: int = 64, method: str = "dopri5") -> tuple[nn.Module, list[nn.Module]]:
    """(model, feature_layers) as the example builds them; `network` is odenet (ODE block) or resnet."""
    c = channels
    downsampling_layers = [
        nn.Conv2d(1, c, 3, 1), norm(c), nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 4, 2, 1), norm(c), nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 4, 2, 1),
    ]
    if network == "odenet":
        feature_layers = [ODEBlock(ODEfunc(c), tol, adjoint, method)]
    elif network == "resnet":
        feature_layers = [ResBlock(c, c) for _ in range(blocks)]
    else:
        raise ValueError(f"unknown reference network {network!r}; accepted: odenet, resnet")
    fc_layers = [norm(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)), Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*downsampling_layers, *feature_layers, *fc_layers), feature_layers


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy parameters in creation order (node-run's and the example's layers are created in the same order)."""
    src, dst = list(source.parameters()), list(target.parameters())
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst)):
        raise ValueError("the two models do not have the same parameter layout")
    with torch.no_grad():
        for a, b in zip(src, dst):
            b.copy_(a)


def reference_loader(root, batch_size: int = 128, data_aug: bool = True, num_workers: int = 2,
                     limit: int | None = None) -> DataLoader:
    """The example's training loader: torchvision MNIST, PIL transforms, shuffle, `num_workers` workers."""
    import torchvision.datasets as datasets
    import torchvision.transforms as transforms

    steps = [transforms.RandomCrop(28, padding=4)] if data_aug else []
    dataset = datasets.MNIST(root=str(root), train=True, download=False,
                             transform=transforms.Compose([*steps, transforms.ToTensor()]))
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True,
                      persistent_workers=num_workers > 0)


def inf_generator(iterable):
    iterator = iterable.__iter__()
    while True:
        try:
            yield iterator.__next__()
        except StopIteration:
            iterator = iterable.__iter__()


class ReferenceTrainer:
    """The example's loop body, one iteration per `step()`; returns (loss, nfe_forward, nfe_backward)."""

    def __init__(self, model: nn.Module, feature_layers, batches, device, lr: float = 0.1, batch_size: int = 128):
        self.model, self.feature_layers, self.batches, self.device = model, feature_layers, batches, device
        self.is_odenet = isinstance(feature_layers[0], ODEBlock)
        self.criterion = nn.CrossEntropyLoss().to(device)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.lr = lr * batch_size / 128

    def step(self, batch=None):
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.lr
        self.optimizer.zero_grad()
        x, y = next(self.batches) if batch is None else batch
        x = x.to(self.device)
        y = y.to(self.device)
        logits = self.model(x)
        loss = self.criterion(logits, y)
        nfe_forward = nfe_backward = 0
        if self.is_odenet:
            nfe_forward = self.feature_layers[0].nfe
            self.feature_layers[0].nfe = 0
        loss.backward()
        self.optimizer.step()
        if self.is_odenet:
            nfe_backward = self.feature_layers[0].nfe
            self.feature_layers[0].nfe = 0
        return loss, nfe_forward, nfe_backward


# ------------------------------------------------------------------------------------------ node-bench reference
def loop(configure, device, seed: int, n_batches: int):
    """ODE-Net (adjoint, dopri5 1e-3, batch 128) against the example's model and loop body on node-run's batches:
    the `node-bench reference` row (`node-bench step` also times the example's DataLoader)."""
    from ..base import ReferenceLoop
    from .task import MnistTask

    cfg = configure(["experiment=mnist_odenet", "solver.rtol=1e-3", "solver.atol=1e-3", "trainer.batch_size=128",
                     f"seed={seed}", f"device={device.type}"])
    torch.manual_seed(seed)
    task = MnistTask(cfg, device)
    batches, epoch = [], 0
    while len(batches) < n_batches:
        batches += list(zip(range(n_batches - len(batches)), task.train_batches(epoch)))
        epoch += 1
    batches = [b for _, b in batches]
    model, feature_layers = build_reference_model("odenet", tol=1e-3, adjoint=True, channels=int(cfg.model.channels))
    copy_weights(task.model, model)
    trainer = ReferenceTrainer(model.to(device), feature_layers, None, device, lr=float(cfg.trainer.lr),
                               batch_size=int(cfg.trainer.batch_size))

    def step(batch):
        loss, nfe_forward, nfe_backward = trainer.step(batch)
        return loss.item(), nfe_forward, nfe_backward

    return ReferenceLoop(cfg, task, batches, step, "odenet_mnist.py: odeint_adjoint on the concatenating ODEfunc, "
                         "SGD 0.1 momentum 0.9 (node-run: model.fast_rk, ConcatConv2d without the concatenation)")


def loops() -> dict:
    return {"mnist_odenet": loop}
