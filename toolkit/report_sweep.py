"""``python -m toolkit.report --sweep MANIFEST ...``: a sweep's runs as a results table or as statistics.

Without ``--metric``: :func:`toolkit.report.markdown`'s table of the finished runs (the CILP table).
With ``--metric KEY``: per group, the metric's n, mean +- std over seeds, 95 % t interval and, against the
baseline group, the paired comparison on shared seeds (:mod:`toolkit.stats`), as Markdown (printed and
written) and CSV, and a PNG of the training curves (mean over the group's runs, min-max band) read from the
runs' TensorBoard event files with TensorBoard's ``EventAccumulator``. Within a group, runs of the same seed
(a ``--group-by`` that merges points) are averaged first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shlex
import sys
from pathlib import Path

from toolkit.files import write_bytes, write_text


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_value(run_dir: Path, metric: str, eval_name: str | None = None) -> tuple[float | None, str]:
    """The run's value of ``metric`` and where it came from.

    Looks in the cached evaluation ``RUN/eval/<eval_name>`` (default: the newest ``*.json``; its ``metrics`` are
    the means over draws) under ``metric`` and ``metric`` without a ``val/``/``val_ema/`` prefix, then in
    ``summary.json``'s ``last_eval`` under ``metric`` and ``val/<metric>``. Returns (None, reason) if absent.
    """
    evals = sorted((run_dir / "eval").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if eval_name:
        evals = [p for p in evals if p.name == eval_name]
    if evals:
        metrics = _load_json(evals[-1]).get("metrics", {})
        bare = re.sub(r"^val(_ema)?/", "", metric)
        for key in (metric, bare):
            if key in metrics:
                return float(metrics[key]), f"eval/{evals[-1].name}"
    last = _load_json(run_dir / "summary.json").get("last_eval", {})
    for key in (metric, f"val/{metric}"):
        if key in last:
            return float(last[key]), "summary.json"
    keys = sorted(set(last) | (set(metrics) if evals else set()))
    return None, f"no '{metric}' (has {', '.join(keys[:12]) or 'no metrics'})"


def group_label(entry: dict, keys: list[str] | None) -> str:
    """The run's group: its point, or ``short=value,...`` of the ``--group-by`` keys (``-`` when unset)."""
    if not keys:
        return entry["point"]
    from launch.sweep import format_value

    over = entry.get("overrides", {})
    return ",".join(f"{k.split('.')[-1]}={format_value(over[k]) if k in over else '-'}" for k in keys)


def collect(manifest: dict, metric: str, keys: list[str] | None, eval_name: str | None):
    """(groups: label -> {seed: value}, excluded: [(run, reason)], sources: set of value sources)."""
    groups: dict[str, dict[int, list[float]]] = {}
    excluded, sources = [], set()
    for entry in manifest["runs"]:
        run_dir = Path(entry["dir"])
        label = group_label(entry, keys)
        groups.setdefault(label, {})
        summary = _load_json(run_dir / "summary.json")
        if summary.get("status") != "finished":
            status = entry.get("status", "unknown")
            reason = "failed" if status == "failed" else f"not finished ({status})"
            if entry.get("error"):
                reason += f": {entry['error']}"
            excluded.append((entry["name"], label, reason))
            continue
        value, source = run_value(run_dir, metric, eval_name)
        if value is None:
            excluded.append((entry["name"], label, source))
            continue
        sources.add(source.split("/")[0])
        groups[label].setdefault(int(entry["seed"]), []).append(value)
    merged = {g: {s: sum(v) / len(v) for s, v in seeds.items()} for g, seeds in groups.items()}
    return merged, excluded, sources


