"""The paper scripts write only under OUT: every folder they hand node-run and node-report (sweep and run folders,
report folders, folders to read) lies inside $OUT. node-run and node-report are stand-ins on PATH that record
their arguments, so nothing trains."""
import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE = """#!/usr/bin/env bash
printf '%s\\0' "$(basename "$0")" "$@" >> "$CALLS"; printf '\\n' >> "$CALLS"
"""


SUBCOMMANDS = ("tolsweep",)   # node-report's subcommands: words, not folders


def fake_tools(tmp_path, out) -> dict:
    """The environment of a paper script whose node-run and node-report only record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("node-run", "node-report"):
        (bin_dir / tool).write_text(FAKE)
        (bin_dir / tool).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(tmp_path / "calls"), OUT=str(out),
                LAUNCHER="basic")


def calls(log: Path) -> list[list[str]]:
    return [line.strip("\0").split("\0") for line in log.read_text().split("\n") if line.strip("\0")]


def folders(argv: list[str]) -> list[str]:
    """The folders a node-run / node-report command line names."""
    out = []
    for i, a in enumerate(argv):
        if argv[0] == "node-report" and i == 1 and a in SUBCOMMANDS:
            continue
        key, _, value = a.partition("=")
        if key in ("hydra.sweep.dir", "hydra.run.dir"):
            out.append(value)
        elif argv[i - 1] == "--out" or (argv[0] == "node-report" and i > 0 and not a.startswith("-")
                                        and argv[i - 1] != "--out"):
            out.append(a)
    return out


@pytest.mark.parametrize("script", ["table1.sh", "table2.sh", "memory.sh", "figures4_6.sh", "reproduce_all.sh"])
def test_a_paper_script_writes_only_under_out(script, tmp_path):
    out, log = tmp_path / "work" / "out", tmp_path / "calls"
    env = fake_tools(tmp_path, out)
    (tmp_path / "work").mkdir()
    r = subprocess.run(["bash", str(REPO / "scripts" / script)], cwd=tmp_path / "work", env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    made = calls(log)
    assert any(c[0] == "node-run" for c in made) and any(c[0] == "node-report" for c in made), made
    for argv in made:
        named = folders(argv)
        assert named, f"{script}: {shlex.join(argv)} names no folder"
        for folder in named:
            path = (tmp_path / "work" / folder).resolve() if not Path(folder).is_absolute() else Path(folder).resolve()
            assert path.is_relative_to(out.resolve()), f"{script}: {shlex.join(argv)} writes {folder}, outside OUT={out}"
    assert not (tmp_path / "work" / "outputs").exists()


def test_reproduce_all_finds_table1s_odenet_by_its_config(tmp_path):
    """The Python that reproduce_all.sh runs to find Table 1's ODE-Net for Figure 3 (by config, not folder name)
    prints the folder of the run whose model is odenet and that has a checkpoint, and nothing for the others."""
    text = (REPO / "scripts" / "reproduce_all.sh").read_text()
    code = text.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    runs = tmp_path / "runs"
    for number, model, checkpoint in ((0, "mlp", True), (1, "odenet", False), (2, "odenet", True)):
        folder = runs / str(number)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(
            f"task: mnist\nmodel:\n  name: {model}\nsolver:\n  method: dopri5\n")
        if checkpoint:
            (folder / "checkpoint.pt").write_bytes(b"")
    r = subprocess.run(["python", "-", str(runs)], input=code, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str((runs / "2").resolve())


@pytest.mark.parametrize("switches, memory_cap, others_cap", [
    ({}, "20", None), ({"MEMORY_STEPS": "5"}, "5", None), ({"STEPS": "7"}, "7", "7"), ({"SHORT": "1"}, None, None)])
def test_reproduce_all_caps_only_the_memory_stage_at_the_quick_budget(tmp_path, switches, memory_cap, others_cap):
    env = dict(fake_tools(tmp_path, tmp_path / "out"), **switches)
    r = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_all.sh")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    caps = {}
    for argv in calls(tmp_path / "calls"):
        if argv[0] != "node-run":
            continue
        sweep = next(a.partition("=")[2] for a in argv if a.startswith("hydra.sweep.dir="))
        stage = Path(sweep).relative_to(tmp_path / "out").parts[0]
        steps = [a.partition("=")[2] for a in argv if a.startswith("trainer.max_steps=")]
        caps.setdefault(stage, set()).add(steps[-1] if steps else None)
    assert caps.pop("memory") == {memory_cap}
    assert {"table1", "table2", "figures4_6"} <= set(caps)
    assert all(found == {others_cap} for found in caps.values()), caps
