"""Turn finished runs into a Markdown results table (seed 003's columns), or a sweep into statistics.

``python -m toolkit.report runs/cilp_* [--out reports/cilp.md]``
``python -m toolkit.report --sweep MANIFEST [--out reports/cilp.md]``: the same table of a sweep's finished runs.
``python -m toolkit.report --sweep MANIFEST --metric KEY [--group-by KEYS] [--baseline GROUP]``: per group
(a sweep point, or the values of ``--group-by`` override keys) mean +- std over seeds, the 95 % t interval,
n, and against ``--baseline`` a paired t-test (and Wilcoxon) on the shared seeds with a verdict in words
(:mod:`toolkit.stats`); written as ``PREFIX.md`` and ``PREFIX.csv`` with ``PREFIX.png``, the metric's
training curves (mean over seeds, min-max band) from the runs' TensorBoard files. A run's value is its cached
``toolkit.evaluate --sweep`` result (``RUN/eval/*.json``: the mean over draws; ``--eval NAME`` picks the
file) or else its ``summary.json`` last evaluation. Failed and unfinished runs are listed, not counted.

Per run: experiment (the task's :meth:`~toolkit.tasks.base.Task.title` of its config), validation loss and accuracy (the last evaluation of the
model, ``summary.json``), trainable parameters, seconds per epoch (mean measured step time x steps per
epoch, an epoch being the training split of ``info.json`` beside the shards divided by the global batch)
and peak memory (CUDA allocator peak on GPUs, process max RSS on CPUs).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import yaml

from toolkit.files import write_text

def _task_class(cfg: dict):
    from toolkit.tasks import get_task_class
    from toolkit.tasks.base import Task

    try:
        return get_task_class(cfg["task"]["name"])
    except KeyError:
        return Task


def experiment_name(cfg: dict) -> str:
    """The run's name in the table, as its task titles it."""
    task = cfg["task"]
    cls = _task_class(cfg)
    return cls.title(task) if cls.name else str(task["name"])


def train_samples(cfg: dict) -> int | None:
    """Samples in the training split, from ``info.json`` beside the training shards."""
    first = sorted(glob.glob(cfg["data"]["train"].replace("{", "*").replace("}", "*")))
    if not first:
        return None
    info = Path(first[0]).parent / "info.json"
    if not info.exists():
        return None
    splits = json.loads(info.read_text()).get("splits", {})
    return splits.get("train", {}).get("samples")


def run_row(run: Path) -> dict:
    """The table row of one run folder.

    Raises:
        FileNotFoundError: if the run has no ``summary.json`` (not finished).
    """
    summary = json.loads((run / "summary.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ev = summary.get("last_eval", {})
    steps = [json.loads(line)["perf/step_time_s"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"perf/step_time_s"' in line]
    n = train_samples(cfg)
    per_epoch = None
    if n and steps:
        global_batch = cfg["data"]["batch_size"] * cfg["train"]["grad_accum"] * summary.get("world_size", 1)
        per_epoch = sum(steps) / len(steps) * n / global_batch
    return {"run": run.name, "experiment": experiment_name(cfg), "columns": _task_class(cfg).report_columns,
            "metrics": ev, "parameters": summary.get("trainable_parameters"), "s_per_epoch": per_epoch,
            "train_min": (summary.get("train_seconds") or 0) / 60 or None, "peak_mem_mb": summary.get("peak_mem_mb"),
            "device": summary.get("device"), "steps": summary.get("step")}


def markdown(rows: list[dict]) -> str:
    """The table; the metric columns are those of the first run's task (``Task.report_columns``)."""
    def fmt(v, spec):
        return "–" if v is None else format(v, spec)

    columns = rows[0]["columns"]
    lines = ["| Experiment | " + " | ".join(h for h, _, _ in columns) + " | Parameters (trainable) | s / epoch | "
             "Train time (min) | Peak mem (MB) |", "|---|" + "---|" * (len(columns) + 4)]
    for r in rows:
        metrics = " | ".join(fmt(r["metrics"].get(key), spec) for _, key, spec in columns)
        lines.append(f"| {r['experiment']} | {metrics} | {fmt(r['parameters'], ',')} | {fmt(r['s_per_epoch'], '.1f')} | "
                     f"{fmt(r['train_min'], '.1f')} | {fmt(r['peak_mem_mb'], '.0f')} |")
    devices = sorted({str(r["device"]) for r in rows})
    lines.append(f"\nDevice: {', '.join(devices)}; peak memory is the process's max RSS on CPU, the CUDA "
                 "allocator's peak on GPU.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from toolkit.cli import Parser, check_writable, error_line

    p = Parser(prog="python -m toolkit.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run folders (in table order)")
    p.add_argument("--out", help="also write the table to this Markdown file (with --metric: the prefix of "
                                 ".md/.csv/.png; default SWEEP_DIR/report_<metric>)")
    p.add_argument("--sweep", help="a sweep's manifest.json (or its folder), from python -m launch --sweep")
    p.add_argument("--metric", help="--sweep: the metric to compare (e.g. val/R@1, or an evaluate key such as loss)")
    p.add_argument("--group-by", help="--sweep: comma-separated override keys whose values form the groups "
                                      "(default: the sweep's points)")
    p.add_argument("--baseline", help="--sweep: the group the others are compared with (paired, on shared seeds)")
    p.add_argument("--mode", choices=["max", "min", "auto"], default="auto",
                   help="whether higher (max) or lower (min) values are better; auto: min for losses and errors")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdict (default 0.05)")
    p.add_argument("--eval", dest="eval_name", help="--sweep: the RUN/eval/ file to read (default: the newest)")
    p.add_argument("--curve", help="--sweep: TensorBoard tag of the curves (default: the metric's val/ tag)")
    args = p.parse_args(argv)
    if bool(args.runs) == bool(args.sweep):
        p.error("give run folders or --sweep MANIFEST")
    if args.sweep:
        from toolkit.report_sweep import sweep_report

        try:
            return sweep_report(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.metric or args.group_by or args.baseline:
        p.error("--metric, --group-by and --baseline need --sweep")
    rows = []
    try:
        if args.out:
            check_writable(args.out, "--out")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run in args.runs:
        if not Path(run).is_dir():
            print(f"error: run folder '{run}' does not exist or is not a folder", file=sys.stderr)
            return 2
        try:
            rows.append(run_row(Path(run)))
        except FileNotFoundError as exc:
            print(f"error: {run}: not a finished run ({exc.filename} missing)", file=sys.stderr)
            return 2
        except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
            print(f"error: {run}: unreadable summary.json, config.yaml or metrics.jsonl "
                  f"({type(exc).__name__}: {error_line(exc)[:160]})", file=sys.stderr)
            return 2
    table = markdown(rows)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