def _f(x: float, spec: str = ".4g") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def stats_rows(groups: dict, baseline: str | None, higher: bool, alpha: float) -> list[dict]:
    """One dict per group: n, mean, std, ci_low, ci_high, seeds, and vs the baseline n_paired, diff, p_t,
    p_wilcoxon, verdict."""
    from toolkit.stats import compare, summarize

    rows = []
    for label, by_seed in groups.items():
        seeds = sorted(by_seed)
        s = summarize([by_seed[k] for k in seeds])
        row = {"group": label, "n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.low, "ci_high": s.high,
               "seeds": " ".join(map(str, seeds))}
        if baseline is not None and label != baseline:
            c = compare(by_seed, groups[baseline], higher_is_better=higher, alpha=alpha)
            row.update(n_paired=c.n, diff=c.diff, p_t=c.p_t, p_wilcoxon=c.p_wilcoxon, verdict=c.verdict)
        elif baseline is not None:
            row.update(verdict="baseline")
        rows.append(row)
    return rows


def stats_markdown(rows: list[dict], metric: str, baseline: str | None, higher: bool, excluded: list,
                   command: str, sources: set) -> str:
    lines = [f"<!-- generated by: {command} -->",
             f"**{metric}** ({'higher' if higher else 'lower'} is better; mean ± std over seeds, 95 % t interval; "
             f"values from {', '.join(sorted(sources)) or 'no run'})", "",
             "| Group | n | mean ± std | 95 % interval | seeds |" + (
                 " Δ vs baseline | paired t p | Wilcoxon p | verdict |" if baseline else ""),
             "|---|---|---|---|---|" + ("---|---|---|---|" if baseline else "")]
    for r in rows:
        line = (f"| {r['group']} | {r['n']} | {_f(r['mean'])} ± {_f(r['std'], '.2g')} | "
                f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}] | {r['seeds']} |")
        if baseline:
            line += (f" {_f(r.get('diff'), '+.3g')} | {_f(r.get('p_t'), '.2g')} | {_f(r.get('p_wilcoxon'), '.2g')} | "
                     f"{r.get('verdict', '')} |")
        lines.append(line)
    if baseline:
        lines.append(f"\nBaseline: {baseline}; paired on the seeds both groups have (scipy.stats.ttest_rel, "
                     "two-sided; Wilcoxon signed-rank for reference).")
    if excluded:
        lines.append("\nNot counted:")
        lines.extend(f"- {name} ({group}): {reason}" for name, group, reason in excluded)
    return "\n".join(lines)


