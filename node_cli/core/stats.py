"""Statistics over seeds for node-report's comparison tables: is model A below model B, with what interval?

Runs pair when they share `seed` and the data's own seed (`dataset.seed`, where the data set has one): those
runs of two models saw the same data and are scored on the same test set, so the difference of each pair is one
draw of "A minus B on this data", and the mean of the differences gets a paired t interval (n - 1 degrees of
freedom). Where two models share no such pair (different data per seed), the comparison falls back to the
unpaired view: each model's mean ± sd and Welch's t interval. A seed run twice counts once (its runs averaged):
n is the number of distinct seeds, never of run folders. The interval covers the seed-to-seed variation of
training on *these* data; it says nothing about other data sets.

The report sections say which comparisons are the paper's orderings (`claim`: "lower", or "within" a margin) and call
`compare`; this module knows none of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (scipy, a dependency of torchdiffeq)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def sd(values) -> float | None:
    """The sample standard deviation (n - 1), None with fewer than two values."""
    values = list(values)
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def pair_key(run) -> tuple:
    """What makes two runs of different models a pair: the same model seed on the same data."""
    return run.setting("seed"), run.setting("dataset.seed")


def by_seed(runs, metric: str) -> dict:
    """{pair_key: the metric}, one entry per distinct seed (a seed with several runs: their mean)."""
    values: dict = {}
    for run in runs:
        if run.number(metric) is not None:
            values.setdefault(pair_key(run), []).append(run.number(metric))
    return {k: sum(v) / len(v) for k, v in values.items()}


@dataclass(frozen=True)
class Difference:
    """mean(A) - mean(B) with its `level` interval (lo, hi: None with too few seeds)."""
    design: str            # "paired" (n pairs) or "unpaired" (n_a, n_b seeds)
    n: int                 # pairs (paired) or the smaller of the two seed counts (unpaired)
    mean: float
    lo: float | None
    hi: float | None
    n_a: int
    n_b: int

    def scaled(self, k: float) -> "Difference":
        """The same difference in other units (e.g. 100: fractions as percentage points)."""
        return Difference(self.design, self.n, self.mean * k, None if self.lo is None else self.lo * k,
                          None if self.hi is None else self.hi * k, self.n_a, self.n_b)

    def cell(self, spec: str = ".4f") -> str:
        text = format(self.mean, spec)
        return text if self.lo is None else f"{text} [{self.lo:{spec}}, {self.hi:{spec}}]"


def paired(a: dict, b: dict, level: float = LEVEL) -> Difference | None:
    """The paired t interval of mean(a[k] - b[k]) over the keys both have (None if they share none)."""
    keys = [k for k in a if k in b]
    if not keys:
        return None
    d = [a[k] - b[k] for k in keys]
    m, s = sum(d) / len(d), sd(d)
    half = t_quantile(0.5 + level / 2, len(d) - 1) * s / math.sqrt(len(d)) if s is not None else None
    lo, hi = (None, None) if half is None else (m - half, m + half)
    return Difference("paired", len(d), m, lo, hi, len(a), len(b))


def unpaired(a: list, b: list, level: float = LEVEL) -> Difference | None:
    """mean(a) - mean(b) with Welch's t interval (None if either is empty; no interval under two each)."""
    if not a or not b:
        return None
    m = sum(a) / len(a) - sum(b) / len(b)
    sa, sb = sd(a), sd(b)
    if sa is None or sb is None:
        return Difference("unpaired", min(len(a), len(b)), m, None, None, len(a), len(b))
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference("unpaired", min(len(a), len(b)), m, m, m, len(a), len(b))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return Difference("unpaired", min(len(a), len(b)), m, m - half, m + half, len(a), len(b))


def compare(runs_a, runs_b, metric: str, metric_b: str | None = None, level: float = LEVEL) -> Difference | None:
    """A's `metric` minus B's (`metric_b`, default the same): paired over the seeds they share when they share at
    least two, else unpaired."""
    a, b = by_seed(runs_a, metric), by_seed(runs_b, metric_b or metric)
    if sum(k in b for k in a) >= 2:
        return paired(a, b, level)
    return unpaired(list(a.values()), list(b.values()), level)


