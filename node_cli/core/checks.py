"""Bad input becomes one clear line, before anything runs: the one set of validators every family uses.

- `ConfigError`: a bad setting (exit 2). `DataError`: a data set that cannot be had (exit 1). `StorageError`: the
  run folder cannot be written (disk full, deleted, read-only) (exit 1); `io_error(exc, where)` says which.
- `one_line(exc)`: an exception as one line, for every message a user sees.
- `choice`, `number` (with `positive` and `integer` as its common cases): range and membership checks whose
  messages all read `key=value is not allowed: it must be ...` or `unknown key 'value'; accepted: ...`.
- `validate(cfg)`: the checks on the keys every experiment shares (solver, trainer, device, seed); each family
  checks its own model and dataset keys with the same functions.
"""
from __future__ import annotations

import importlib.util
import math

import torch
from omegaconf import ListConfig

from .views import LOGGERS   # the loggers' registry: name -> view and the packages it needs


class ConfigError(Exception):
    """A bad setting. The message is one line: what is wrong and what is accepted."""


class DataError(Exception):
    """A data set that cannot be found or fetched; the message is one line meant for the user."""


class StorageError(Exception):
    """The run's folder could not be written; the message is one line (`io_error`)."""


def io_error(exc: OSError, where) -> str:
    """An OSError as one true line naming the path: "no space left on device at PATH" when the disk is full."""
    import errno

    path = exc.filename if exc.filename is not None else where
    if exc.errno == errno.ENOSPC:
        return f"no space left on device at {path}"
    return f"{exc.strerror or type(exc).__name__}: {path}"


