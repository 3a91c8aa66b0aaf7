"""`node-run`: the Hydra entry point. `main()` checks the command line first, so bad input is one line and a
non-zero exit before any run folder is made; `run()` is the @hydra.main task that trains and writes the run."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from .config import ConfigError, resolve_device, validate
from .metrics import count_parameters
from .mnist import DataError
from .run import METRICS, SUMMARY, RunDir, read_summary
from .tasks import build_task, check_task

GROUPS = ("experiment", "model", "solver", "dataset", "trainer")
HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-p", "--package", "--resolve",
               "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--shell-completion", "-sc")
MAX_PRECHECK = 256
FAILED: list[str] = []   # jobs of this process that did not finish with status ok


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def options(group: str) -> list[str]:
    folder = resources.files("node_cli.conf") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def base_summary(cfg, device) -> dict:
    s = cfg.solver
    return dict(experiment=cfg.name, task=cfg.task, model=cfg.model.name, dataset=cfg.dataset.name,
                solver=dict(method=s.method, rtol=s.rtol, atol=s.atol, adjoint=s.adjoint, adjoint_norm=s.adjoint_norm),
                seed=cfg.seed, device=str(device), torch=torch.__version__)


def execute(cfg, out_dir) -> dict:
    """Train one configured run into `out_dir`; returns its summary (also written to summary.json)."""
    from .train import fit

    run = RunDir(out_dir)
    device = resolve_device(cfg.device) if cfg.device in ("auto", "cpu", "cuda") else cfg.device
    summary = base_summary(cfg, device)
    try:
        validate(cfg)
        check_task(cfg)
        torch.manual_seed(cfg.seed)
        task = build_task(cfg, device)
        summary["params"] = count_parameters(task.model)
        summary.update(fit(cfg, task, run, device))
    except (ConfigError, DataError) as exc:
        summary.update(status="error", error=one_line(exc))
        run.write_summary(summary)
        raise
    summary["run_dir"] = str(run.path)
    run.write_summary(summary)
    return summary


def print_report(summary: dict, out_dir) -> None:
    lines = [f"node-run: {summary['experiment']} ({summary['model']}) status {summary['status']} "
             f"in {summary['wall_time']:.1f} s on {summary['device']}"]
    for key, value in summary.items():
        if key.startswith("test_") and isinstance(value, float):
            lines.append(f"  {key:<18} {value:.4f}")
    if "test_error" in summary:
        lines.append(f"  {'test accuracy':<18} {100 * (1 - summary['test_error']):.2f}%")
    lines += [f"  {'parameters':<18} {summary.get('params', 0):,}",
              f"  {'NFE-F / NFE-B':<18} {summary['nfe_forward']:.1f} / {summary['nfe_backward']:.1f} per training step"
              f"  ({summary['nfe_backward_note']})",
              f"  {'seconds per step':<18} {summary['sec_per_step']:.3f}"]
    if "activation_bytes" in summary:
        lines.append(f"  {'memory':<18} {summary['activation_bytes'] / 2**20:.2f} MiB saved for backward, "
                     f"peak {summary['peak_memory_bytes'] / 2**20:.2f} MiB ({summary['peak_memory_method']})")
    lines.append(f"  {'outputs':<18} {out_dir}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="pkg://node_cli.conf", config_name="config")
def run(cfg) -> None:
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = execute(cfg, out_dir)
    except (ConfigError, DataError) as exc:
        print(f"node-run: error: {one_line(exc)}", file=sys.stderr, flush=True)
        FAILED.append(out_dir)
        return
    print_report(summary, out_dir)
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt   # the summary is written; stop the whole command, sweeps included
    if summary["status"] != "ok":
        print(f"node-run: error: run {summary['status']}: {summary['error']} "
              f"(summary in {Path(out_dir) / SUMMARY}; last good checkpoint kept)", file=sys.stderr, flush=True)
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
    from hydra import compose, initialize_config_module
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
    with initialize_config_module(config_module="node_cli.conf", version_base="1.3"):
        if multirun:  # Hydra first composes the command line without its swept values: that must work too
            fixed = [a for a, o in zip(args, parsed) if not o.is_sweep_override()]
            try:
                compose("config", overrides=fixed)
            except Exception as exc:
                raise ConfigError(f"{one_line(exc)} (a multirun first composes the command line without its "
                                  "swept values: also name the config group that has this key, e.g. "
                                  "dataset=spirals)") from None
        for job in jobs[:MAX_PRECHECK]:
            try:
                cfg = compose("config", overrides=job, return_hydra_config=not multirun)
            except Exception as exc:  # Hydra's composition errors: unknown keys, ambiguous sweeps, ...
                raise ConfigError(one_line(exc)) from None
            validate(cfg)
            check_task(cfg)
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
