"""Every config composes with Hydra's compose API and passes validation; bad choices are refused."""
from importlib import resources

import pytest
from hydra import compose, initialize_config_module

from node_cli.cli import options
from node_cli.config import ConfigError, validate
from node_cli.tasks import check_task

EXPERIMENTS = options("experiment")


def _compose(overrides):
    with initialize_config_module(config_module="node_cli.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def test_conf_ships_with_package():
    assert (resources.files("node_cli.conf") / "config.yaml").is_file()
    assert {"mnist_odenet", "mnist_resnet", "mnist_rknet", "mnist_mlp"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("trainer", [None, "quick"])
def test_every_experiment_composes(experiment, trainer):
    cfg = _compose([f"experiment={experiment}"] + ([f"trainer={trainer}"] if trainer else []))
    assert cfg.name == experiment
    validate(cfg)
    check_task(cfg)
    if trainer == "quick":
        assert cfg.trainer.max_steps == 200          # the quick budget replaces the full one...
    else:
        assert cfg.trainer.max_steps is None or cfg.trainer.max_steps > 200


def test_quick_keeps_the_experiment_optimizer():
    full, quick = _compose(["experiment=mnist_odenet"]), _compose(["experiment=mnist_odenet", "trainer=quick"])
    assert full.trainer.epochs == 160 and list(full.trainer.milestones) == [60, 100, 140]
    assert quick.trainer.lr_batch_denom == full.trainer.lr_batch_denom == 128
    assert quick.model == full.model and quick.solver == full.solver
    for experiment in ("density_cnf", "density_nf"):     # the lr decay lives with the optimizer keys
        full, quick = _compose([f"experiment={experiment}"]), _compose([f"experiment={experiment}", "trainer=quick"])
        assert full.trainer.schedule == quick.trainer.schedule == "cosine"
        assert full.trainer.lr == quick.trainer.lr and full.trainer.max_steps == 4000


@pytest.mark.parametrize("group", ["model", "solver", "dataset", "trainer"])
def test_every_group_option_composes(group):
    for option in options(group):
        cfg = _compose([f"{group}={option}"])
        assert cfg[group] is not None


def test_rknet_is_odenet_without_adjoint():
    cfg = _compose(["experiment=mnist_rknet"])
    assert cfg.model.name == "rknet" and cfg.solver.adjoint is False
    with pytest.raises(ConfigError, match="solver.adjoint=false"):
        check_task(_compose(["experiment=mnist_rknet", "solver.adjoint=true"]))


@pytest.mark.parametrize("override, message", [
    ("solver.rtol=-1e-3", "solver.rtol"),
    ("solver.atol=0", "solver.atol"),
    ("solver.method=bogus", "solver.method"),
    ("solver.adjoint_norm=l2", "solver.adjoint_norm"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.optimizer=lbfgs", "trainer.optimizer"),
    ("trainer.schedule=linear", "trainer.schedule"),
    ("trainer.min_lr_ratio=1.5", "trainer.min_lr_ratio"),
    ("trainer.schedule=cosine trainer.milestones=[2]", "trainer.milestones"),
    ("dataset.limit=-5", "dataset.limit"),
    ("device=tpu", "device"),
])
def test_bad_values_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        validate(_compose(override.split()))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_conf_folder_ships_in_a_non_editable_install():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    packages = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"node_cli.conf." + ".".join(p.relative_to(root / "conf").parts)
               for p in (root / "conf").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert folders <= packages
