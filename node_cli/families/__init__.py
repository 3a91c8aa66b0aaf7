"""The registry of experiment families: the config's `task` key names the folder here that holds the family.

A new family is one folder here with a `FAMILY = Family(...)` in its `__init__.py`, one line below, its conf
files, one doc page and one test folder. Nothing else in node-run names a family.
"""
from __future__ import annotations

import importlib

from ..core.checks import ConfigError, choice, one_line
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


def check(cfg) -> None:
    """Cheap checks of a family's own keys (model, dataset), before anything is loaded or trained. A check may
    build the model: one that cannot be built (too large for memory: torch's allocator error) is one ConfigError."""
    try:
        get(cfg.task).check(cfg)
    except (RuntimeError, MemoryError) as exc:
        raise ConfigError(f"the model this config describes cannot be built ({cfg.model.get('name')}: model.* too "
                          f"large?): {one_line(exc, 200)}") from None
