"""The paper values node-report prints beside ours are the paper's: Table 1 (MNIST) and Table 2 (spirals) as
written in docs/paper.md (the paper's facts this project cites). tests/data/paper_tables.md is a verbatim copy of
those lines of docs/paper.md; the last test keeps the copy honest."""
from pathlib import Path

import pytest

import re

from node_cli.families.mnist.report import EPOCH_MATCHED, PAPER_TABLE1
from node_cli.families.spirals.report import PAPER_TABLE2, SPIRAL_MODELS

REPO = Path(__file__).resolve().parents[2]
COPY = REPO / "tests" / "data" / "paper_tables.md"
PAPER = REPO / "docs" / "paper.md"


def tables(text):
    """{caption: [[cell, ...] per row]} for every Markdown table, captioned by the last non-table line before it
    (the header row first, the |---| line dropped)."""
    out, caption, rows = {}, None, None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if rows is None:
                rows = out.setdefault(caption, [])
            if not all(set(c) <= set("-:") for c in cells):
                rows.append(cells)
        else:
            rows = None
            if line.strip():
                caption = line.strip()
    return out


def table(caption_start):
    found = [rows for caption, rows in tables(COPY.read_text(encoding="utf-8")).items()
             if caption and caption.startswith(caption_start)]
    assert len(found) == 1, f"no single table captioned {caption_start!r} in {COPY}"
    return found[0]


def test_table1_values_are_the_papers():
    header, *rows = table("Table 1 ")
    assert header == ["model", "test error", "params", "memory", "time"]
    assert len(rows) == len(PAPER_TABLE1)
    for (label, model, error, params, memory, time), (p_label, p_error, p_params, p_memory, p_time) in zip(
            PAPER_TABLE1, rows):
        assert p_label == label or p_label.startswith(label + " ("), (label, p_label)   # same order, same rows
        assert p_error.endswith("%") and error == pytest.approx(float(p_error[:-1]) / 100, abs=1e-12), model
        assert p_params.endswith("M") and params == pytest.approx(float(p_params[:-1]) * 1e6, abs=1e-6), model
        assert (memory, time) == (p_memory, p_time), model


def test_table2_values_are_the_papers():
    header, *rows = table("Table 2,")
    assert header[0] == "observations" and all(h.endswith("/100") for h in header[1:])
    n_obs = [int(h.split("/")[0]) for h in header[1:]]
    labels = dict(SPIRAL_MODELS)                                       # the report's row label -> model name
    paper = {labels[label]: dict(zip(n_obs, map(float, values))) for label, *values in rows}
    assert paper == PAPER_TABLE2
    assert n_obs == [30, 50, 100]


def test_epoch_matched_numbers_are_papers():
    text = " ".join(COPY.read_text(encoding="utf-8").split("Epoch-matched", 1)[1].split())
    epochs = [int(e) for e in re.search(r"after epoch ([\d / ]+):", text).group(1).split(" / ")]
    for label, model in [("ODE-Net (adjoint)", "odenet"), ("ResNet", "resnet"), ("RK-Net (dopri5, backprop through "
                                                                                  "the solver)", "rknet")]:
        values = re.search(re.escape(label) + r" ([\d. /]+)%", text).group(1).split(" / ")
        assert EPOCH_MATCHED[model] == {e: pytest.approx(float(v) / 100, abs=1e-12) for e, v in zip(epochs, values)}


def test_committed_copy_is_verbatim_from_paper_md():
    paper = PAPER.read_text(encoding="utf-8")
    copy = COPY.read_text(encoding="utf-8")
    lines = set(paper.splitlines())
    for line in copy.splitlines():
        assert not line or line in lines, f"not in docs/paper.md: {line!r}"
    for block in copy.strip().split("\n\n"):                            # each caption and each table, contiguous
        assert block in paper, block
    assert sum(line.startswith("|") for line in copy.splitlines()) == 6 + 4
