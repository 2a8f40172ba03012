"""python -m launch against a real single-node SLURM (munge, slurmctld, slurmd started here) and locally.

The cluster is started by the session fixture with slurm/local-cluster.sh (apt-get installs it when
missing; root needed) and stopped at the end.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_same_final_weights, run_cli, run_finished, submitit_logs, tiny_overrides

CONFIG = str(REPO / "configs" / "lidar_tokenizer.yaml")
SCRIPT = REPO / "slurm" / "local-cluster.sh"


def _launch(env, *args, timeout=120):
    res = run_cli(["-m", "launch", "--config", CONFIG, *args], env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _job_id(stdout: str) -> str:
    return next(line.split()[2] for line in stdout.splitlines() if line.startswith("submitted job"))


def _squeue_state(env, job_id):
    res = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=env, capture_output=True, text=True)
    return res.stdout.strip()


def _release_requeue_hold(env, job_id):
    """SLURM holds a requeued job for ~2 min (PENDING, reason BeginTime); start it now instead."""
    res = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], env=env, capture_output=True, text=True)
    if res.stdout.split() == ["PENDING", "BeginTime"]:
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, capture_output=True)


def _wait_for(predicate, timeout, what, env=None, job_id=None):
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return
        if env and job_id:
            _release_requeue_hold(env, job_id)
        time.sleep(2)
    detail = ""
    if env and job_id:
        detail = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{detail}")


def _overrides(shards, run, steps, **extra):
    values = {"train.max_steps": steps, "checkpoint.every": 5, "checkpoint.keep": 50, "eval.every": 0,
              "log.every": 5, "log.image_every": 10, "data.num_workers": 1, **extra}
    return tiny_overrides(shards, run, **values)


def test_dry_run_prints_the_sbatch_script_and_submits_nothing(tmp_path, slurm_env):
    run = tmp_path / "dry"
    res = _launch(slurm_env, "--cluster", "slurm", "--profile", "local", "--time", "7", "--dry-run",
                  f"run.dir={run}", "train.max_steps=5")
    out = res.stdout
    for line in ("#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=1", "#SBATCH --partition=debug",
                 "#SBATCH --time=7", "#SBATCH --signal=URG@60", "#SBATCH --requeue", "srun "):
        assert line in out, line
    assert f"# run folder: {run}" in out and '"max_steps": 5' in out
    assert not (run / "submitit").exists()


def test_profile_and_config_errors(tmp_path, slurm_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: debug\ngpus: 4\n")
    res = run_cli(["-m", "launch", "--config", CONFIG, "--cluster", "slurm", "--profile", str(bad), "--dry-run"])
    assert res.returncode == 2 and "unknown key(s) ['gpus']" in res.stderr
    res = run_cli(["-m", "launch", "--config", CONFIG, "--cluster", "slurm", "--profile", "nope", "--dry-run"])
    assert res.returncode == 2 and "profile 'nope' not found" in res.stderr
    res = run_cli(["-m", "launch", "--config", CONFIG, "--cluster", "local", "--nodes", "2", "--dry-run"])
    assert res.returncode == 2 and "runs on one node" in res.stderr


@pytest.mark.slow
def test_local_and_slurm_runs_complete_and_a_preempted_job_resumes_exactly(lidar_shards, tmp_path, slurm_env):
    steps = 40
    # 1. reference: --cluster local, 2 tasks, uninterrupted
    ref = tmp_path / "local"
    _launch(slurm_env, "--cluster", "local", "--tasks-per-node", "2", "--time", "20", "--wait",
            *_overrides(lidar_shards, ref, steps), timeout=600)
    assert run_finished(ref), submitit_logs(ref)
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == steps and summary["resumed_from"] is None

    # 2. the same run on SLURM (2 tasks, gloo), preempted with `scontrol requeue` half-way
    run = tmp_path / "slurm"
    res = _launch(slurm_env, "--cluster", "slurm", "--profile", "local", *_overrides(lidar_shards, run, steps))
    job = _job_id(res.stdout)
    _wait_for(lambda: (run / "checkpoints" / "iter_000000015.pt").exists(), 300, "a checkpoint at step 15",
              slurm_env, job)
    assert not (run / "checkpoints" / f"iter_{steps:09d}.pt").exists(), "finished before it could be preempted"
    subprocess.run(["scontrol", "requeue", job], env=slurm_env, check=True)
    _wait_for(lambda: run_finished(run), 600, "the requeued job to finish", slurm_env, job)

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == steps
    assert summary["resumed_from"] is not None, "the requeued job did not resume from a checkpoint"
    resumed_at = int(Path(summary["resumed_from"]).stem.split("_")[1])
    assert 15 <= resumed_at < steps
    logs = submitit_logs(run)
    assert "SIGTERM: checkpointing at the next sync point" in logs
    # checkpoints, JIT exports and TensorBoard logs are all in the run folder
    assert (run / "checkpoints" / f"iter_{steps:09d}_enc.jit").exists()
    assert (run / "checkpoints" / f"iter_{steps:09d}_ema.jit").exists()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # the interrupted-and-resumed run ends exactly where the uninterrupted one does
    assert_same_final_weights(run, ref, steps)


@pytest.mark.slow
def test_time_limit_checkpoints_and_requeues_through_submitit(lidar_shards, tmp_path, slurm_env):
    """A 2-minute limit with the notice 60 s before it, for ~2 minutes of training: the job cannot finish
    in one slot, so submitit's checkpoint path writes a checkpoint, requeues the job and the next run
    resumes, until the work is done."""
    steps = 4000  # ~2 min of training here at ~0.03 s/step: more than one 2-minute slot can hold
    run = tmp_path / "timeout"
    # a loaded machine trains 4-10x slower (0.12-0.38 s/step seen): enough requeues for that, so the test
    # checks the mechanism rather than the machine's speed
    res = _launch(slurm_env, "--cluster", "slurm", "--profile", "local", "--time", "2", "--signal-delay", "60",
                  "--max-requeues", "30", *_overrides(lidar_shards, run, steps, **{"checkpoint.every": 5000,
                                                                                   "log.every": 250}))
    job = _job_id(res.stdout)
    _wait_for(lambda: run_finished(run), 3000, "the job to finish across time-outs", slurm_env, job)
    logs = submitit_logs(run)
    assert "SIGURG (time-limit or preemption notice)" in logs
    assert "handing over to submitit to requeue" in logs
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == steps and summary["resumed_from"] is not None
    # submitit's own time-out accounting, bounded by --max-requeues 30
    assert "this job is timed-out" in logs and "(29 remaining timeouts)" in logs
    # checkpoint.every is larger than the run: every checkpoint but the last was written on the signal
    steps_saved = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("iter_*.pt"))
    assert len(steps_saved) >= 2 and steps_saved[-1] == steps and all(0 < s < steps for s in steps_saved[:-1])
