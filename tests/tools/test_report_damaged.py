"""node-report on damaged runs: a summary.json of the wrong type or a metrics line that is a bare number is a
damaged run listed under Problems, never a traceback; no runs at all makes no report folder."""
import subprocess
import sys

import pytest


def _report(*args):
    return subprocess.run([sys.executable, "-c", "from node_cli.report.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("summary, metrics", [("null", None), ("[1, 2]", None), (None, "3\n")])
def test_damaged_files_are_problems_not_tracebacks(tmp_path, summary, metrics):
    run = tmp_path / "runs" / "r"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("name: nf_moons\ntask: flow\nmodel: {name: nf}\n")
    if summary is not None:
        (run / "summary.json").write_text(summary)
    if metrics is not None:
        (run / "metrics.jsonl").write_text(metrics)
    r = _report(str(tmp_path / "runs"), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    report = (tmp_path / "rep" / "report.md").read_text()
    expected = "not an object" if summary is not None else "unreadable line"
    assert expected in report and expected in r.stderr


def test_no_runs_makes_no_report_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _report(str(tmp_path / "empty"), "--out", str(tmp_path / "rep"))
    assert r.returncode == 1 and "no runs found" in r.stderr and not (tmp_path / "rep").exists()
