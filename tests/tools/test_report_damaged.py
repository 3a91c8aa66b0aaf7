"""node-report on damaged runs: a summary.json of the wrong type or a metrics line that is a bare number is a
damaged run listed under Problems, never a traceback; no runs at all makes no report folder."""
import subprocess
import sys

import pytest


def _report(*args):
    return subprocess.run([sys.executable, "-c", "from node_cli.report.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("summary, metrics, expected", [
    ("null", None, "not an object"),
    ("[1, 2]", None, "not an object"),
    (None, "3\n", "unreadable line"),
    # every field is type-checked on reading
    ('{"status": "ok", "steps": "many"}', None,
     "summary.json is damaged or not node-run's: steps='many' is not an integer"),
    ('{"status": "ok", "test_nll": "low"}', None, "test_nll='low' is not a number or null"),
    (None, '{"step": "ten", "test_nll": 1.0}\n', "unreadable line"),
])
def test_damaged_files_are_problems_not_tracebacks(tmp_path, summary, metrics, expected):
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
    assert expected in report and expected in r.stderr
    assert "| R1 | unreadable |" in report or summary is None   # not used in any table


def test_ctrl_c_is_one_line_exit_130(tmp_path, monkeypatch, capsys):
    from node_cli.report import cli

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build", interrupted)
    with pytest.raises(SystemExit) as exit:
        cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert exit.value.code == 130 and err.startswith("node-report: interrupted") and err.count("\n") == 1
    assert not (tmp_path / "rep" / "report.md").exists()


def test_no_runs_makes_no_report_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _report(str(tmp_path / "empty"), "--out", str(tmp_path / "rep"))
    assert r.returncode == 1 and "no runs found" in r.stderr and not (tmp_path / "rep").exists()
