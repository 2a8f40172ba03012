"""Sweeps: a grid and/or a list of config overrides x seeds, one run each, locally or as one SLURM job array.

``python -m launch --sweep FILE.yaml [--cluster local|slurm] [--parallel N] [--dry-run]``

A sweep file (YAML; every key but ``config`` and ``seeds`` optional)::

    config: configs/fusion_tokens/tiny.yaml   # base run config (relative to the current folder or to this file)
    name: token_fusion_ablation               # sweep name (default: the file's stem)
    root: runs/sweeps                         # runs go to ROOT/NAME/<run name> (default root: runs)
    overrides: [train.max_steps=200]          # applied to every run (a list of key=value or a mapping)
    grid:                                     # cartesian product of these values...
      task.cross_attention: [true, false]
    points:                                   # ...and/or these override sets, each one point
      - {name: late}                          # ``name``: the point's name (default: from its overrides)
      - {task.mode: concat}
    seeds: [0, 1, 2]                          # every point runs once per seed (sets run.seed)

Every point x seed is one run, named from its overrides: ``cross_attention-false_s1`` (the last part of
each key, ``-``, the value; ``base`` for a point without overrides), in ``ROOT/NAME/<run name>`` (``run.dir``)
with ``run.seed`` set. The points are the ``points`` entries followed by the grid's product. Each run's
config is resolved when the sweep is expanded, so an unknown key or a bad value fails before anything runs.

The manifest ``ROOT/NAME/manifest.json`` (written atomically) lists the runs with their overrides, folders
and states (``pending``, ``running``, ``finished``, ``failed`` with the exit code and log, ``submitted``
with the SLURM job id); :mod:`toolkit.evaluate` and :mod:`toolkit.report` read it (``--sweep MANIFEST``).

Running the same sweep again skips the runs whose ``summary.json`` says finished at the configured
``train.max_steps`` and starts the others, which resume from their newest checkpoint (the engine does that
from the run folder), so nothing is run twice and nothing is lost. Locally (:func:`run_local`) at most
``--parallel`` runs train at once, each a ``python -m toolkit.train`` subprocess with ``OMP_NUM_THREADS``
set to this process's thread budget (``OMP_NUM_THREADS`` or the CPU count) divided by ``--parallel``; a run
that fails is recorded as failed and the others go on. Runs start seed by seed (every point of seed 0 first),
so the pairs a comparison needs finish together. On SLURM (:func:`submit_slurm`) the unfinished runs
are one job array (submitit's ``executor.batch()``), at most ``--parallel`` tasks at a time
(``--array=...%N``), each task a :class:`launch.job.TrainJob` that checkpoints and requeues on signals.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from toolkit.files import write_text

#: keys a sweep file may have
SWEEP_KEYS = ("config", "name", "root", "overrides", "grid", "points", "seeds")
MANIFEST = "manifest.json"


class SweepError(ValueError):
    """A sweep file that cannot be expanded: the message (one line) names the file and the key."""


@dataclass
class SweepRun:
    """One point x seed.

    Attributes:
        name: run name (``<point>_s<seed>``); also the run folder's name.
        point: the point's name (the runs of one point differ only by seed).
        seed: ``run.seed``.
        overrides: the point's own overrides (dotted key -> value), without the common ones.
        args: every ``key=value`` given to ``toolkit.train`` (common, point, ``run.seed``, ``run.dir``, ``run.name``).
        dir: absolute run folder.
        max_steps: the resolved ``train.max_steps`` (a run is finished when its summary says so at this step).
    """

    name: str
    point: str
    seed: int
    overrides: dict
    args: list[str]
    dir: str
    max_steps: int
    status: str = "pending"
    extra: dict = field(default_factory=dict)


@dataclass
class Sweep:
    """An expanded sweep file: ``runs`` in file order (points, then seeds)."""

    file: str
    name: str
    config: str
    dir: Path
    common: list[str]
    runs: list[SweepRun]

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST


def format_value(value) -> str:
    """A YAML value as the text of a ``key=value`` override (``true``, ``0.001``, ``[1, 2]``, ``concat``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def name_part(value) -> str:
    """A value as part of a run name: letters, digits, ``.`` and ``-`` only."""
    text = format_value(value)
    text = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9.\-]+", "-", text)).strip("-")
    return text or "empty"


