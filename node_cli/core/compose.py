"""The one Hydra compose: the config groups shipped in `conf/` (installed as `node_cli.conf`) and the config a
list of overrides composes to, for every tool that builds or reads a run outside `node-run`'s own @hydra.main
(`experiment.configure` adds the checks)."""
from __future__ import annotations

import functools
from importlib import resources

from .checks import ConfigError, one_line

CONF = "node_cli.conf"
GROUPS = ("experiment", "model", "solver", "dataset", "trainer")


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
            raise ConfigError(one_line(exc)) from None


@functools.lru_cache(maxsize=None)
def experiment_defaults(name: str) -> dict | None:
    """The resolved config of `experiment=name` alone (None if there is no such experiment file)."""
    from omegaconf import OmegaConf

    if name not in options("experiment"):
        return None
    return OmegaConf.to_container(compose([f"experiment={name}"]), resolve=True)