def verdict(d: Difference | None, claim: str = "lower", margin: float = 0.0, unit: str = "") -> str:
    """In words, whether the interval establishes the claim about A - B: "lower" (A below B: the interval lies
    below 0) or "within" (|A - B| < margin: the interval lies inside ±margin)."""
    if d is None:
        return "no runs to compare"
    if d.lo is None:
        return f"not established: no interval from {d.n} seed{'s' if d.n != 1 else ''} (needs 2 or more)"
    what = f"{d.design}, n = {d.n}" if d.design == "paired" else f"unpaired, {d.n_a} and {d.n_b} seeds"
    if claim == "lower":
        if d.hi < 0:
            return f"established: A lower (interval below 0; {what})"
        if d.lo > 0:
            return f"reversed: A higher (interval above 0; {what})"
        return f"not established: the interval includes 0 ({what})"
    if claim == "within":
        if -margin < d.lo and d.hi < margin:
            return f"established: within ±{margin:g}{unit} ({what})"
        return f"not established: the interval reaches beyond ±{margin:g}{unit} ({what})"
    raise ValueError(f"unknown claim {claim!r}")


def spread_cell(values: dict, spec: str = ".4f", scale: float = 1.0) -> str:
    """mean ± sd (n seeds) of by_seed's values."""
    if not values:
        return "–"
    v = [x * scale for x in values.values()]
    s = sd(v)
    return (format(sum(v) / len(v), spec) + ("" if s is None else f" ± {s:{spec}}")
            + f" ({len(v)} seed{'s' if len(v) != 1 else ''})")


COLUMNS = ["A", "B", "metric", "A: mean ± sd", "B: mean ± sd", "A − B: mean [95% interval]", "n", "the claim",
           "verdict"]


def comparison(a: tuple, b: tuple, metric: str, claim: str = "lower", margin: float = 0.0, metric_b=None,
               spec: str = ".4f", scale: float = 1.0, unit: str = "", **context) -> tuple[list, dict]:
    """One row of a comparison table (COLUMNS) and its CSV dict: `a`, `b` are (label, runs); the claim is about
    A - B in the metric's units times `scale` (`margin` in those units)."""
    (label_a, runs_a), (label_b, runs_b) = a, b
    d = compare(runs_a, runs_b, metric, metric_b)
    d = d and d.scaled(scale)
    va, vb = by_seed(runs_a, metric), by_seed(runs_b, metric_b or metric)
    words = verdict(d, claim, margin, unit)
    said = "A below B" if claim == "lower" else f"|A − B| < {margin:g}{unit}"
    md = [label_a, label_b, metric if not metric_b else f"{metric} vs {metric_b}", spread_cell(va, spec, scale),
          spread_cell(vb, spec, scale), d.cell(spec) if d else "–", d.n if d else 0, said, words]
    row = dict(**context, a=label_a, b=label_b, metric=metric, metric_b=metric_b or metric, seeds_a=len(va),
               seeds_b=len(vb), design=d and d.design, n=d.n if d else 0, difference=d and d.mean,
               lo=d and d.lo, hi=d and d.hi, claim=said, verdict=words)
    return md, row


def machines(runs) -> str:
    """Where the runs' numbers were made, from their summaries: machine, threads, torch; and their seeds."""
    def values(get):
        return sorted({str(v) for v in (get(r) for r in runs) if v is not None})

    seeds = sorted({r.setting("seed") for r in runs if r.setting("seed") is not None}, key=str)
    parts = [", ".join(values(lambda r: (r.summary or {}).get("device_name"))) or "machine not recorded",
             "threads " + (", ".join(values(lambda r: (r.summary or {}).get("threads"))) or "?"),
             "torch " + (", ".join(values(lambda r: ((r.summary or {}).get("versions") or {}).get("torch"))) or "?"),
             f"seeds {', '.join(map(str, seeds)) or '?'}"]
    return "; ".join(parts)
