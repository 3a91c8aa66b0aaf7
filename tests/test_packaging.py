"""The wheel `pip install .` builds holds the whole source tree: every file under node_cli/ and every file of the
Hydra tree conf/ (shipped as node_cli.conf), with the expected list read from the folders, not written here. The
installed wheel is run for real by scripts/wheel_check.sh (in .ci/run)."""
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# top-level things of a checkout that are not source: virtual environments, build output, runs, data, caches
NOT_SOURCE = re.compile(r"^(\.git|\.venv.*|build|dist|.*\.egg-info|outputs|multirun|data|\.pytest_cache)$")


def source_files() -> dict[str, Path]:
    """Path inside the wheel -> file of the tree: node_cli/** as it is, conf/** as node_cli/conf/**."""
    files = {}
    for folder, inside in (("node_cli", "node_cli"), ("conf", "node_cli/conf")):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[f"{inside}/{path.relative_to(REPO / folder).as_posix()}"] = path
    return files


def build_backend_here() -> bool:
    """Whether this environment can build the wheel offline: setuptools >= 70.1 brings bdist_wheel itself, older
    ones need the `wheel` package. Otherwise pip builds in isolation (setuptools from PyPI), as `pip install .` does."""
    return (importlib.util.find_spec("setuptools.command.bdist_wheel") is not None
            or importlib.util.find_spec("wheel") is not None)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from a copy of the checkout (so no build/ folder left in it, fresh or stale, plays a part)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=lambda folder, names: [n for n in names if n == "__pycache__" or (
        Path(folder) == REPO and NOT_SOURCE.match(n))])
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-w", str(tmp / "dist"), str(src)] + (["--no-build-isolation"] if build_backend_here() else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (built,) = (tmp / "dist").glob("node_run-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_every_module_and_config_file_of_the_tree(wheel):
    expected = source_files()
    # the tree as this test knows it: a module of every family and the config groups (guards the walk itself)
    assert {"node_cli/families/dynamics/task.py", "node_cli/conf/config.yaml",
            "node_cli/conf/hydra/launcher/slurm.yaml"} <= set(expected)
    inside = set(wheel.namelist())
    missing = sorted(set(expected) - inside)
    assert not missing, f"{len(missing)} files of the tree are not in the wheel: {missing}"
    for name, path in expected.items():
        assert wheel.read(name) == path.read_bytes(), name


def test_every_console_script_of_the_wheel_points_at_a_module_inside_it(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    scripts = dict(re.findall(r"^([\w-]+) = ([\w.]+):\w+$", wheel.read(entry_points).decode(), re.M))
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    assert set(scripts) == set(re.findall(r'^([\w-]+)\s*=', section, re.M)) and "node-run" in scripts
    inside = set(wheel.namelist())
    for name, module in scripts.items():
        assert module.replace(".", "/") + ".py" in inside, (name, module)
