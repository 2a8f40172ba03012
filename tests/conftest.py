"""Shared fixtures: a small synthetic nuScenes dataroot and its shards (built once per session with
the real generator, devkit and webdataset), the real one-sample dataroot, and helpers to run the CLIs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real nuScenes keyframe (evaluation and geometry checks only); override with TOOLKIT_NUSCENES_REAL.
REAL_DATAROOT = Path(os.environ.get("TOOLKIT_NUSCENES_REAL", REPO.parent / "shared" / "data" / "nuscenes-real-1sample"))
REAL_PCD = "samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"


@pytest.fixture(scope="session")
def real_dataroot() -> Path:
    """The real one-keyframe nuScenes dataroot; the test is skipped (not failed) when it is absent."""
    if not (REAL_DATAROOT / "v1.0-mini").is_dir():
        pytest.skip(f"real nuScenes sample not found at {REAL_DATAROOT} (no v1.0-mini/ there); "
                    "set TOOLKIT_NUSCENES_REAL to a nuScenes dataroot to run this test")
    return REAL_DATAROOT


@pytest.fixture(scope="session")
def synthetic_dataroot(tmp_path_factory) -> Path:
    from shards.synthetic.nuscenes_dataroot import generate_dataroot

    return generate_dataroot(tmp_path_factory.mktemp("synth") / "dataroot", scenes=3, samples_per_scene=4, seed=7,
                             workers=1, progress=False, cameras=False)  # LiDAR tests: no camera renders


@pytest.fixture(scope="session")
def lidar_shards(synthetic_dataroot, tmp_path_factory) -> dict:
    """Train/val range-map shards of the synthetic dataroot: 2 train scenes (8 scans, 3 per shard), 1 val."""
    from shards.nuscenes_lidar import build_nuscenes_lidar_shards

    out = tmp_path_factory.mktemp("shards")
    info = build_nuscenes_lidar_shards(str(synthetic_dataroot), "v1.0-mini", str(out), val_fraction=0.34, seed=0,
                                       maxcount=3, progress=False)
    return {"dir": out, "info": info, "train": info["splits"]["train"]["pattern"],
            "val": info["splits"]["val"]["pattern"]}


@pytest.fixture(scope="session")
def trained_run(lidar_shards, tmp_path_factory):
    """One 6-step tiny run (checkpoints at 3 and 6), shared by the tests that only read its outputs."""
    from toolkit.config import load_config
    from toolkit.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("run") / "tiny"
    summary = Trainer(load_config(REPO / "configs" / "lidar_tokenizer.yaml", tiny_overrides(lidar_shards, run))).fit()
    return run, summary


def tiny_overrides(shards: dict, run_dir: Path, **extra) -> list[str]:
    """Overrides that make configs/lidar_tokenizer.yaml a seconds-long CPU run on the test shards."""
    values = {
        "data.train": shards["train"], "data.val": shards["val"], "data.batch_size": 4, "data.num_workers": 0,
        "data.shuffle_buffer": 8, "task.crop_width": 64, "task.channels": 8, "run.dir": str(run_dir),
        "train.max_steps": 6, "log.every": 2, "log.image_every": 3, "checkpoint.every": 3, "eval.every": 3,
        "eval.max_batches": 1, "optim.warmup_steps": 2, "log.progress": False, "ema.decay": 0.9,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def run_cli(args: list[str], timeout: float = 600, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``python <args>`` (or a program if args[0] is not -m) and capture its output.

    The command runs in its own process group, killed as a whole on timeout (torchrun's workers too).
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, *args] if args[0] == "-m" else args
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(map(str, cmd[:6]))} ... timed out after {timeout} s\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_finished(run: Path) -> bool:
    """Whether the run folder's ``summary.json`` says the run finished."""
    path = run / "summary.json"
    return path.exists() and json.loads(path.read_text()).get("status") == "finished"


def submitit_logs(run: Path) -> str:
    """All submitit job logs (stdout and stderr of every task and requeue) under ``RUN/submitit``."""
    return "\n".join(p.read_text(errors="replace") for p in sorted((run / "submitit").rglob("*_log.*")))


def assert_same_final_weights(run: Path, ref: Path, step: int) -> None:
    """``iter_{step}.pt`` model weights of ``run`` equal those of ``ref`` bit for bit."""
    import torch

    final = torch.load(run / "checkpoints" / f"iter_{step:09d}.pt", weights_only=True)["model"]
    reference = torch.load(ref / "checkpoints" / f"iter_{step:09d}.pt", weights_only=True)["model"]
    assert final.keys() == reference.keys()
    for key in reference:
        assert torch.equal(final[key], reference[key]), key


SLURM_SCRIPT = REPO / "slurm" / "local-cluster.sh"


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """The real single-node SLURM cluster (slurm/local-cluster.sh; apt-get installs it when missing; root needed),
    started once per session for every module that uses it, stopped at the end: the env to run sbatch/launch in."""
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "TOOLKIT_SLURM_STATE": str(state)}
    subprocess.run(["bash", str(SLURM_SCRIPT), "stop"], env={**os.environ}, capture_output=True, timeout=120)
    res = subprocess.run(["bash", str(SLURM_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        pytest.fail(f"local SLURM cluster did not start:\n{res.stderr[-3000:]}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run(["bash", str(SLURM_SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def slurm2(tmp_path_factory):
    """A two-node SLURM cluster (n1, n2 in network namespaces) from ``local-cluster.sh start --nodes 2``, started
    for each module that uses it (test_multinode, test_dist_faults) and stopped at that module's end. Not once
    per session: left running beside :func:`slurm_env`'s cluster through tests/test_launch.py, that cluster's
    requeued time-limit job never started again (CI, 2026-12-04: the test waited its 3000 s).

    It can run beside :func:`slurm_env`'s single-node cluster: its own state folder (so its own namespaces,
    named from that folder, and its own slurm.conf), its daemons inside the namespaces (they take no port of
    the machine's own namespace), ``stop`` kills only slurmstepd processes of its namespaces; munged is shared.
    Job ids of the two clusters overlap (both count from 1): find a job's processes by SLURM_CLUSTER_NAME too.
    Commands that talk to slurmctld run through ``local-cluster.sh exec`` (in n1's namespace)."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import netns

    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"two-node SLURM cluster: {reason}")
    state = tmp_path_factory.mktemp("slurm2-state")
    env = {**os.environ, "TOOLKIT_SLURM_STATE": str(state), "SLURM_CONF": str(state / "slurm.conf"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    names = []
    try:
        res = subprocess.run(["bash", str(SLURM_SCRIPT), "start", "--nodes", "2"], env=env, capture_output=True,
                             text=True, timeout=600)
        if (state / "netns").exists():
            names = (state / "netns").read_text().split()
        if res.returncode != 0:
            pytest.fail(f"two-node SLURM cluster did not start:\n{res.stderr[-3000:]}")
        assert len(names) == 2 and all(netns.exists(n) for n in names), names
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert not any(netns.exists(n) for n in names), "local-cluster.sh stop left namespaces behind"
