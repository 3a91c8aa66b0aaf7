"""A config is validated once: node-run's pre-check checks each job it composes (the shared keys, then the family's
own), and the run that follows, the family's task included, trusts it; a config no pre-check saw is checked when it
runs."""
import sys

import pytest

from node_cli import families
from node_cli.core import checks
from node_cli.core.checks import ConfigError
from node_cli.families.flows import task as flows_task

FLOW = ["experiment=nf_moons", "trainer=quick", "model.depth=2", "dataset.test_size=100", "trainer.progress=false",
        "trainer.max_steps=2", "device=cpu"]


@pytest.fixture
def calls(monkeypatch):
    """How often the shared validator and the flows family's own check ran, by the names families.check calls."""
    seen = {"shared": 0, "family": 0}

    def counted(name, real):
        def call(*args, **kwargs):
            seen[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(families, "validate", counted("shared", checks.validate))
    monkeypatch.setattr(flows_task, "check", counted("family", flows_task.check))
    monkeypatch.setattr(families, "_CHECKED", set())
    return seen


def test_node_run_validates_a_run_once_in_its_precheck(tmp_path, calls, monkeypatch):
    from node_cli import cli

    monkeypatch.setattr(sys, "argv", ["node-run"])
    cli.main([*FLOW, f"hydra.run.dir={tmp_path / 'run'}"])
    cli.HELD.close()
    assert (tmp_path / "run" / "summary.json").is_file()
    assert calls == {"shared": 1, "family": 1}


def test_a_config_no_precheck_saw_is_validated_when_it_runs(tmp_path, calls):
    from node_cli.core.compose import compose
    from node_cli.experiment import execute

    summary = execute(compose(FLOW), tmp_path / "a")
    assert summary["status"] == "ok" and calls == {"shared": 1, "family": 1}
    with pytest.raises(ConfigError, match="model.depth=0 is not allowed"):
        execute(compose([*FLOW, "model.depth=0"]), tmp_path / "b")
    assert calls == {"shared": 2, "family": 2}
