"""Launch a training run on SLURM, locally, or in-process: ``python -m launch --config CFG --cluster ...``.

Examples::

    # 2 nodes x 4 GPUs on SLURM, resources from slurm/example-a100.yaml, one task per GPU
    python -m launch --config configs/lidar_tokenizer_gpu.yaml --cluster slurm --profile example-a100 --nodes 2
    # print the sbatch script, submit nothing
    python -m launch --config configs/lidar_tokenizer.yaml --cluster slurm --tasks-per-node 2 --dry-run
    # 2 CPU ranks as local subprocesses (gloo), wait for the result
    python -m launch --config configs/lidar_tokenizer.yaml --cluster local --tasks-per-node 2 --wait
    # in this process (breakpoints work); on a Mac this runs on MPS
    python -m launch --config configs/lidar_tokenizer.yaml --cluster debug train.max_steps=20
    # a sweep (grid/list of overrides x seeds; launch/sweep.py, docs/experiments.md): 2 runs at a time here
    python -m launch --sweep sweeps/token_fusion_ablation.yaml --parallel 2 [--dry-run]
    # the same as one SLURM job array, 4 tasks at a time
    python -m launch --sweep sweeps/token_fusion_ablation.yaml --cluster slurm --parallel 4

The run folder comes from the config (``run.dir`` or ``run.root/run.name``), never from a timestamp, so a
requeued or re-launched job finds its checkpoints and resumes. submitit's logs go to ``RUN/submitit/``.
Time limits and preemption: the job writes a checkpoint when SLURM signals it and requeues itself (at most
``--max-requeues`` times after time-outs); see ``launch/job.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from toolkit.cli import Parser, float_at_least, int_at_least

    p = Parser(prog="python -m launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="run config YAML (or --sweep)")
    p.add_argument("--sweep", help="sweep file YAML: a grid/list of overrides x seeds, one run each (launch/sweep.py)")
    p.add_argument("--parallel", "--array-parallelism", dest="parallel", type=int_at_least(1),
                   help="--sweep: runs at once (local: OMP_NUM_THREADS is split between them; slurm: array parallelism)")
    p.add_argument("--cluster", choices=["slurm", "local", "debug"],
                   help="slurm: sbatch via submitit; local: subprocesses on this machine; debug: in this process "
                        "(required with --config; --sweep: local by default)")
    p.add_argument("--profile", help="cluster profile: slurm/<NAME>.yaml or a path")
    p.add_argument("--nodes", type=int_at_least(1), help="nodes (slurm)")
    p.add_argument("--gpus-per-node", type=int_at_least(0), help="GPUs per node; one task per GPU")
    p.add_argument("--tasks-per-node", type=int_at_least(1), help="tasks (ranks) per node when there are no GPUs")
    p.add_argument("--cpus-per-task", type=int_at_least(1), help="CPUs per task")
    p.add_argument("--mem", type=float_at_least(0, strict=True), help="memory per node in GB")
    p.add_argument("--time", type=int_at_least(1), help="time limit in minutes")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--qos", help="SLURM quality of service")
    p.add_argument("--constraint", help="SLURM node constraint")
    p.add_argument("--signal-delay", type=int_at_least(0), help="seconds before the time limit at which the job is signalled")
    p.add_argument("--max-requeues", type=int_at_least(0), help="requeues allowed after time-outs (preemptions are not counted)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted (the sbatch script) and exit")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its summary")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def resources(args, profile):
    """Profile values overridden by the command-line flags that were given."""
    flags = {"nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "tasks_per_node": args.tasks_per_node,
             "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem, "time_min": args.time,
             "partition": args.partition, "account": args.account, "qos": args.qos,
             "constraint": args.constraint, "signal_delay_s": args.signal_delay, "max_requeues": args.max_requeues}
    res = replace(profile, **{k: v for k, v in flags.items() if v is not None})
    if res.gpus_per_node:
        res.tasks_per_node = res.gpus_per_node  # one task per GPU
    res.tasks_per_node = max(1, res.tasks_per_node)
    check_resources(res)
    return res


def check_resources(res) -> None:
    """Resources a job can be given (profile values included, flags named as on the command line).

    Raises:
        ValueError: naming the flag (and profile key) and what was expected.
    """
    at_least = {"nodes": ("--nodes", 1), "gpus_per_node": ("--gpus-per-node", 0), "cpus_per_task": ("--cpus-per-task", 1),
                "time_min": ("--time", 1), "signal_delay_s": ("--signal-delay", 0), "max_requeues": ("--max-requeues", 0),
                "mem_gb": ("--mem", 0)}
    for key, (flag, low) in at_least.items():
        if getattr(res, key) < low:
            raise ValueError(f"{flag} (profile key '{key}') must be >= {low}, got {getattr(res, key)}")
    if res.signal_delay_s >= res.time_min * 60:
        raise ValueError(f"--signal-delay ({res.signal_delay_s} s) must be shorter than the time limit --time "
                         f"({res.time_min} min = {res.time_min * 60} s): the job would be signalled before it starts")


def make_executor(cluster: str, folder: Path, res, name: str):
    """A configured ``submitit.AutoExecutor``.

    Raises:
        ValueError: for resources the cluster kind cannot give (e.g. several nodes locally), or
            ``--cluster slurm`` where SLURM's ``srun`` is not on PATH.
    """
    import submitit

    if cluster != "slurm" and res.nodes > 1:
        raise ValueError(f"--cluster {cluster} runs on one node; got --nodes {res.nodes}")
    if cluster == "debug" and res.tasks_per_node > 1:
        raise ValueError("--cluster debug runs one process; use --cluster local for several tasks")
    try:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster,
                                         slurm_max_num_timeout=res.max_requeues)
    except RuntimeError as exc:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise ValueError(f"--cluster {cluster}: {exc} (SLURM's srun is not on PATH; run on a SLURM login "
                         "node, start slurm/local-cluster.sh, or use --cluster local)") from None
    params = {"name": name, "timeout_min": res.time_min, "tasks_per_node": res.tasks_per_node,
              "nodes": res.nodes, "cpus_per_task": res.cpus_per_task}
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if cluster == "slurm":
        if res.mem_gb:
            params["mem_gb"] = res.mem_gb
        # the notice comes as SIGURG, not USR2: see launch/job.py
        # --kill-on-bad-exit: a task that fails (a watchdog exit 3 not requeued, an exception) ends the job
        # step, FAILED, instead of leaving the other tasks waiting (a frozen one until the time limit)
        params.update({"slurm_signal_delay_s": res.signal_delay_s, "slurm_setup": list(res.setup),
                       "slurm_srun_args": ["--kill-on-bad-exit=1"],
                       "slurm_additional_parameters": {"requeue": True, "signal": f"URG@{res.signal_delay_s}",
                                                       **res.additional}})
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(res, key):
                params[f"slurm_{key}"] = getattr(res, key)
    executor.update_parameters(**params)
    return executor


def dry_run_text(executor, cluster: str, res, run_dir: Path, cfg_dict: dict) -> str:
    lines = [f"# run folder: {run_dir}", f"# cluster: {cluster}, {res.nodes} node(s) x {res.tasks_per_node} task(s)"]
    if cluster == "slurm":
        inner = executor._executor  # submitit's SlurmExecutor: the script it would pass to sbatch
        lines.append(inner._make_submission_file_text(inner._submitit_command_str, "DRYRUN"))
    lines.append("# config:")
    lines.append(json.dumps(cfg_dict, indent=1))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if bool(args.config) == bool(args.sweep):
        parser.error("give exactly one of --config or --sweep")
    if args.sweep:
        from launch.sweep import main as sweep_main

        return sweep_main(args)
    if not args.cluster:
        parser.error("--cluster is required with --config (slurm, local or debug)")
    if args.parallel:
        parser.error("--parallel is a --sweep option")
    from launch.job import TrainJob
    from launch.profiles import ProfileError, load_profile
    from toolkit.config import ConfigError, load_config, run_dir, to_dict

    try:
        cfg = load_config(args.config, args.overrides)
        res = resources(args, load_profile(args.profile))
    except (ConfigError, ProfileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = run_dir(cfg).resolve()
    cfg.run.dir = str(folder)
    cfg_dict = to_dict(cfg)
    try:
        executor = make_executor(args.cluster, folder / "submitit", res, cfg.run.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dry_run_text(executor, args.cluster, res, folder, cfg_dict))
        return 0

    job = executor.submit(TrainJob(cfg_dict, res.time_min, res.signal_delay_s, res.max_requeues))
    print(f"submitted job {job.job_id} ({args.cluster}: {res.nodes} node(s) x {res.tasks_per_node} task(s))")
    print(f"run folder: {folder}")
    print(f"logs: {folder / 'submitit' / str(job.job_id)}")
    if args.cluster == "debug" or args.wait:
        try:
            results = job.results()
        except Exception as exc:  # the job's own traceback is in its log
            print(f"job {job.job_id} failed: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(results[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
