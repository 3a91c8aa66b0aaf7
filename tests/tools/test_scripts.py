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


def calls(log: Path) -> list[list[str]]:
    return [line.strip("\0").split("\0") for line in log.read_text().split("\n") if line.strip("\0")]


def folders(argv: list[str]) -> list[str]:
    """The folders a node-run / node-report command line names."""
    out = []
    for i, a in enumerate(argv):
        key, _, value = a.partition("=")
        if key in ("hydra.sweep.dir", "hydra.run.dir"):
            out.append(value)
        elif argv[i - 1] == "--out" or (argv[0] == "node-report" and i > 0 and not a.startswith("-")
                                        and argv[i - 1] != "--out"):
            out.append(a)
    return out


@pytest.mark.parametrize("script", ["table1.sh", "table2.sh", "memory.sh", "figures4_6.sh"])
def test_a_paper_script_writes_only_under_out(script, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("node-run", "node-report"):
        (bin_dir / tool).write_text(FAKE)
        (bin_dir / tool).chmod(0o755)
    out, log = tmp_path / "work" / "out", tmp_path / "calls"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(log), OUT=str(out), LAUNCHER="basic")
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
