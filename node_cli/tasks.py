"""Experiment families by name (`task` in the config): each module's `build(cfg, device)` returns its task."""
from __future__ import annotations

import importlib

from .config import ConfigError, choice

FAMILIES = {
    "classify": "node_cli.classify:MnistTask",
    "latent": "node_cli.latent:build",
    "flow": "node_cli.flows:build",
}


def build_task(cfg, device):
    choice(cfg.task, "task", tuple(FAMILIES))
    module, attr = FAMILIES[cfg.task].split(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task {cfg.task!r} is not available in this install ({exc})") from None
    return factory(cfg, device)


def check_task(cfg) -> None:
    """Cheap checks of a family's own keys (model, dataset), before anything is loaded or trained."""
    choice(cfg.task, "task", tuple(FAMILIES))
    module = importlib.import_module(FAMILIES[cfg.task].split(":")[0])
    if hasattr(module, "check"):
        module.check(cfg)
