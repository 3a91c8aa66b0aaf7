"""Docs that cannot drift from the tool. In README.md and every page under docs/:

- each example error (`$ node-run ARGS` followed by its output) is exactly what node-run prints, and its exit is 2;
- each `node-run` command (code blocks and inline code; placeholders such as RUN_DIR skipped) composes and passes
  the whole pre-check, every job of a multirun included, without running anything (`node-run check`'s path);
- each relative link and image resolves to a file, and each #anchor to a heading of its page.

Every failure names the file and line, so a doc edited after a merge is fixed where it says."""
import copy
import re
import shlex
from pathlib import Path

import pytest

from node_cli import cli

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").rglob("*.md"))
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*$|.*(\.\.\.|<|>|\||λ|…)")   # RUN_DIR, N, M, <time>, 30|50|100, λ, ...
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-sc", "--shell-completion")


def _where(page: Path, number: int) -> str:
    return f"{page.relative_to(REPO)}:{number}"


def code_lines(page: Path):
    """(line number, text) of every line inside a code block (indented by 4 or fenced), continuations joined."""
    lines, fenced, out, held = page.read_text(encoding="utf-8").splitlines(), False, [], None
    for i, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")) or line.lstrip().startswith(("- ", "* ", "|")):
            held = None
            continue
        text = line.strip()
        if held is not None:
            held = (held[0], held[1] + " " + text.rstrip("\\"))
        else:
            held = (i, text.rstrip("\\"))
        if not text.endswith("\\"):
            out.append(held)
            held = None
    return out


def inline_spans(page: Path):
    """(line number, text) of every inline code span outside code blocks."""
    fenced, out = False, []
    for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or line.startswith("    "):
            continue
        out += [(i, m.group(1)) for m in re.finditer(r"`([^`]+)`", line)]
    return out


def node_run_args(text: str):
    """The arguments of the `node-run ...` command in a shell line (None if it has none): env assignments and
    `cmd && ` before it, comments after it dropped."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    for cut in ("&&", ";", "|"):
        while cut in words and "node-run" in words[words.index(cut) + 1:]:
            words = words[words.index(cut) + 1:]
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    if not words or words[0] != "node-run":
        return None
    for cut in ("&&", ";", "|", ">", "2>"):
        if cut in words:
            words = words[:words.index(cut)]
    return words[1:]


def commands():
    """Every documented node-run command: (where, text, args)."""
    found = []
    for page in PAGES:
        for number, text in code_lines(page) + inline_spans(page):
            if text.startswith("$ "):   # an example error: test_example_errors_are_the_tools_output
                continue
            args = node_run_args(text)
            if args is not None:
                found.append((_where(page, number), text, args))
    return found


def checkable(args) -> bool:
    if args[:1] == ["check"]:
        args = args[1:]
    values = [a.split("=", 1)[-1] for a in args]
    return not (any(a.startswith("resume=") or a in INFO_FLAGS for a in args)
                or any(PLACEHOLDER.match(v) for v in values))


def test_every_documented_command_passes_the_precheck(monkeypatch):
    composed = {}

    def compose(overrides, hydra=False):   # the same job in several commands is composed once (a copy each time)
        key = (tuple(overrides), hydra)
        if key not in composed:
            composed[key] = real(overrides, hydra=hydra)
        return copy.deepcopy(composed[key])

    real = cli.compose
    monkeypatch.setattr(cli, "compose", compose)
    found = commands()
    checked = [(w, t, a) for w, t, a in found if checkable(a)]
    assert len(checked) >= 40, f"only {len(checked)} node-run commands found in the docs: is the extraction broken?"
    failures = []
    for where, text, args in checked:
        args = cli.without_cfg_flags(args[1:] if args[:1] == ["check"] else args)
        try:
            cli.precheck(args, dry=True)
        except Exception as exc:   # ConfigError, DataError, or anything else the pre-check raised
            failures.append(f"{where}: `{text}` is refused: {type(exc).__name__}: {exc}")
    assert not failures, "documented commands that node-run refuses:\n" + "\n".join(failures)


def examples():
    """(where, args, expected output lines) of every `$ node-run ...` example followed by its output."""
    out = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("$ node-run"):
                expected = []
                for nxt in lines[i + 1:]:
                    if not nxt.strip() or nxt.strip().startswith(("$ ", "```")):
                        break
                    expected.append(nxt.strip())
                out.append((_where(page, i + 1), shlex.split(line.strip()[2:])[1:], expected))
    return out


@pytest.mark.parametrize("where,args,expected", examples(), ids=[w for w, _, _ in examples()])
def test_example_errors_are_the_tools_output(where, args, expected, capsys, tmp_path, monkeypatch):
    assert expected and expected[0].startswith("node-run: error:"), \
        f"{where}: a `$ node-run` example must show the error it prints (only refused commands are run here)"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    printed = capsys.readouterr()
    assert stop.value.code == 2, f"{where}: exit status {stop.value.code}, not 2"
    assert (printed.out + printed.err).strip().splitlines() == expected, \
        f"{where}: the example's output differs from node-run's:\n{printed.out + printed.err}"
    assert not any(tmp_path.iterdir()), f"{where}: the refused command made {list(tmp_path.iterdir())}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)}


def links(page: Path):
    """(line number, target) of every Markdown link and image outside code."""
    fenced, out = False, []
    for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or line.startswith("    ") and not line.lstrip().startswith(("-", "|", "!", "[")):
            continue
        prose = re.sub(r"`[^`]*`", "", line)
        out += [(i, m.group(1)) for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)]
    return out


def test_every_relative_link_resolves():
    failures, count = [], 0
    for page in PAGES:
        for number, target in links(page):
            if re.match(r"^[a-z]+:", target):   # http:, https:, mailto:
                continue
            count += 1
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                failures.append(f"{_where(page, number)}: link to {target}: {file.relative_to(REPO) if file.is_relative_to(REPO) else file} does not exist")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                failures.append(f"{_where(page, number)}: link to {target}: no heading with anchor #{anchor} in "
                                f"{file.relative_to(REPO)}")
    assert count >= 20, f"only {count} relative links found: is the extraction broken?"
    assert not failures, "broken links:\n" + "\n".join(failures)


def test_readme_has_contents_and_says_how_to_list_experiments():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    head = text.split("\n## ", 1)[0]
    assert "Contents:" in head and "](#using-it)" in head
    assert "`node-run --help` lists every experiment" in text
