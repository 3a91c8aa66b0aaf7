"""Reading runs back (core/runs.py): checkpoints are read without running code they might hold."""
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from node_cli.core.checks import ConfigError
from node_cli.core.rundir import CHECKPOINT, RunDir
from node_cli.core.runs import load_checkpoint


class Payload:
    """An object whose unpickling creates a file: what a malicious checkpoint would carry."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


def evil_checkpoint(path, target, how):
    state = {"model": {"w": torch.zeros(2)}, "config": {"task": "classify"}, "extra": Payload(target)}
    if how == "torch":
        torch.save(state, path)
    else:   # torch.load also reads a plain (legacy) pickle
        path.write_bytes(pickle.dumps(state, protocol=2))


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_load_checkpoint_refuses_a_pickle_that_would_run_code(tmp_path, how):
    target = tmp_path / "pwned"
    path = tmp_path / CHECKPOINT
    evil_checkpoint(path, target, how)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "node-run checkpoint" in msg
    assert not target.exists()                                   # nothing in it ran
    # the payload is real: an unguarded load runs it (in this test's own folder)
    if how == "torch":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert target.exists()


def test_load_checkpoint_reads_what_save_checkpoint_wrote(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    optimizer.step()                                            # momentum buffers in the optimizer state
    cfg = OmegaConf.create({"name": "x", "task": "classify", "solver": {"rtol": 1e-3, "adjoint": True},
                            "trainer": {"milestones": [60, 100]}})
    state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), step=7, epoch=1,
                 metrics={"test_error": 0.25, "test_examples": 200}, config=OmegaConf.to_container(cfg))
    RunDir(tmp_path).save_checkpoint(state)                     # as core/train.py's fit saves it
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt.keys() == state.keys()
    assert (ckpt["step"], ckpt["epoch"], ckpt["metrics"], ckpt["config"]) == (7, 1, state["metrics"],
                                                                              state["config"])
    for k, v in state["model"].items():
        assert torch.equal(ckpt["model"][k], v)
    buffers = [s["momentum_buffer"] for s in ckpt["optimizer"]["state"].values()]
    assert len(buffers) == 4 and all(b.abs().sum() > 0 for b in buffers)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    fresh.load_state_dict(ckpt["model"])
    assert not list(tmp_path.glob(".*.tmp"))                   # the atomic write left no temp file


@pytest.mark.parametrize("content, message", [
    (None, "no checkpoint.pt in"),
    ({"weights": torch.zeros(1)}, "is not a node-run checkpoint"),
    (b"not a checkpoint at all", "cannot read"),
])
def test_load_checkpoint_bad_files_are_one_line(tmp_path, content, message):
    path = tmp_path / CHECKPOINT
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def _checkpoint(path, **extra):
    state = dict(model={"w": torch.zeros(2)}, config={"name": "x"}, step=3, **extra)
    torch.save(state, path)
    return path


def test_read_checkpoint_refuses_a_newer_format_in_one_line_naming_both(tmp_path):
    from node_cli.core.runs import FORMAT, READS, read_checkpoint

    path = _checkpoint(tmp_path / CHECKPOINT, format=FORMAT + 1)
    for purpose in READS:
        with pytest.raises(ConfigError) as err:
            read_checkpoint(path, purpose)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "newer node-run" in msg
        assert f"checkpoint format {FORMAT + 1};" in msg and f"reads {READS[purpose]}" in msg


def test_read_checkpoint_reads_weights_of_any_older_format_but_resumes_only_whole_states(tmp_path):
    from node_cli.core.runs import read_checkpoint

    path = _checkpoint(tmp_path / CHECKPOINT)                    # format 1: no "format" key, no training state
    assert torch.equal(read_checkpoint(path, "evaluate")["model"]["w"], torch.zeros(2))
    with pytest.raises(ConfigError, match=r"older node-run \(checkpoint format 1; .*start a new run$"):
        read_checkpoint(path, "resume")
    _checkpoint(path, format="2")
    with pytest.raises(ConfigError, match=r"damaged or was not written by node-run \(format='2'\)"):
        read_checkpoint(path, "evaluate")


def test_an_old_runs_task_names_read_as_the_family_folders_they_were(tmp_path):
    from node_cli.core.rundir import CONFIG, SUMMARY
    from node_cli.core.runs import load_config, load_run, read_checkpoint

    for old, new in (("classify", "mnist"), ("latent", "spirals"), ("flow", "flows"), ("dynamics", "dynamics")):
        folder = tmp_path / old
        (folder / CONFIG).parent.mkdir(parents=True)
        (folder / CONFIG).write_text(f"name: x\ntask: {old}\nsolver: {{rtol: 0.001}}\nmodel: {{name: m}}\n")
        (folder / SUMMARY).write_text(f'{{"status": "ok", "task": "{old}"}}')
        _checkpoint(folder / CHECKPOINT, format=2)
        torch.save(dict(torch.load(folder / CHECKPOINT), config={"task": old}), folder / CHECKPOINT)
        run = load_run(folder)
        assert (run.task, run.summary["task"], run.kind) == (new, new, f"{new}/m")
        assert load_config(folder).task == new
        assert read_checkpoint(folder / CHECKPOINT, "evaluate")["config"] == {"task": new}
