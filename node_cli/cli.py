"""`node-run`: the Hydra entry point. `main()` checks the command line first, so bad input is one line and a
non-zero exit before any run folder is made, and claims every run folder the command will write (a folder that
holds a run, or that another node-run claimed, is refused); `run()` is the @hydra.main task that trains and writes
the run. `node-run resume=RUN_DIR` continues a run in its own folder (resume.py)."""
from __future__ import annotations

# First, before anything below loads torch: libgomp reads its wait settings once, when torch loads
from .core.threads import prepare_environment

prepare_environment()

import contextlib
import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from hydra.experimental.callback import Callback

from . import families
from .core.checks import ConfigError, DataError, StorageError, one_line
from .core.compose import GROUPS, compose, keys, nearest, options
from .core import stop
from .core.rundir import (CHECKPOINT, CLAIM, CONFIG, METRICS, SUMMARY, claim, holds_run, in_use, locked,
                          read_summary, resumes)
from .core.runs import read_checkpoint
from .experiment import FAILED, INTERRUPTED, execute, finish

HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-p", "--package", "--resolve",
               "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--shell-completion", "-sc")
MAX_PRECHECK = 256
HELD = contextlib.ExitStack()   # a single run's folder, locked from the pre-check to the end of the process
RESTARTED: set[Path] = set()    # folders the pre-check found holding this run stopped before its first checkpoint


@hydra.main(version_base="1.3", config_path="pkg://node_cli.conf", config_name="config")
def run(cfg) -> float | None:
    """Train one job; return its objective (`objective:` in the experiment file; None when the run did not finish
    ok, which a search sweeper such as Optuna records as a failed trial, and goes on)."""
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = execute(cfg, out_dir, **requeued(cfg, out_dir))
    except (ConfigError, DataError, StorageError) as exc:
        print(f"node-run: error: {one_line(exc)}", file=sys.stderr, flush=True)
        FAILED.append(out_dir)
        return None
    except KeyboardInterrupt:
        INTERRUPTED.append(out_dir)
        raise
    # @hydra.main discards what its task returns (a job's return is its objective, for a search sweeper): the job's
    # exit status goes to main through experiment.FAILED / INTERRUPTED (one module, whichever way node-run started)
    status = finish(summary, out_dir)
    if status > 128:   # stopped: stop the whole command, sweeps included (an exception is Hydra's only way out)
        INTERRUPTED.append(out_dir)
        raise KeyboardInterrupt
    if status:
        FAILED.append(out_dir)
    value = summary.get("objective_value")
    ok = summary["status"] == "ok" and isinstance(value, (int, float)) and math.isfinite(value)
    return float(value) if ok else None


def requeued(cfg, out_dir) -> dict:
    """A job that finds its folder holding an interrupted run of the same config is a requeued one (SLURM after a
    preemption or time-out): it continues from the checkpoint. The pre-check refuses such folders on the command
    line, so nothing else gets here, except a run stopped before its first checkpoint: started again from step 0,
    either by the pre-check (RESTARTED) or as a requeued job stopped during its start-up."""
    folder = Path(out_dir)
    if not (folder / CHECKPOINT).is_file():
        if folder.resolve() in RESTARTED:
            return dict(history=resumes(folder))
        if (folder / SUMMARY).is_file() or (folder / METRICS).is_file():   # a requeued job stopped while starting
            print(f"node-run: {folder} holds this job's run, stopped before its first checkpoint: starting it "
                  "again", file=sys.stderr, flush=True)
            return dict(history=resumes(folder))
        return {}
    ckpt = read_checkpoint(folder / CHECKPOINT, "resume")
    if ckpt.get("config") != OmegaConf.to_container(cfg):
        raise ConfigError(f"{folder} holds another run; node-run never overwrites a run")
    history = resumes(folder)
    print(f"node-run: {folder} holds this job's interrupted run: continuing from step {ckpt['step']}",
          file=sys.stderr, flush=True)
    return dict(resume=ckpt, history=history)


