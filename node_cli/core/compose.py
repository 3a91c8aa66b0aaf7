"""The one Hydra compose: the config groups shipped in `conf/` (installed as `node_cli.conf`) and the config a
list of overrides composes to, for every tool that builds or reads a run outside `node-run`'s own @hydra.main
(`experiment.configure` adds the checks)."""
from __future__ import annotations

import difflib
import functools
import re
from importlib import resources

from .checks import ConfigError, one_line

CONF = "node_cli.conf"
GROUPS = ("experiment", "model", "solver", "dataset", "trainer", "hparams_search")


def options(group: str) -> list[str]:
    """The options of a config group: the names of its YAML files."""
    folder = resources.files(CONF) / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def compose(overrides: list[str], hydra: bool = False):
    """Hydra's composition of `config.yaml` with `overrides`; its errors become one ConfigError line."""
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module=CONF, version_base="1.3"):
        try:
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra)
        except Exception as exc:  # Hydra's composition errors: unknown keys, bad values, ambiguous sweeps
            message = one_line(exc)
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown:   # Hydra suggests appending it with +, which node-run would then ignore: name the nearest key
        key = unknown.group(1)
        rest = [o for o in overrides if not o.lstrip("~+").startswith(key + "=")]
        try:
            hint = nearest(key, keys(compose(rest))) if len(rest) < len(overrides) else ""
        except ConfigError:
            hint = ""
        message = f"unknown key {key!r}: the config these overrides compose has no such setting{hint}"
    raise ConfigError(message)


@functools.lru_cache(maxsize=None)
def experiment_defaults(name: str, trainer: str | None = None) -> dict | None:
    """The resolved config of `experiment=name` alone, or with the budget preset `trainer=NAME` (None if there is
    no such experiment or preset file). Cached: treat the result as read-only."""
    from omegaconf import OmegaConf

    if name not in options("experiment") or (trainer is not None and trainer not in options("trainer")):
        return None
    return OmegaConf.to_container(compose([f"experiment={name}"] + ([f"trainer={trainer}"] if trainer else [])),
                                  resolve=True)


def flat(node, prefix: str = "") -> dict:
    """A nested dict as {dotted key: leaf value}."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out = {}
    for k, v in node.items():
        out.update(flat(v, f"{prefix}{k}."))
    return out


def keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (its leaves and inner nodes), Hydra's own `hydra.*` aside."""
    from omegaconf import DictConfig

    out = []
    for k in node.keys() if isinstance(node, DictConfig) else ():
        if not prefix and k == "hydra":
            continue
        out.append(prefix + str(k))
        out += keys(node[k], f"{prefix}{k}.")
    return out


def nearest(key: str, known: list[str]) -> str:
    """' (did you mean X?)' for the known key closest to `key`, '' if none is close."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""
