"""Reading run folders and checkpoints back: the one run-folder reader (`Run`, `load_run`, `discover`), the one
versioned checkpoint reader (`read_checkpoint`, `FORMAT`, `READS`) and the old names of old runs (`current_names`).
What a run writes, and how, is core/rundir.py.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checks import ConfigError, one_line
from .rundir import CONFIG, METRICS, MLFLOW_ARTIFACTS, SUMMARY, read_summary


def load_checkpoint(path) -> dict:
    """A checkpoint as node-run writes it, read without running any code it might hold (`weights_only=True`);
    a file that is not such a checkpoint is one ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no {path.name} in {path.parent} (not a run folder, or the run never reached an "
                          "evaluation)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable, half-copied, or holding objects that are not plain data
        raise ConfigError(f"cannot read {path} as a node-run checkpoint: {one_line(exc, 200)}") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise ConfigError(f"{path} is not a node-run checkpoint (no model weights and config)")
    return ckpt


# Before `task` took the names of the family folders it named them otherwise: runs written then read with today's
OLD_TASKS = {"classify": "mnist", "latent": "spirals", "flow": "flows"}


def current_names(config):
    """A run's config or summary (a dict or a DictConfig) with today's names in place of an old run's (`task`).
    Every reader of run folders and checkpoints passes what it read through this, so old runs read as new ones."""
    task = config.get("task")
    if isinstance(task, str) and task in OLD_TASKS:
        config["task"] = OLD_TASKS[task]
    return config


def load_config(folder):
    """A run's `.hydra/config.yaml` as node-run wrote it (tags such as !!python are refused, never executed); a
    missing, unreadable or foreign file is one ConfigError."""
    from omegaconf import OmegaConf

    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise ConfigError(f"{folder} is not a node-run run folder (no {CONFIG}: cannot tell what the run is)")
    try:
        cfg = OmegaConf.load(folder / CONFIG)
        if not OmegaConf.is_dict(cfg) or "solver" not in cfg or "task" not in cfg:
            raise ValueError("not a node-run config (no task or solver)")
    except Exception as exc:  # noqa: BLE001 - not YAML, a tag no safe loader builds, or not a mapping
        raise ConfigError(f"cannot read {folder / CONFIG}: {one_line(exc, 200)}") from None
    return current_names(cfg)


# Checkpoint formats. FORMAT: what core/train.py writes now, and the newest this node-run reads. A format adds keys
# or changes their meaning; bump it then, and raise READS[purpose] for a use that cannot read the older ones.
# 1 (no "format" key): weights and config only; 2: the whole training state (STATE_KEYS), so a run can continue.
FORMAT = 2
READS = dict(evaluate=1, resume=2)   # the oldest format each use of a checkpoint can read


def read_checkpoint(path, purpose: str) -> dict:
    """A checkpoint read for `purpose` ('evaluate': its weights and config; 'resume': the whole training state).
    A format this node-run cannot read for that purpose, newer or older, and a damaged file are one ConfigError."""
    ckpt = load_checkpoint(path)
    version, oldest = ckpt.get("format", 1), READS[purpose]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"{path} is damaged or was not written by node-run (format={version!r})")
    readable = f"{oldest}-{FORMAT}" if oldest < FORMAT else f"{FORMAT}"
    if version > FORMAT:
        raise ConfigError(f"{path} was written by a newer node-run (checkpoint format {version}; this one reads "
                          f"{readable}): update node-run to use it")
    if version < oldest:
        raise ConfigError(f"{path} was written by an older node-run (checkpoint format {version}; to {purpose} a run "
                          f"this one reads {readable}): " + dict(
                              resume="it lacks training state (random generators, counters), so it cannot be "
                                     "continued exactly; start a new run",
                              evaluate="evaluate it with the node-run that wrote it")[purpose])
    if purpose == "resume":
        check_state(ckpt, path)
    if isinstance(ckpt["config"], dict):
        current_names(ckpt["config"])
    return ckpt


# What continuing a run reads from its checkpoint (format 2: core/train.py's Loop.state and Loop.restore)
STATE_KEYS = ("model", "optimizer", "scheduler", "pre_end", "step", "epoch", "in_epoch", "final", "pending",
              "metrics", "totals", "window", "wall_time", "rng", "epoch_rng", "generators", "config")


def check_state(ckpt: dict, path) -> None:
    """ConfigError (one line) unless the checkpoint holds everything a resumed run reads."""
    missing = [k for k in STATE_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["step"], int) or isinstance(ckpt["step"], bool):
        raise ConfigError(f"{path} is damaged or was not written by node-run ("
                          + (f"no {', '.join(missing)}" if missing else f"step={ckpt['step']!r}")
                          + "): it cannot be continued")


# ------------------------------------------------------------------------------------------------ reading runs
@dataclass(eq=False)
class Run:
    """One run folder as read back: its config, summary and metrics, and what is wrong with them."""
    path: Path
    cfg: dict | None = None
    summary: dict | None = None
    metrics: list = field(default_factory=list)
    status: str = "unfinished"
    problems: list = field(default_factory=list)
    id: str = ""
    used: list = field(default_factory=list)

    def setting(self, dotted: str, default=None):
        """A config value by its dotted key, `default` if absent."""
        node = self.cfg
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def number(self, key: str):
        """A finite number from the summary, else None."""
        v = (self.summary or {}).get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def task(self):
        return self.setting("task")

    @property
    def model(self):
        return self.setting("model.name")

    @property
    def kind(self) -> str:
        return f"{self.task}/{self.model}" if self.cfg else "?"

    @property
    def steps(self) -> int:
        return int((self.summary or {}).get("steps") or 0)


