"""Statistics over seeds for sweep reports (:mod:`toolkit.report`): summaries and paired comparisons.

* :func:`summarize`: n, mean, sample standard deviation (ddof 1) and the 95 % Student-t interval of the mean,
  ``mean +- t_{0.975, n-1} * std / sqrt(n)`` (``scipy.stats.t.interval`` with ``scipy.stats.sem``).
* :func:`compare`: a group against a baseline on the seeds both have: the paired t-test
  (``scipy.stats.ttest_rel``, two-sided) and the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, exact
  for small n), and a verdict in words from the t-test's p-value: ``better (p = 0.012)``, ``worse (p = ...)``
  or ``no significant difference at n = 3 (p = 0.41)``. "Better" follows the metric's direction
  (higher or lower is better). Pairing by seed removes the variance the seed adds to both variants (same data
  order and initial draws), which is what makes 3-5 seeds enough to see a consistent difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Summary:
    """Values of one group over seeds: ``n``, ``mean``, ``std`` (ddof 1; NaN for n < 2), ``low``/``high``
    (the 95 % t interval of the mean; NaN for n < 2)."""

    n: int
    mean: float
    std: float
    low: float
    high: float


@dataclass
class Comparison:
    """A group against the baseline on ``n`` shared seeds: mean difference (group - baseline), the paired
    t-test's and Wilcoxon's two-sided p-values (NaN when undefined) and the verdict in words."""

    n: int
    diff: float
    p_t: float
    p_wilcoxon: float
    verdict: str


def summarize(values, confidence: float = 0.95) -> Summary:
    """:class:`Summary` of a 1-D sequence of floats (one per seed)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(n, mean, 0.0, mean, mean)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=stats.sem(x))
    return Summary(n, mean, std, float(low), float(high))


def _fmt_p(p: float) -> str:
    return "nan" if not math.isfinite(p) else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")


def compare(group: dict, baseline: dict, higher_is_better: bool = True, alpha: float = 0.05) -> Comparison:
    """Paired comparison of ``group`` with ``baseline`` (each ``{seed: value}``) on their shared seeds.

    Verdict: ``better``/``worse`` when the paired t-test's p < ``alpha`` (direction from the mean difference
    and ``higher_is_better``), else ``no significant difference at n = N``; fewer than 2 shared seeds give
    ``not comparable (n = N shared seeds)``.
    """
    from scipy import stats

    seeds = sorted(set(group) & set(baseline))
    n = len(seeds)
    if n < 2:
        return Comparison(n, math.nan, math.nan, math.nan, f"not comparable (n = {n} shared seed{'s' * (n != 1)})")
    a = np.array([group[s] for s in seeds], np.float64)
    b = np.array([baseline[s] for s in seeds], np.float64)
    d = a - b
    diff = float(d.mean())
    if np.all(d == d[0]):  # constant differences: the t statistic is undefined (zero variance)
        p_t = 1.0 if d[0] == 0 else 0.0
    else:
        p_t = float(stats.ttest_rel(a, b).pvalue)
    try:
        p_w = float(stats.wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
    except ValueError:
        p_w = math.nan
    if p_t < alpha and diff != 0:
        word = "better" if (diff > 0) == higher_is_better else "worse"
        verdict = f"{word} (p = {_fmt_p(p_t)})"
    else:
        verdict = f"no significant difference at n = {n} (p = {_fmt_p(p_t)})"
    return Comparison(n, diff, p_t, p_w, verdict)


def lower_is_better(metric: str) -> bool:
    """Whether a metric name reads as an error (loss, error, rmse/mae/mse, chamfer, distance): lower is better."""
    name = metric.lower().rsplit("/", 1)[-1]
    return any(w in name for w in ("loss", "err", "rmse", "mae", "mse", "chamfer", "dist", "time", "nll"))
