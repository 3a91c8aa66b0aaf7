"""Every config composes with Hydra's compose API and passes validation; bad choices are refused."""
from importlib import resources
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from node_cli import families
from node_cli.core.checks import ConfigError, validate
from node_cli.core.compose import options

EXPERIMENTS = options("experiment")
CONF = Path(__file__).resolve().parents[2] / "conf"


def load_option(group, name):
    """A group option as its YAML files say, read with OmegaConf alone (its `defaults` merged in order, `_self_`
    where it is listed, else last): what Hydra's composition of `group=name` must give."""
    node = OmegaConf.load(CONF / group / f"{name}.yaml")
    defaults = list(node.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    return OmegaConf.merge(*[node if d == "_self_" else load_option(group, d) for d in defaults])


def experiments_naming(group, option):
    """The experiment files that pick `option` for `group` (`override /group: option` in their defaults)."""
    out = []
    for e in EXPERIMENTS:
        for d in OmegaConf.load(CONF / "experiment" / f"{e}.yaml").get("defaults", []):
            if isinstance(d, dict) or OmegaConf.is_dict(d):
                if dict(d).get(f"override /{group}") == option:
                    out.append(e)
    return out


def test_conf_ships_with_package():
    assert (resources.files("node_cli.conf") / "config.yaml").is_file()
    assert {"mnist_odenet", "mnist_resnet", "mnist_rknet", "mnist_mlp"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("trainer", [None, "quick"])
def test_every_experiment_composes(compose, experiment, trainer):
    cfg = compose([f"experiment={experiment}"] + ([f"trainer={trainer}"] if trainer else []))
    assert cfg.name == experiment
    validate(cfg)
    families.check(cfg)
    if trainer == "quick":
        assert cfg.trainer.max_steps == 200          # the quick budget replaces the full one...
    else:
        assert cfg.trainer.max_steps is None or cfg.trainer.max_steps > 200


def test_quick_keeps_the_experiment_optimizer(compose):
    full, quick = compose("experiment=mnist_odenet"), compose("experiment=mnist_odenet", "trainer=quick")
    assert full.trainer.epochs == 160 and list(full.trainer.milestones) == [60, 100, 140]
    assert quick.trainer.lr_batch_denom == full.trainer.lr_batch_denom == 128
    assert quick.model == full.model and quick.solver == full.solver
    for experiment in ("density_cnf", "density_nf"):     # the lr decay lives with the optimizer keys
        full, quick = compose(f"experiment={experiment}"), compose(f"experiment={experiment}", "trainer=quick")
        assert full.trainer.schedule == quick.trainer.schedule == "cosine"
        assert full.trainer.lr == quick.trainer.lr and full.trainer.max_steps == 4000


@pytest.mark.parametrize("experiment", ["mnist_mlp", "mnist_resnet", "mnist_rknet", "mnist_odenet"])
def test_short_keeps_the_experiment_and_swaps_the_milestones_for_a_cosine(compose, experiment):
    full, short = compose(f"experiment={experiment}"), compose(f"experiment={experiment}", "trainer=short")
    validate(short)
    assert short.model == full.model and short.solver == full.solver and short.dataset == full.dataset
    for key in ("optimizer", "lr", "lr_batch_denom", "momentum", "batch_size", "weight_decay"):
        assert short.trainer[key] == full.trainer[key], key
    assert short.trainer.epochs < full.trainer.epochs and short.trainer.max_steps is None   # whole epochs
    assert short.trainer.schedule == "cosine" and list(short.trainer.milestones) == []     # else validate refuses


@pytest.mark.parametrize("group", ["model", "solver", "dataset", "trainer"])
def test_every_group_option_composes(compose, group):
    for option in options(group):
        # alone (config.yaml's defaults for the rest): the composed group is exactly its YAML files' content
        cfg = compose(f"{group}={option}")
        assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(load_option(group, option)), option
        # with the experiments that pick it (every one of them must accept it), or, if none does, with every
        # experiment: then at least one family must accept it
        naming = experiments_naming(group, option)
        accepted = []
        for experiment in naming or EXPERIMENTS:
            cfg = compose(f"experiment={experiment}", f"{group}={option}")
            try:
                validate(cfg)
                families.check(cfg)
            except ConfigError as exc:
                assert not naming, f"{experiment} picks {group}={option} but its family refuses it: {exc}"
                continue
            accepted.append(experiment)
            if group in ("model", "dataset"):
                assert cfg[group].name == load_option(group, option).name
        assert accepted, f"{group}={option}: no experiment's family accepts it"


def test_every_model_and_dataset_option_is_picked_by_some_experiment():
    for group in ("model", "dataset"):
        assert all(experiments_naming(group, option) for option in options(group)), group


def test_rknet_is_odenet_without_adjoint(compose):
    cfg = compose("experiment=mnist_rknet")
    assert cfg.model.name == "rknet" and cfg.solver.adjoint is False
    with pytest.raises(ConfigError, match="solver.adjoint=false"):
        families.check(compose("experiment=mnist_rknet", "solver.adjoint=true"))


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
    ("threads=0", "threads=0 is not allowed: it must be an integer >= 1 or auto"),
    ("threads=many", "threads='many' is not allowed: it must be an integer >= 1 or auto"),
    ("threads=1.5", "threads=1.5 is not allowed"),
    # the solver's step and adjoint options
    ("solver.first_step=0", "solver.first_step=0"),
    ("solver.max_step=-1", "solver.max_step=-1"),
    ("solver.min_step=-0.1", "solver.min_step=-0.1"),
    ("solver.min_step=0.5 solver.max_step=0.1", "solver.min_step=0.5"),
    ("solver.adjoint_rtol=0", "solver.adjoint_rtol=0"),
    ("solver.adjoint_atol=-1e-3", "solver.adjoint_atol=-0.001"),
    ("solver.adjoint_method=bogus", "unknown solver.adjoint_method 'bogus'"),
    # a name is one folder name under outputs/; scipy's solve cannot be backpropagated through
    ("name=../../escape", "name='../../escape' is not allowed: it names one folder under outputs/"),
    ("name=a/b", "name='a/b' is not allowed"),
    ("name=..", "name='..' is not allowed"),
    ("name=" + "n" * 300, "name is 300 bytes long: it names a folder, at most 255 bytes"),
    ("solver.method=scipy_solver solver.adjoint=false", "solver.method=scipy_solver needs solver.adjoint=true"),
])
def test_bad_values_are_refused_in_one_line(compose, override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(override.split()))
    assert message in str(err.value) and "\n" not in str(err.value)