def point_name(overrides: dict) -> str:
    """A readable, stable name for a set of overrides: ``mode-add_downsample-stride`` (``base`` if none).

    The last component of each dotted key is used unless two keys share it (then the whole key, dots
    kept); keys in the order given.
    """
    if not overrides:
        return "base"
    last = [k.split(".")[-1] for k in overrides]
    parts = []
    for key, short in zip(overrides, last):
        label = short if last.count(short) == 1 else key
        parts.append(f"{label}-{name_part(overrides[key])}")
    return "_".join(parts)


def _overrides_list(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={format_value(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise SweepError(f"{where}: expected a list of key=value strings or a mapping of dotted keys, got {value!r}")


def _check_key(key, where: str) -> str:
    if not isinstance(key, str) or "." not in key or key.startswith("run."):
        hint = " (run.* is set by the sweep)" if isinstance(key, str) and key.startswith("run.") else ""
        raise SweepError(f"{where}: '{key}' is not a dotted config key such as task.mode{hint}")
    return key


def _points(data: dict, file: str) -> list[tuple[str | None, dict]]:
    """(name or None, overrides) of every point: the ``points`` list, then the grid's product."""
    points: list[tuple[str | None, dict]] = []
    raw_points = data.get("points")
    if raw_points is not None:
        if not isinstance(raw_points, list) or not raw_points:
            raise SweepError(f"{file}: 'points' must be a non-empty list of override mappings, got {raw_points!r}")
        for i, entry in enumerate(raw_points):
            if entry is None:
                entry = {}
            if not isinstance(entry, dict):
                raise SweepError(f"{file}: points[{i}] must be a mapping of dotted keys to values, got {entry!r}")
            entry = dict(entry)
            name = entry.pop("name", None)
            if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9.\-_]+", name)):
                raise SweepError(f"{file}: points[{i}].name must be letters, digits, '.', '-', '_', got {name!r}")
            for key in entry:
                _check_key(key, f"{file}: points[{i}]")
            points.append((name, entry))
    grid = data.get("grid")
    if "grid" in data:
        if not isinstance(grid, dict) or not grid:
            raise SweepError(f"{file}: 'grid' is empty; expected a mapping of dotted keys to non-empty value lists")
        for key, values in grid.items():
            _check_key(key, f"{file}: grid")
            if not isinstance(values, list) or not values:
                raise SweepError(f"{file}: grid.{key} must be a non-empty list of values, got {values!r}")
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            points.append((None, dict(zip(keys, combo))))
    if not points:
        raise SweepError(f"{file}: no runs: give 'grid' (a mapping of keys to value lists) and/or 'points'")
    return points


def _seeds(data: dict, file: str) -> list[int]:
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"{file}: 'seeds' must be a non-empty list of integers, e.g. [0, 1, 2], got {seeds!r}")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise SweepError(f"{file}: 'seeds' lists {dup} more than once; each seed is one run per point")
    return seeds


def _base_config(value, file: Path) -> str:
    if not isinstance(value, str) or not value:
        raise SweepError(f"{file}: 'config' (the base run config YAML) is required, got {value!r}")
    for candidate in (Path(value), file.parent / value):
        if candidate.is_file():
            return str(candidate)
    raise SweepError(f"{file}: config '{value}' does not exist (looked in the current folder and beside the sweep file)")


def load_sweep(path: str | os.PathLike, resolve: bool = True) -> Sweep:
    """Read and expand a sweep file.

    Args:
        path: the sweep YAML.
        resolve: load every run's config (:func:`toolkit.config.load_config`) to check its keys and values
            and read ``train.max_steps``.

    Raises:
        SweepError: one line naming the file and key: missing file, YAML error, unknown key, empty grid,
            bad or duplicate seeds, missing base config, two runs with the same name, or a config error of
            a run (its name and the config's message).
    """
    file = Path(path)
    if not file.is_file():
        raise SweepError(f"sweep file '{file}' does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        from toolkit.config import _one_line

        raise SweepError(f"{file}: cannot parse: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{file}: expected a mapping with keys {list(SWEEP_KEYS)}")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{file}: unknown key(s) {unknown}; a sweep file has {list(SWEEP_KEYS)}")
    config = _base_config(data.get("config"), file)
    name = data.get("name") or file.stem
    root = data.get("root") or "runs"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9.\-_]+", name):
        raise SweepError(f"{file}: 'name' must be letters, digits, '.', '-', '_', got {name!r}")
    common = _overrides_list(data.get("overrides"), f"{file}: overrides")
    for item in common:
        _check_key(item.split("=", 1)[0], f"{file}: overrides")
    points = _points(data, file.as_posix())
    seeds = _seeds(data, file.as_posix())
    sweep_dir = (Path(root) / name).resolve()
    runs: list[SweepRun] = []
    seen: dict[str, int] = {}
    for i, (pname, overrides) in enumerate(points):
        pname = pname or point_name(overrides)
        if pname in seen:
            raise SweepError(f"{file}: points {seen[pname]} and {i} are both named '{pname}' (the same overrides?); "
                             "give one a 'name'")
        seen[pname] = i
        for seed in seeds:
            rname = f"{pname}_s{seed}"
            rdir = sweep_dir / rname
            args = common + [f"{k}={format_value(v)}" for k, v in overrides.items()] + [
                f"run.seed={seed}", f"run.dir={rdir}", f"run.name={name}_{rname}"]
            runs.append(SweepRun(rname, pname, seed, dict(overrides), args, str(rdir), 0))
    if resolve:
        from toolkit.config import ConfigError, load_config

        for run in runs:
            try:
                run.max_steps = load_config(config, run.args).train.max_steps
            except ConfigError as exc:
                raise SweepError(f"{file}: run {run.name}: {exc}") from None
    return Sweep(file.as_posix(), name, config, sweep_dir, common, runs)


def run_state(run: SweepRun) -> str:
    """``finished`` if the run folder's ``summary.json`` says finished at ``run.max_steps``; ``partial`` if
    the folder has checkpoints; else ``new``."""
    summary = Path(run.dir) / "summary.json"
    try:
        s = json.loads(summary.read_text())
        if s.get("status") == "finished" and (not run.max_steps or s.get("step") == run.max_steps):
            return "finished"
    except (OSError, ValueError):
        pass
    ckpts = Path(run.dir) / "checkpoints"
    return "partial" if ckpts.is_dir() and any(ckpts.glob("iter_*.pt")) else "new"


def write_manifest(sweep: Sweep, extra: dict | None = None) -> Path:
    """Write ``SWEEP_DIR/manifest.json`` atomically; returns its path."""
    sweep.dir.mkdir(parents=True, exist_ok=True)
    doc = {"sweep": sweep.name, "file": sweep.file, "config": sweep.config, "dir": str(sweep.dir),
           "overrides": sweep.common, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {}),
           "runs": [{"name": r.name, "point": r.point, "seed": r.seed, "overrides": r.overrides, "dir": r.dir,
                     "status": r.status, "max_steps": r.max_steps, "args": r.args, **r.extra} for r in sweep.runs]}
    return write_text(sweep.manifest_path, json.dumps(doc, indent=1) + "\n")