# The type of every summary field a tool reads (None: the field may be null). Numbers: these, and every field
# named test_*, train_* or eval_* (a run's metrics); NaN and inf are written as null.
_NUMBER = (int, float, type(None))
SUMMARY_TYPES = dict(
    status=str, error=(str, type(None)), experiment=str, task=str, model=str, dataset=str, device=str,
    evaluation=(str, type(None)), objective=(str, type(None)), peak_memory_method=str, run_dir=str,
    steps=int, epochs=int, params=int, seed=int, batch_size=int, solver=dict, resumed=list, figures=list,
    **dict.fromkeys(("nfe_forward", "nfe_backward", "solver_accepted", "solver_rejected", "solver_min_dt",
                     "sec_per_step", "examples_per_sec", "wall_time", "activation_bytes", "peak_memory_bytes",
                     "memory_step_nfe_forward", "objective_value"), _NUMBER))
_KINDS = {str: "a string", int: "an integer", dict: "an object", list: "a list", _NUMBER: "a number or null"}


def summary_problem(summary: dict) -> str | None:
    """What is wrong with a summary's field types (the first bad field), None if nothing."""
    for key, value in summary.items():
        wanted = SUMMARY_TYPES.get(key, _NUMBER if key.startswith(("test_", "train_", "eval_")) else object)
        if not isinstance(value, wanted) or (isinstance(value, bool) and wanted is not object):
            kind = _KINDS.get(wanted) or _KINDS.get(wanted[0]) + " or null"
            return f"{key}={value!r} is not {kind}"
    return None


def _metrics_row(row) -> bool:
    """A metrics line as node-run writes it: an object of numbers, true/false and nulls, with an integer step."""
    return (isinstance(row, dict) and isinstance(row.get("step", 0), int)
            and all(isinstance(v, (int, float, type(None))) for v in row.values()))


def load_run(path: Path) -> Run:
    """Read a run folder; every file that is missing or damaged becomes a line in `run.problems`."""
    run = Run(Path(path))
    cfg_file = run.path / CONFIG
    if cfg_file.is_file():
        try:
            from omegaconf import OmegaConf
            loaded = OmegaConf.load(cfg_file)
            try:
                run.cfg = OmegaConf.to_container(loaded, resolve=True)   # e.g. solver.atol=${solver.rtol}
            except Exception:
                run.cfg = OmegaConf.to_container(loaded, resolve=False)
            if isinstance(run.cfg, dict):
                current_names(run.cfg)
        except Exception as exc:
            run.problems.append(f"{CONFIG} is unreadable: {one_line(exc, 200)}")
    else:
        run.problems.append(f"no {CONFIG}: cannot tell what this run is")
    if (run.path / METRICS).is_file():
        bad = 0
        for line in (run.path / METRICS).read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if _metrics_row(row):
                run.metrics.append(row)
            else:
                bad += int(bool(line.strip()))
        if bad:
            run.problems.append(f"{METRICS}: {bad} unreadable line(s) skipped (half-written or damaged?)")
    if (run.path / SUMMARY).is_file():
        try:
            run.summary = current_names(read_summary(run.path))
            run.status = str(run.summary.get("status", "unknown"))
        except ValueError as exc:
            run.summary = None
            run.status = "unreadable"
            run.problems.append(f"{SUMMARY} is not valid JSON (half-written?): {one_line(exc, 200)}")
        wrong = summary_problem(run.summary) if run.summary is not None else None
        if wrong:   # one bad field and the run is not used: its other numbers cannot be trusted either
            run.summary, run.status = None, "unreadable"
            run.problems.append(f"{SUMMARY} is damaged or not node-run's: {wrong}")
    else:
        last = run.metrics[-1].get("step") if run.metrics else None
        run.problems.append(f"no {SUMMARY}: still running or stopped before the end"
                            + (f" (last logged step {last})" if last is not None else " (nothing logged yet)"))
    if run.summary and run.status != "ok" and run.summary.get("error"):
        run.problems.append(f"{run.status}: {run.summary['error']}")
    return run


def _natural(path: Path):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def run_folders(root) -> set[Path]:
    """Every folder under `root` that holds a run: .hydra/config.yaml, summary.json or metrics.jsonl."""
    found = set()
    for marker in ("config.yaml", SUMMARY, METRICS):
        for f in Path(root).rglob(marker):
            if marker == "config.yaml" and f.parent.name != ".hydra":
                continue
            if MLFLOW_ARTIFACTS in f.relative_to(root).parts:
                continue
            found.add((f.parent.parent if marker == "config.yaml" else f.parent).resolve())
    return found


def discover(dirs) -> tuple[list[Run], list[str]]:
    """Every run under `dirs` (single runs and multirun jobs alike), in natural path order with IDs R1, R2, ...,
    plus a message for each folder that is missing or holds none."""
    folders: set[Path] = set()
    messages = []
    for d in map(Path, dirs):
        if not d.is_dir():
            messages.append(f"{d}: no such folder")
            continue
        found = run_folders(d)
        if not found:
            messages.append(f"{d}: no runs found (a run folder holds {CONFIG}, {SUMMARY} or {METRICS})")
        folders |= found
    from .progress import bar

    runs = [load_run(p) for p in bar(sorted(folders, key=_natural), desc="reading runs", unit="run", leave=False)]
    for i, run in enumerate(runs, 1):
        run.id = f"R{i}"
    return runs, messages
