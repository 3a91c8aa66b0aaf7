"""A run's exit status is returned from its summary, not raised: 0 ok, 1 for any other end, 128 + the signal's
number when it was stopped; `finish` prints the report and returns it."""
import signal

import pytest

from node_cli.core import stop
from node_cli.experiment import exit_status, finish

SUMMARY = dict(experiment="x", model="m", wall_time=1.0, device="cpu", nfe_forward=0.0, nfe_backward=0.0,
               nfe_backward_note="-", sec_per_step=0.1, error=None)


@pytest.mark.parametrize("status, sig, code", [
    ("ok", None, 0), ("failed", None, 1), ("error", None, 1),
    ("interrupted", signal.SIGTERM, 128 + 15), ("interrupted", signal.SIGINT, 128 + 2), ("interrupted", None, 130),
])
def test_a_summary_gives_its_commands_exit_status(monkeypatch, status, sig, code):
    monkeypatch.setattr(stop, "last_signal", sig)
    assert exit_status(dict(status=status)) == code


def test_finish_returns_the_status_and_says_why_a_run_failed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(stop, "last_signal", signal.SIGTERM)
    assert finish(dict(SUMMARY, status="failed", error="NaN loss"), tmp_path) == 1
    err = capsys.readouterr().err
    assert "node-run: error: run failed: NaN loss" in err and "no checkpoint yet" in err
    assert finish(dict(SUMMARY, status="interrupted"), tmp_path) == 143    # returned, not raised
    assert finish(dict(SUMMARY, status="ok"), tmp_path) == 0 and capsys.readouterr().err == ""