def stats_csv(rows: list[dict]) -> str:
    cols = ["group", "n", "mean", "std", "ci_low", "ci_high", "seeds", "n_paired", "diff", "p_t", "p_wilcoxon",
            "verdict"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def read_curve(run_dir: Path, tags: list[str]) -> tuple[str, list[int], list[float]] | None:
    """The first of ``tags`` found in ``RUN/tb``'s scalars: (tag, steps, values), or None."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (run_dir / "tb").is_dir():
        return None
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags().get("scalars", []))
    for tag in tags:
        if tag in have:
            events = acc.Scalars(tag)
            return tag, [e.step for e in events], [e.value for e in events]
    return None


def curves_png(manifest: dict, groups: dict, keys: list[str] | None, tags: list[str], title: str) -> bytes | None:
    """PNG bytes of each group's curve (mean over its finished runs at the steps they share, min-max band),
    or None when no run has any of ``tags``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    per_group: dict[str, list[dict]] = {}
    found_tag = None
    for entry in manifest["runs"]:
        if _load_json(Path(entry["dir"]) / "summary.json").get("status") != "finished":
            continue
        curve = read_curve(Path(entry["dir"]), tags)
        if curve:
            found_tag = found_tag or curve[0]
            per_group.setdefault(group_label(entry, keys), []).append(dict(zip(curve[1], curve[2])))
    if not per_group:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label in groups:
        runs = per_group.get(label)
        if not runs:
            continue
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        values = np.array([[r[s] for s in steps] for r in runs])
        line, = ax.plot(steps, values.mean(0), label=f"{label} (n = {len(runs)})")
        if len(runs) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(found_tag)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def runs_table(manifest: dict, out: str | None) -> int:
    """The per-run results table (:func:`toolkit.report.markdown`) of the sweep's finished runs."""
    from toolkit.report import markdown, run_row

    rows, skipped = [], []
    seeds = {e["seed"] for e in manifest["runs"]}
    for entry in manifest["runs"]:
        run_dir = Path(entry["dir"])
        if _load_json(run_dir / "summary.json").get("status") != "finished":
            skipped.append(f"{entry['name']} ({entry.get('status', 'not finished')})")
            continue
        row = run_row(run_dir)
        row["point"] = entry["point"]
        if len(seeds) > 1:
            row["experiment"] += f", seed {entry['seed']}"
        rows.append(row)
    titles = [r["experiment"] for r in rows]
    for r in rows:  # points the task titles alike (other options than the title names): add the point's name
        if titles.count(r["experiment"]) > 1:
            r["experiment"] = r["experiment"].replace(", seed", f" [{r['point']}], seed", 1) \
                if ", seed" in r["experiment"] else f"{r['experiment']} [{r['point']}]"
    if not rows:
        raise ValueError(f"sweep {manifest.get('sweep')}: no finished run to report")
    table = markdown(rows) + (f"\n\nNot finished: {', '.join(skipped)}" if skipped else "")
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text(out, table + "\n")
    return 0


def sweep_report(args) -> int:
    """Run ``toolkit.report --sweep`` (arguments of :func:`toolkit.report.main`); returns the exit code.

    Raises:
        ValueError: unreadable manifest, unknown ``--baseline`` group, or no run with the metric (one line).
    """
    from launch.sweep import read_manifest
    from toolkit.cli import check_writable
    from toolkit.stats import lower_is_better

    manifest = read_manifest(args.sweep)
    if not args.metric:
        if args.out:
            check_writable(args.out, "--out")
        return runs_table(manifest, args.out)
    keys = [k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by else None
    groups, excluded, sources = collect(manifest, args.metric, keys, args.eval_name)
    if args.baseline is not None and args.baseline not in groups:
        raise ValueError(f"--baseline '{args.baseline}' is not a group of this sweep; groups: {list(groups)}")
    if not any(groups.values()):
        reasons = "; ".join(f"{n}: {r}" for n, _, r in excluded[:3])
        raise ValueError(f"no finished run of sweep {manifest.get('sweep')} has metric '{args.metric}' ({reasons})")
    higher = args.mode == "max" or (args.mode == "auto" and not lower_is_better(args.metric))
    rows = stats_rows(groups, args.baseline, higher, args.alpha)
    prefix = Path(args.out) if args.out else Path(manifest["dir"]) / f"report_{re.sub(r'[^A-Za-z0-9.]+', '_', args.metric)}"
    check_writable(prefix.with_suffix(".md"), "--out")
    command = "python -m toolkit.report " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith(
        "report.py") else f"python -m toolkit.report --sweep {args.sweep} --metric {args.metric}" + (
        f" --group-by {args.group_by}" if args.group_by else "") + (f" --baseline {args.baseline}" if args.baseline else "")
    text = stats_markdown(rows, args.metric, args.baseline, higher, excluded, command, sources)
    bare = re.sub(r"^val(_ema)?/", "", args.metric)
    tags = [args.curve] if args.curve else [args.metric, f"val/{bare}", f"val_ema/{bare}"]
    png = curves_png(manifest, groups, keys, tags, f"{manifest.get('sweep')}: {args.metric}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_text(prefix.with_suffix(".md"), text + "\n")
    write_text(prefix.with_suffix(".csv"), stats_csv(rows))
    outputs = [prefix.with_suffix(".md"), prefix.with_suffix(".csv")]
    if png:
        write_bytes(prefix.with_suffix(".png"), png)
        outputs.append(prefix.with_suffix(".png"))
    print(text)
    print(f"\nwrote {', '.join(map(str, outputs))}" + ("" if png else f" (no curves: no run has {tags} in RUN/tb)"))
    return 0