def read_manifest(path: str | os.PathLike) -> dict:
    """A manifest written by :func:`write_manifest` (a sweep folder is accepted for its manifest).

    Raises:
        ValueError: the file is missing or not a sweep manifest (naming it).
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise ValueError(f"sweep manifest '{p}' cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"sweep manifest '{p}' is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise ValueError(f"'{p}' is not a sweep manifest (expected a JSON object with 'runs'; see launch/sweep.py)")
    return doc


def write_run_info(sweep: Sweep, run: SweepRun) -> None:
    """``RUN/sweep.json``: the sweep, point, seed and overrides of a run (its HParams in TensorBoard,
    :mod:`toolkit.engine.logger`), written before the run starts."""
    Path(run.dir).mkdir(parents=True, exist_ok=True)
    write_text(Path(run.dir) / "sweep.json", json.dumps({"sweep": sweep.name, "point": run.point, "seed": run.seed,
                                                         "overrides": run.overrides}, indent=1) + "\n")


def dry_run_text(sweep: Sweep) -> str:
    """The runs and their overrides, one line each, plus where they go."""
    lines = [f"# sweep {sweep.name}: {len(sweep.runs)} runs of {sweep.config} in {sweep.dir}",
             f"# common overrides: {' '.join(sweep.common) or '(none)'}"]
    for r in sweep.runs:
        own = " ".join(f"{k}={format_value(v)}" for k, v in r.overrides.items()) or "(base)"
        lines.append(f"{r.name:40s} [{run_state(r)}] run.seed={r.seed} {own}")
    return "\n".join(lines)


def seed_major(runs: list[SweepRun]) -> list[SweepRun]:
    """The runs in the order they are started: every point of the first seed, then of the next, so the runs
    that a paired comparison needs finish together and a partly done sweep can already be reported."""
    order = {seed: i for i, seed in enumerate(dict.fromkeys(r.seed for r in runs))}
    return sorted(runs, key=lambda r: order[r.seed])


def thread_budget() -> int:
    """Threads this sweep may use: ``OMP_NUM_THREADS`` if set, else the CPUs this process may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_local(sweep: Sweep, parallel: int = 1, python: str = sys.executable, poll_s: float = 0.2) -> dict:
    """Train the sweep's unfinished runs here, at most ``parallel`` at once; returns counts by final status.

    Each run is ``python -m toolkit.train -c CONFIG ARGS`` with ``OMP_NUM_THREADS`` = :func:`thread_budget` //
    ``parallel`` (at least 1), its output in ``SWEEP_DIR/logs/<run>.log``. The manifest is rewritten at every
    start and end. Ctrl-C stops the runs (each checkpoints; running the sweep again resumes them).
    """
    threads = max(1, thread_budget() // parallel)
    logs = sweep.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    todo = []
    for r in sweep.runs:
        state = run_state(r)
        r.status = "finished" if state == "finished" else "pending"
        if state == "finished":
            r.extra = {"skipped": True}
            print(f"[sweep] {r.name}: finished already, skipped", file=sys.stderr, flush=True)
        else:
            r.extra = {"resumed": state == "partial"}
            todo.append(r)
    todo = seed_major(todo)
    write_manifest(sweep, {"cluster": "local", "parallel": parallel, "threads_per_run": threads})
    running: dict[str, tuple[SweepRun, subprocess.Popen, float]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}

    def start(r: SweepRun) -> None:
        write_run_info(sweep, r)
        log = logs / f"{r.name}.log"
        with open(log, "a") as f:
            f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {python} -m toolkit.train -c {sweep.config} "
                    f"{' '.join(r.args)}\n")
            f.flush()
            proc = subprocess.Popen([python, "-m", "toolkit.train", "-c", sweep.config, *r.args], stdout=f,
                                    stderr=subprocess.STDOUT, env=env)
        running[r.name] = (r, proc, time.time())
        r.status = "running"
        r.extra.update(log=str(log))
        print(f"[sweep] {r.name}: started{' (resuming)' if r.extra.get('resumed') else ''} "
              f"({threads} thread(s)), log {log}", file=sys.stderr, flush=True)

    try:
        while todo or running:
            while todo and len(running) < parallel:
                start(todo.pop(0))
                write_manifest(sweep, {"cluster": "local", "parallel": parallel, "threads_per_run": threads})
            time.sleep(poll_s)
            for name, (r, proc, t0) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[name]
                state = run_state(r)
                r.status = "finished" if code == 0 and state == "finished" else ("stopped" if code == 0 else "failed")
                r.extra.update(returncode=code, seconds=round(time.time() - t0, 1))
                if r.status == "failed":
                    r.extra["error"] = _last_error_line(Path(r.extra["log"]))
                print(f"[sweep] {r.name}: {r.status} (exit {code}, {time.time() - t0:.0f} s)"
                      + (f": {r.extra['error']}" if r.status == "failed" else ""), file=sys.stderr, flush=True)
                write_manifest(sweep, {"cluster": "local", "parallel": parallel, "threads_per_run": threads})
    except KeyboardInterrupt:
        for r, proc, _ in running.values():
            proc.terminate()  # SIGTERM: the run checkpoints at its next sync point and exits
        for r, proc, _ in running.values():
            proc.wait()
            r.status = "stopped"
        write_manifest(sweep, {"cluster": "local", "parallel": parallel, "threads_per_run": threads})
        raise
    counts: dict[str, int] = {}
    for r in sweep.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def _last_error_line(log: Path) -> str:
    """The last ``error: ...`` (or last non-empty) line of a run's log, for the manifest."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:300]


def submit_slurm(sweep: Sweep, res, parallel: int) -> list:
    """Submit the unfinished runs as one SLURM job array (submitit ``executor.batch()``); returns the jobs.

    Each array task is a :class:`launch.job.TrainJob` of the run's resolved config with the resources ``res``
    (:func:`launch.__main__.resources`); ``parallel`` tasks at most run at once (``slurm_array_parallelism``).
    Submitit's logs go to ``SWEEP_DIR/submitit/``; the manifest records each run's job id.
    """
    from launch.__main__ import make_executor
    from launch.job import TrainJob
    from toolkit.config import load_config, to_dict

    todo = []
    for r in sweep.runs:
        if run_state(r) == "finished":
            r.status, r.extra = "finished", {"skipped": True}
        else:
            todo.append(r)
    todo = seed_major(todo)
    jobs = []
    if todo:
        executor = make_executor("slurm", sweep.dir / "submitit", res, sweep.name)
        executor.update_parameters(slurm_array_parallelism=parallel)
        with executor.batch():
            for r in todo:
                write_run_info(sweep, r)
                cfg = load_config(sweep.config, r.args)
                jobs.append(executor.submit(TrainJob(to_dict(cfg), res.time_min, res.signal_delay_s,
                                                     res.max_requeues)))
        for r, job in zip(todo, jobs):
            r.status, r.extra = "submitted", {"job_id": str(job.job_id)}
    write_manifest(sweep, {"cluster": "slurm", "parallel": parallel})
    return jobs


def main(args) -> int:
    """``python -m launch --sweep FILE`` (arguments parsed by :func:`launch.__main__.build_parser`)."""
    from launch.__main__ import resources
    from launch.profiles import ProfileError, load_profile

    cluster = args.cluster or "local"
    if cluster == "debug":
        print("error: --sweep runs with --cluster local or --cluster slurm, not debug", file=sys.stderr)
        return 2
    if args.overrides:
        print(f"error: --sweep takes its overrides from the sweep file, got {' '.join(args.overrides)} on the "
              "command line (put them under 'overrides:')", file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.sweep)
        res = resources(args, load_profile(args.profile)) if cluster == "slurm" else None
    except (SweepError, ProfileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dry_run_text(sweep))
        return 0
    parallel = args.parallel or 1
    if cluster == "slurm":
        try:
            jobs = submit_slurm(sweep, res, parallel)
        except ValueError as exc:  # make_executor: srun not on PATH
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"submitted {len(jobs)} array task(s) (at most {parallel} at once); "
              f"{len(sweep.runs) - len(jobs)} finished already; manifest {sweep.manifest_path}")
        if args.wait:
            failed = 0
            for job in jobs:
                try:
                    job.results()
                except Exception as exc:  # noqa: BLE001 - the task's traceback is in its log
                    failed += 1
                    print(f"job {job.job_id} failed: {str(exc).splitlines()[0] if str(exc) else exc}", file=sys.stderr)
            for r in sweep.runs:
                r.status = "finished" if run_state(r) == "finished" else "failed"
            write_manifest(sweep, {"cluster": "slurm", "parallel": parallel})
            return 1 if failed else 0
        return 0
    try:
        counts = run_local(sweep, parallel)
    except KeyboardInterrupt:
        print(f"[sweep] interrupted: the running runs checkpointed; run the same command to resume "
              f"(manifest {sweep.manifest_path})", file=sys.stderr)
        return 130
    print(f"sweep {sweep.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; manifest {sweep.manifest_path}")
    return 1 if counts.get("failed") else 0