OPTIMIZERS = ("sgd", "adam", "rmsprop")
NAME_MAX = 255   # bytes in one folder name (Linux, macOS)
SCHEDULES = ("multistep", "cosine")
DEVICES = ("auto", "cpu", "cuda")


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """The exception's message with all whitespace runs folded to one space (its type name if empty)."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if limit is None or len(msg) <= limit else msg[: limit - 3] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value, key: str, low: float | None = None, high: float | None = None, *, integer: bool = False,
           strict: bool = False, allow_none: bool = False) -> None:
    """A finite number (an integer if `integer`) in [low, high] ((low, high] if `strict`); None if `allow_none`."""
    if value is None and allow_none:
        return
    ok = _is_number(value) and (not integer or float(value).is_integer())
    ok = ok and (low is None or (value > low if strict else value >= low)) and (high is None or value <= high)
    if ok:
        return
    kind = "an integer" if integer else "a number"
    if low == 0 and strict and high is None:
        wanted = f"a positive {'integer' if integer else 'number'}"
    elif low is not None and high is not None:
        wanted = f"{kind} in {'(' if strict else '['}{low:g}, {high:g}]" if not integer else f"{kind} in {low}..{high}"
    elif low is not None:
        wanted = f"{kind} {'>' if strict else '>='} {low:g}"
    else:
        wanted = f"{kind} <= {high:g}" if high is not None else kind
    raise ConfigError(f"{key}={value!r} is not allowed: it must be {wanted}" + (" or null" if allow_none else ""))


def positive(value, key: str, integer: bool = False, allow_none: bool = False) -> None:
    number(value, key, 0, integer=integer, strict=True, allow_none=allow_none)


def integer(value, key: str, low: int | None = None, high: int | None = None, why: str = "") -> None:
    try:
        number(value, key, low, high, integer=True)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{why}") from None


def boolean(value, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not allowed: it must be true or false")


def text(value, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a non-empty string"
                          + (" or null" if allow_none else ""))


def folder_name(value, key: str) -> None:
    """A value that names one folder (`name`, under outputs/): no separators, not `.` or `..`, not too long."""
    text(value, key)
    if "/" in value or "\\" in value or "\0" in value or value.strip() in (".", ".."):
        raise ConfigError(f"{key}={value!r} is not allowed: it names one folder under outputs/, so it must not "
                          "contain / or \\ or be . or ..")
    if len(value.encode()) > NAME_MAX:
        raise ConfigError(f"{key} is {len(value.encode())} bytes long: it names a folder, at most {NAME_MAX} bytes")


def choice(value, key: str, accepted) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {key} {value!r}; accepted: {', '.join(map(str, accepted))}")


def validate(cfg, training: bool = True) -> None:
    """Checks shared by every experiment family; each family checks its own model and dataset keys. `training`:
    also what only training needs (node-eval only evaluates)."""
    from .solve import SOLVERS

    (folder_name if training else text)(cfg.name, "name")   # a new run's folder is named after it
    text(cfg.get("objective", "test_error"), "objective")
    integer(cfg.seed, "seed", 0, 2 ** 63 - 1)
    s = cfg.solver
    choice(s.method, "solver.method", SOLVERS)
    positive(s.rtol, "solver.rtol")
    positive(s.atol, "solver.atol")
    boolean(s.adjoint, "solver.adjoint")
    choice(s.adjoint_norm, "solver.adjoint_norm", ("default", "seminorm"))
    boolean(s.get("fast_rk", True), "solver.fast_rk")
    boolean(s.get("first_step_grad", True), "solver.first_step_grad")
    boolean(s.get("compile", False), "solver.compile")
    positive(s.get("step_size"), "solver.step_size", allow_none=True)
    positive(s.get("max_num_steps"), "solver.max_num_steps", integer=True, allow_none=True)
    positive(s.get("max_nfe"), "solver.max_nfe", integer=True, allow_none=True)
    _solver_options(s)
    if training and s.method == "scipy_solver" and not s.adjoint:
        raise ConfigError("solver.method=scipy_solver needs solver.adjoint=true to train: scipy solves on NumPy "
                          "arrays, so no gradient flows back through its solve (the adjoint's backward solve gives "
                          "one)")
    t = cfg.trainer
    positive(t.epochs, "trainer.epochs", integer=True)
    positive(t.max_steps, "trainer.max_steps", integer=True, allow_none=True)
    positive(t.batch_size, "trainer.batch_size", integer=True)
    positive(t.lr, "trainer.lr")
    positive(t.get("lr_batch_denom"), "trainer.lr_batch_denom", allow_none=True)
    number(t.momentum, "trainer.momentum", 0)
    number(t.weight_decay, "trainer.weight_decay", 0)
    positive(t.gamma, "trainer.gamma")
    milestones = t.milestones
    if not isinstance(milestones, (list, tuple, ListConfig)):
        raise ConfigError(f"trainer.milestones={milestones!r} is not allowed: it must be a list of epochs, e.g. [60,100]")
    for m in milestones:
        positive(m, "trainer.milestones entry", integer=True)
    boolean(t.progress, "trainer.progress")
    positive(t.eval_every, "trainer.eval_every", integer=True, allow_none=True)
    positive(t.eval_limit, "trainer.eval_limit", integer=True, allow_none=True)
    positive(t.get("final_eval_limit"), "trainer.final_eval_limit", integer=True, allow_none=True)
    boolean(t.get("figures", True), "trainer.figures")
    boolean(t.get("measure_memory", True), "trainer.measure_memory")
    choice(t.optimizer, "trainer.optimizer", OPTIMIZERS)
    choice(t.get("schedule", "multistep"), "trainer.schedule", SCHEDULES)
    if t.get("schedule") == "cosine" and list(t.milestones):
        raise ConfigError("trainer.milestones belong to schedule=multistep; with trainer.schedule=cosine set "
                          "trainer.milestones=[]")
    number(t.get("min_lr_ratio", 0.0), "trainer.min_lr_ratio", 0, 1)
    positive(cfg.dataset.get("limit"), "dataset.limit", integer=True, allow_none=True)
    choice(cfg.device, "device", DEVICES)
    boolean(cfg.get("deterministic", False), "deterministic")
    logger(cfg.get("logger", "none"))
    threads(cfg.get("threads", "auto"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=auto or device=cpu")


def _solver_options(s) -> None:
    """solver.first_step / min_step / max_step: only for the methods whose torchdiffeq solver takes them;
    solver.adjoint_rtol / adjoint_atol / adjoint_method: null (the forward ones) or a tolerance / a method."""
    from .solve import SOLVERS, TAKES

    positive(s.get("first_step"), "solver.first_step", allow_none=True)
    number(s.get("min_step"), "solver.min_step", 0, allow_none=True)
    positive(s.get("max_step"), "solver.max_step", allow_none=True)
    for key in ("first_step", "min_step", "max_step"):
        if s.get(key) is not None and key not in TAKES[s.method]:
            takers = [m for m in SOLVERS if key in TAKES[m]]
            raise ConfigError(f"solver.{key} is not taken by method {s.method}; torchdiffeq takes it with "
                              f"{', '.join(takers)} (or set solver.{key}=null)")
    if s.get("min_step") is not None and s.get("max_step") is not None and s.min_step > s.max_step:
        raise ConfigError(f"solver.min_step={s.min_step!r} is not allowed: it must be <= "
                          f"solver.max_step={s.max_step!r}")
    positive(s.get("adjoint_rtol"), "solver.adjoint_rtol", allow_none=True)
    positive(s.get("adjoint_atol"), "solver.adjoint_atol", allow_none=True)
    if s.get("adjoint_method") is not None:
        choice(s.adjoint_method, "solver.adjoint_method", SOLVERS)


def logger(name) -> None:
    """`logger`: a name in core/views.py's registry (LOGGERS), whose packages are installed."""
    choice(name, "logger", tuple(LOGGERS))
    missing = [p for p in LOGGERS[name].packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"logger={name} needs the {', '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
                          f"pip install 'node-run[{LOGGERS[name].extra}]' (or use logger=csv)")


def threads(value) -> None:
    """`threads`: auto (core/threads.py decides) or a positive integer."""
    if value != "auto":
        integer(value, "threads", 1, why=" or auto")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