class SweepStatus(Callback):
    """Adds to FAILED the jobs of a multirun whose summary is missing or not ok. Launchers that run jobs in other
    processes (hydra/launcher=joblib, submitit) cannot append to this process's FAILED; this reads the sweep
    folder instead when the sweep ends (registered in conf/config.yaml under hydra.callbacks)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        known = {str(Path(f).resolve()) for f in FAILED}
        for cfg_file in sorted(sweep.rglob("config.yaml")):
            job = cfg_file.parent.parent
            if cfg_file.parent.name != ".hydra" or str(job.resolve()) in known:
                continue
            try:
                ok = read_summary(job).get("status") == "ok"
            except (OSError, ValueError, AttributeError):
                ok = False
            if not ok:
                FAILED.append(str(job))
                print(f"node-run: error: sweep job {job} did not finish ok (see its {SUMMARY})",
                      file=sys.stderr, flush=True)


class SacctNote(Callback):
    """On a SLURM cluster without job accounting every poll of submitit's launcher prints sacct's error and three
    copies of submitit's warning about it. Say once what it means, in node-run's words, and drop submitit's
    warnings (sacct's own line, printed by the sacct command, stays). Registered in conf/config.yaml."""

    def on_multirun_start(self, config, **kwargs) -> None:
        if str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith("SlurmLauncher"):
            import logging
            import submitit  # noqa: F401  (configures its logger first: the filter goes on that logger)

            logging.getLogger("submitit").addFilter(self._sacct_filter)

    @staticmethod
    def _sacct_filter(record) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if not SacctNote.said:
            SacctNote.said = True
            print("node-run: sacct fails on this cluster (no job accounting, common on small clusters): submitit "
                  "then learns that a job ended only from the result file the job writes. Jobs run, save and "
                  "requeue as usual; a job killed before it could write one (out of memory, scancel) leaves this "
                  "sweep waiting: see squeue and the job's log in .submitit/. submitit's sacct warnings are not "
                  "repeated.", file=sys.stderr, flush=True)
        return False

    said = False


def precheck(argv: list[str], dry: bool = False) -> list[str] | list[list[str]]:
    """Compose every job the command line asks for and validate it; raise ConfigError on the first bad one. Then
    claim the folders the jobs will write (refusing any that holds a run) and return the overrides that pin them,
    so that Hydra writes exactly there. `dry`: claim nothing, return each job's overrides (`node-run check`)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    multirun = any(a in ("-m", "--multirun") for a in argv)
    args, parsed = _parse([a for a in argv if not a.startswith("-")])
    _known_options([o for o in parsed if not o.is_sweep_override()])   # before Hydra's search-path dump can
    fixed = None
    if multirun:  # Hydra first composes the command line without its swept values: that must work too
        try:
            fixed = compose([a for a, o in zip(args, parsed) if not o.is_sweep_override()], hydra=True)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (a multirun first composes the command line without its swept values: also "
                              "name the config group that has this key, e.g. dataset=spirals)") from None
    target = str(OmegaConf.select(fixed, "hydra.sweeper._target_", default="")) if multirun else ""
    sweeper = "basic" if target.endswith("BasicSweeper") or not multirun else target
    args, parsed, probes = _expand(args, parsed, sweeper)
    _known_options(parsed)
    _refuse_appended(args, parsed)
    jobs = BasicSweeper.split_arguments(parsed, None)[0] if multirun else [args]
    names = []
    for job in jobs[:MAX_PRECHECK] + [jobs[0] + [probe] for probe in probes]:
        cfg = compose(job)
        families.check(cfg)
        names.append(cfg.name)
    name = sweep_name(names) if multirun and not any(a.startswith("hydra.sweep.dir=") for a in args) else None
    if dry:   # refuse a folder that holds a run, as a real command would, but claim none
        claim_folders(jobs, multirun, dry=True, name=name)
        return jobs
    if sweeper != "basic":   # a search sweeper runs hydra.sweeper.n_trials jobs (when it says how many)
        trials = OmegaConf.select(fixed, "hydra.sweeper.n_trials")
        jobs = jobs * int(trials) if isinstance(trials, int) and trials > 0 else jobs
    try:
        return claim_folders(jobs, multirun, name=name)
    except OSError as exc:   # a read-only place, a path through a file, /proc, a name too long
        raise ConfigError(f"cannot make the run folder: {exc.strerror or one_line(exc)}: {exc.filename}") from None


def _expand(args: list[str], parsed: list, sweeper: str) -> tuple[list[str], list, list[str]]:
    """The overrides with glob() expanded as Hydra would; a search sweeper's sweeps (`sweeper` is not "basic") are
    taken out, and the values they may take (an interval's ends) returned as `probes` to check on their own."""
    from hydra.core.override_parser.types import Glob

    expanded, probes = [], []
    for a, o in zip(args, parsed):
        if isinstance(o.value(), Glob):   # the usual "every experiment" recipe: expand it here, as Hydra would
            group = o.get_key_element().lstrip("+~")
            if group not in GROUPS:
                raise ConfigError(f"{a}: glob() picks options of a config group ({', '.join(GROUPS)})")
            chosen = o.value().filter(options(group))
            if not chosen:
                raise ConfigError(f"{a} matches no {group}; accepted: {', '.join(options(group))}")
            a = f"{o.key_or_group}={','.join(chosen)}"
            o = _parse([a])[1][0]
        if sweeper == "basic" and (o.is_interval_sweep() or (o.is_sweep_override() and o.value().tags)):
            raise ConfigError(f"{a} needs a search sweeper: add hydra/sweeper=optuna (Hydra's basic sweeper expands "
                              "only lists, choice() and range())")
        if o.is_sweep_override() and sweeper != "basic":
            # only the search sweeper expands this; check the values it may take (an interval's ends)
            values = [o.value().start, o.value().end] if o.is_interval_sweep() else list(o.sweep_string_iterator())
            probes += [f"{o.key_or_group}={v}" for v in values]
            continue
        expanded.append((a, o))
    return [a for a, _ in expanded], [o for _, o in expanded], probes


def _refuse_appended(args: list[str], parsed: list) -> None:
    """`+solver.rtl=1e-3` would add a key node-run never reads: refuse it, naming the nearest key."""
    appended = [o for o in parsed if o.is_add() or o.is_force_add()]
    if not appended:
        return
    base = compose([a for a, o in zip(args, parsed) if o not in appended and not o.is_sweep_override()])
    known = keys(base)
    for o in appended:
        key = o.key_or_group
        if key.split(".")[0] != "hydra" and key not in known and o.get_key_element().lstrip("+") not in GROUPS:
            raise ConfigError(f"unknown key {key!r}: node-run has no such setting, and adding it with + would "
                              f"be silently ignored{nearest(key, known)}")


def _known_options(parsed) -> None:
    """Every config group option the overrides name exists (else one line with the accepted ones)."""
    from hydra.core.override_parser.types import Glob

    for o in parsed:
        group = o.get_key_element().lstrip("+~")
        if group in GROUPS and not o.is_delete() and not isinstance(o.value(), Glob):
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            for v in values:
                if v is not None and str(v) not in options(group):
                    raise ConfigError(f"unknown {group} {v!r}; accepted: {', '.join(options(group))}")


def sweep_name(names: list[str]) -> str | None:
    """The sweep folder's name when its jobs have several `name`s (a glob() or a list of experiments): all of them
    joined by '+' (None when every job has the same name: Hydra's own ${name} is right)."""
    distinct = list(dict.fromkeys(names))
    if len(distinct) < 2:
        return None
    joined = "+".join(distinct)
    return joined if len(joined) <= 80 else f"{distinct[0]}+{len(distinct) - 1}_more"


def _parse(args: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return list(args), OverridesParser.create().parse_overrides(list(args))
    except Exception as exc:  # Hydra's parser errors
        raise ConfigError(f"cannot parse the command line: {one_line(exc)}") from None


def _resolved(cfg, key: str, num: int | None = None) -> Path | None:
    if num is not None:
        OmegaConf.update(cfg, "hydra.job.num", num, force_add=True)
    try:
        value = OmegaConf.select(cfg, key)
    except Exception:  # interpolations only Hydra's runtime can resolve
        return None
    return Path(str(value)) if value is not None else None


def claim_folders(jobs: list[list[str]], multirun: bool, dry: bool = False, name: str | None = None) -> list[str]:
    """Refuse folders that hold a run, claim the rest atomically (not if `dry`), and pin the run (or sweep)
    folder; `name`: the sweep folder's name when its jobs have several."""
    cfg = compose(jobs[0], hydra=True)
    if name is not None:
        cfg.name = name
    if not multirun:
        out = _resolved(cfg, "hydra.run.dir")
        if out is None:
            return []
        folders, pin = [out], [f"hydra.run.dir={out}"]
    else:
        sweep = _resolved(cfg, "hydra.sweep.dir")
        if sweep is None:
            return []
        cfg.hydra.sweep.dir = str(sweep)
        folders = [_resolved(cfg, "hydra.sweep.subdir", i) for i in range(min(len(jobs), MAX_PRECHECK))]
        folders, pin = [sweep / f for f in folders if f is not None], [f"hydra.sweep.dir={sweep}"]
    for folder in folders:
        if holds_run(folder) and in_use(folder):
            raise ConfigError(f"{folder} is in use by another node-run (running now); choose another folder")
        if not multirun and dead_end(folder, jobs[0]):
            if dry:
                return pin
            print(f"node-run: {folder} holds this run stopped before its first checkpoint: starting it again from "
                  "step 0", file=sys.stderr, flush=True)
            HELD.enter_context(locked(folder))
            RESTARTED.add(folder.resolve())
            return pin
        if holds_run(folder) and [p.name for p in folder.iterdir()] == [CLAIM]:
            raise ConfigError(f"{folder} is claimed by another node-run (running now, or stopped before it wrote "
                              "anything); choose another folder")
        if holds_run(folder):
            raise ConfigError(f"{folder} already holds a run; choose another "
                              f"{'hydra.sweep.dir' if multirun else 'hydra.run.dir'} (node-run never overwrites a "
                              "run; node-run resume=FOLDER continues one)")
        if not holds_run(folder) and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigError(f"{folder} is {'not empty' if folder.is_dir() else 'a file'}: a run folder must be new "
                              f"or empty; choose another {'hydra.sweep.dir' if multirun else 'hydra.run.dir'}")
    if dry:   # node-run check: refused as a real command would be, but nothing claimed
        return pin
    for folder in folders:
        claim(folder)
    if not multirun:   # it runs in this process (a multirun's jobs may not: each holds its own, in execute)
        HELD.enter_context(locked(folders[0]))
    return pin


def dead_end(folder: Path, job: list[str]) -> bool:
    """Whether `folder` holds this job's run, stopped before its first checkpoint (nothing trained to lose)."""
    if not (folder / CONFIG).is_file() or (folder / CHECKPOINT).exists():
        return False
    try:
        return OmegaConf.to_container(OmegaConf.load(folder / CONFIG)) == OmegaConf.to_container(compose(job))
    except Exception:  # an unreadable config is not this job's
        return False


CFG_FLAGS = ("-c", "--cfg", "-p", "--package")   # Hydra flags that print a config: they take a value


def check(argv: list[str]) -> None:
    """`node-run check ARGS...`: the whole pre-check of `node-run ARGS...` (every job of a multirun), then each
    job's composed config; nothing runs and no folder is made. Exit 2 with the pre-check's line if refused."""
    try:
        jobs = precheck(argv, dry=True)
    except (ConfigError, DataError) as exc:
        print(f"node-run: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    for i, job in enumerate(jobs):
        print(f"# job {i}: {' '.join(job) or '(no overrides)'}")
        print(OmegaConf.to_yaml(compose(job)))
    print(f"node-run check: {len(jobs)} job{'s' if len(jobs) != 1 else ''} pass{'es' if len(jobs) == 1 else ''} "
          "the pre-check; nothing was run and no folder was made", file=sys.stderr)


def without_cfg_flags(argv: list[str]) -> list[str]:
    """The command line without Hydra's print-a-config flags (`--cfg job`, `-p KEY`, `--resolve`)."""
    out, skip = [], False
    for a in argv:
        if skip or a == "--resolve" or a.split("=")[0] in CFG_FLAGS:
            skip = a in CFG_FLAGS and not skip
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        return check(argv[1:])
    if any(a.startswith("resume=") for a in argv):
        from .resume import main as resume_main
        return resume_main(argv)
    if any(a.split("=")[0] in CFG_FLAGS for a in argv):   # `--cfg job` prints only what the pre-check accepts
        try:
            precheck(without_cfg_flags(argv), dry=True)
        except (ConfigError, DataError) as exc:
            print(f"node-run: error: {one_line(exc)}", file=sys.stderr)
            sys.exit(2)
    if not any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        try:
            argv = argv + precheck(argv)
        except (ConfigError, DataError) as exc:
            print(f"node-run: error: {one_line(exc)}", file=sys.stderr)
            sys.exit(2)
    sys.argv = [sys.argv[0]] + argv
    # A sweeper's own error after its jobs ran (Optuna when every trial failed: "No trials are completed yet") is
    # printed by Hydra as a traceback; have Hydra raise it here instead, to say it in one line
    sweep_errors = any(a in ("-m", "--multirun") for a in argv) and "HYDRA_FULL_ERROR" not in os.environ
    if sweep_errors:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with stop.watch(immediate=True):
            run()
    except KeyboardInterrupt:
        stopped = INTERRUPTED
        print(f"node-run: interrupted; {Path(stopped[-1]) / SUMMARY} says so" if stopped else
              "node-run: interrupted before a run started", file=sys.stderr)
        sys.exit(128 + (stop.last_signal or 2))
    except Exception as exc:
        if not sweep_errors:
            raise
        failed = f" ({len(FAILED)} of its jobs did not finish ok; each one's {SUMMARY} says why)" if FAILED else ""
        print(f"node-run: error: the sweep ended with an error: {type(exc).__name__}: {one_line(exc, 300)}{failed}",
              file=sys.stderr)
        sys.exit(1)
    finally:
        if sweep_errors:   # ours, not the user's: a later node-run in this process (or its children) must not see it
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if FAILED:
        sys.exit(1)


if __name__ == "__main__":
    main()
