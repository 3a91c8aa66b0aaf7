"""The registry of experiment families: the config's `task` key names the folder here that holds the family.

A new family is one folder here with a `FAMILY = Family(...)` in its `__init__.py`, one line below, its conf
files, one doc page and one test folder. Nothing else in node-run names a family.
"""
from __future__ import annotations

import importlib
import json

from ..core.checks import ConfigError, choice, one_line, validate
from .base import Family

FAMILIES = (   # in the order of node-report's sections
    "mnist",
    "spirals",
    "flows",
    "dynamics",
)


def get(task: str) -> Family:
    """The family of a `task` value (ConfigError if there is none)."""
    choice(task, "task", FAMILIES)
    try:
        return importlib.import_module(f"{__name__}.{task}").FAMILY
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task {task!r} is not available in this install ({exc})") from None


def every() -> list[Family]:
    """All families, in registry order (the order of node-report's sections)."""
    return [get(task) for task in FAMILIES]


def build(cfg, device):
    return get(cfg.task).build(cfg, device)


_CHECKED: set = set()   # the configs this process has checked (node-run's pre-check): a run of one is not re-checked


def check(cfg, training: bool = True) -> None:
    """The one validation pass of a config, before anything is loaded or trained: the keys every experiment shares
    (core.checks.validate; `training`: also what only training needs), then its family's own model and dataset
    keys (Family.check). A family check may build the model: one that cannot be built (too large for memory:
    torch's allocator error) is one ConfigError. Families' constructors trust a config that passed.

    A config this process checked already is not checked again: node-run's pre-check checks every job it composes,
    so the run that follows does not; what it did not see (a sweep's jobs past its first 256, a search sweeper's
    picks, a SLURM job in its own process, a library caller's config) is checked here when it runs."""
    from omegaconf import OmegaConf

    key = (training, json.dumps(OmegaConf.to_container(cfg), sort_keys=True, default=str))
    if key in _CHECKED:
        return
    validate(cfg, training)
    try:
        get(cfg.task).check(cfg)
    except (RuntimeError, MemoryError) as exc:
        raise ConfigError(f"the model this config describes cannot be built ({cfg.model.get('name')}: model.* too "
                          f"large?): {one_line(exc, 200)}") from None
    _CHECKED.add(key)
