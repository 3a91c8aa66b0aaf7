"""`node-run`: the Hydra entry point. `main()` checks the command line first, so bad input is one line and a
non-zero exit before any run folder is made; `run()` is the @hydra.main task that trains and writes the run."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from . import families
from .core.checks import ConfigError, DataError, one_line, validate
from .core.compose import GROUPS, compose, options
from .core.rundir import CHECKPOINT, METRICS, SUMMARY, read_summary
from .experiment import execute, report_lines

HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-p", "--package", "--resolve",
               "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--shell-completion", "-sc")
MAX_PRECHECK = 256
FAILED: list[str] = []   # jobs of this process that did not finish with status ok


@hydra.main(version_base="1.3", config_path="pkg://node_cli.conf", config_name="config")
def run(cfg) -> None:
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = execute(cfg, out_dir)
    except (ConfigError, DataError) as exc:
        print(f"node-run: error: {one_line(exc)}", file=sys.stderr, flush=True)
        FAILED.append(out_dir)
        return
    print("\n".join(report_lines(summary, out_dir)), flush=True)
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt   # the summary is written; stop the whole command, sweeps included
    if summary["status"] != "ok":
        kept = "last good checkpoint kept" if (Path(out_dir) / CHECKPOINT).is_file() else "no checkpoint yet"
        print(f"node-run: error: run {summary['status']}: {summary['error']} "
              f"(summary in {Path(out_dir) / SUMMARY}; {kept})", file=sys.stderr, flush=True)
        FAILED.append(out_dir)


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
            except (OSError, ValueError):
                ok = False
            if not ok:
                FAILED.append(str(job))
                print(f"node-run: error: sweep job {job} did not finish ok (see its {SUMMARY})",
                      file=sys.stderr, flush=True)


def precheck(argv: list[str]) -> None:
    """Compose every job the command line asks for and validate it; raise ConfigError on the first bad one."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(a in ("-m", "--multirun") for a in argv)
    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception as exc:  # Hydra's parser errors
        raise ConfigError(f"cannot parse the command line: {one_line(exc)}") from None
    for o in parsed:
        group = o.get_key_element().lstrip("+~")
        if group in GROUPS and not o.is_delete():
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            for v in values:
                if v is not None and str(v) not in options(group):
                    raise ConfigError(f"unknown {group} {v!r}; accepted: {', '.join(options(group))}")
    jobs = BasicSweeper.split_arguments(parsed, None)[0] if multirun else [args]
    if multirun:  # Hydra first composes the command line without its swept values: that must work too
        try:
            compose([a for a, o in zip(args, parsed) if not o.is_sweep_override()])
        except ConfigError as exc:
            raise ConfigError(f"{exc} (a multirun first composes the command line without its swept values: also "
                              "name the config group that has this key, e.g. dataset=spirals)") from None
    for job in jobs[:MAX_PRECHECK]:
        cfg = compose(job, hydra=not multirun)
        validate(cfg)
        families.check(cfg)
        if not multirun:
            try:
                out = Path(OmegaConf.select(cfg, "hydra.run.dir"))
            except Exception:  # interpolations only Hydra's runtime can resolve
                continue
            if (out / SUMMARY).exists() or (out / METRICS).exists():
                raise ConfigError(f"{out} already holds a run; choose another hydra.run.dir "
                                  "(node-run never overwrites a run)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        try:
            precheck(argv)
        except (ConfigError, DataError) as exc:
            print(f"node-run: error: {one_line(exc)}", file=sys.stderr)
            sys.exit(2)
    sys.argv = [sys.argv[0]] + argv
    try:
        run()
    except KeyboardInterrupt:
        print("node-run: interrupted; the run's summary.json says so", file=sys.stderr)
        sys.exit(130)
    from node_cli import cli as installed   # SweepStatus's module: not this one under `python -m node_cli.cli`
    if FAILED or installed.FAILED:
        sys.exit(1)


if __name__ == "__main__":
    main()
