"""The registry of experiment families is coherent with itself and with conf/: every family loads under its own
task key, every experiment file belongs to a family that builds its model, and node-report maps a run of each
experiment back to that experiment file."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from node_cli import families
from node_cli.core.checks import ConfigError
from node_cli.core.compose import options
from node_cli.core.runs import Run
from node_cli.families.base import Family
from node_cli.report.build import experiment_of, known


@pytest.mark.parametrize("task", sorted(families.FAMILIES))
def test_every_family_loads_under_its_own_folder_name(task):
    family = families.get(task)
    assert isinstance(family, Family) and family.name == task
    assert (Path(families.__file__).parent / task / "__init__.py").is_file()   # the task is its folder
    assert family.models and len(set(family.models)) == len(family.models)
    assert family.headline and all(callable(s) for s in family.sections())
    for name, tool in family.tools().items():
        assert callable(tool), name


def test_every_lists_the_families_in_registry_order_and_models_are_not_shared():
    every = families.every()
    assert [f.name for f in every] == list(families.FAMILIES)
    models = [m for f in every for m in f.models]
    assert len(models) == len(set(models))        # a model name says which family it is
    assert len({f.name for f in every}) == len(every)


def test_an_unknown_task_is_one_line():
    with pytest.raises(ConfigError, match=r"unknown task 'alien'; accepted: ") as err:
        families.get("alien")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_belongs_to_a_family_and_maps_back(compose, experiment):
    cfg = compose(f"experiment={experiment}")
    assert cfg.task in families.FAMILIES, f"{experiment}: task {cfg.task!r} has no family"
    family = families.get(cfg.task)
    assert cfg.model.name in family.models, f"{experiment}: {family.name} does not build {cfg.model.name}"
    run = Run(Path("/nonexistent") / experiment, cfg=OmegaConf.to_container(cfg, resolve=True))
    assert known(run) and run.kind == f"{cfg.task}/{cfg.model.name}"
    assert family.experiment_of(run) == experiment
    assert experiment_of(run) == experiment                          # what node-report compares a run against


def test_every_family_has_an_experiment_per_model(compose):
    built = {(c.task, c.model.name) for c in (compose(f"experiment={e}") for e in options("experiment"))}
    for family in families.every():
        for model in family.models:
            assert (family.name, model) in built, f"{family.name}: no experiment file trains {model}"


def test_every_bench_experiment_a_family_names_is_its_own(compose):
    from node_cli.bench.contention import specs

    for family in families.every():
        for spec in (family.bench, family.contention):
            if spec is not None:
                cfg = compose(f"experiment={spec.experiment}")
                assert families.get(cfg.task) is family, f"{family.name}: {spec.experiment} is {cfg.task}'s"
    assert set(specs()) == {f.name for f in families.every() if f.contention is not None}
