"""`node-run check ARGS...`: the whole pre-check of a command (every job of a multirun) and each job's composed
config, with nothing run and no folder made; `--cfg job` refused where the pre-check refuses; a sweep over several
experiments named for all of them; a mistyped hparams_search is one line."""
import re

import pytest
import yaml
from omegaconf import OmegaConf

from node_cli import cli


def _main(args, capsys):
    """cli.main(args) in this process: (exit status, stdout, stderr)."""
    try:
        cli.main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_check_prints_each_jobs_composed_config_and_makes_nothing(tmp_path, monkeypatch, capsys, compose):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["check", "-m", "experiment=nf_moons,cnf_circles", "seed=0,3"], capsys)
    assert code == 0, err
    jobs = re.split(r"^# job \d+: (.*)$", out, flags=re.M)[1:]
    overrides = [jobs[i].split() for i in range(0, len(jobs), 2)]
    assert overrides == [["experiment=nf_moons", "seed=0"], ["experiment=nf_moons", "seed=3"],
                         ["experiment=cnf_circles", "seed=0"], ["experiment=cnf_circles", "seed=3"]]
    for job, text in zip(overrides, jobs[1::2]):   # each printed config is what these overrides compose to
        assert yaml.safe_load(text) == OmegaConf.to_container(compose(*job))
    assert "4 jobs pass the pre-check; nothing was run and no folder was made" in err
    assert list(tmp_path.iterdir()) == []


def test_check_and_cfg_refuse_what_a_run_refuses_with_the_same_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    refused = _main(["experiment=nf_moons", "solver.rtol=0"], capsys)
    assert refused[0] == 2 and refused[2] == "node-run: error: solver.rtol=0 is not allowed: it must be a positive number\n"
    assert _main(["check", "experiment=nf_moons", "solver.rtol=0"], capsys) == refused
    assert _main(["experiment=nf_moons", "solver.rtol=0", "--cfg", "job"], capsys) == refused
    assert _main(["experiment=nf_moons", "--cfg=job", "-p", "solver", "solver.rtol=0"], capsys) == refused
    run = tmp_path / "old"            # a folder that holds a run is refused by check too, and left as it was
    run.mkdir()
    (run / "summary.json").write_text("{}")
    code, _, err = _main(["check", "experiment=nf_moons", f"hydra.run.dir={run}"], capsys)
    assert code == 2 and "already holds a run" in err and sorted(p.name for p in run.iterdir()) == ["summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_cfg_job_of_a_good_command_prints_hydras_config(node_run, tmp_path):
    r = node_run("experiment=nf_moons", "seed=7", "--cfg", "job", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["seed"] == 7 and list(tmp_path.iterdir()) == []


def test_a_mistyped_hparams_search_is_one_line_naming_the_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["-m", "hparams_search=nf_lrr", "experiment=nf_moons"], capsys)
    assert code == 2 and out == ""
    assert err == "node-run: error: unknown hparams_search 'nf_lrr'; accepted: nf_lr\n"


@pytest.mark.parametrize("sweep,name", [
    (["experiment=glob(spiral_*)"], "spiral_latent_ode+spiral_rnn+spiral_rnn_dt"),
    (["experiment=nf_moons,cnf_circles", "seed=0,1"], "nf_moons+cnf_circles"),
    (["experiment=nf_moons", "seed=0,1"], "nf_moons"),          # one experiment: Hydra's own ${name}
])
def test_a_sweep_folder_is_named_for_its_experiments(sweep, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (pin,) = cli.precheck(["-m", *sweep])
    folder = tmp_path / pin.split("=", 1)[1]
    assert folder.parent == tmp_path / "outputs" / "multirun" / name
    assert (folder / "0" / ".node-run.claim").is_file()      # the folders the jobs will write are claimed there
