"""Two real nodes on one machine (issue 13): network namespaces joined by a veth pair.

1. torchrun c10d, 2 nodes x 1 process, one torchrun per namespace, gloo over the veth pair: the run ends
   with the same weights as the same config as 1 node x 2 processes (``--standalone``).
2. ``slurm/local-cluster.sh start --nodes 2``: slurmctld + slurmd n1 and slurmd n2, each in its own
   namespace; ``python -m launch --cluster slurm --nodes 2`` runs one rank per node; a job that gets
   ``scontrol requeue`` mid-run resumes and ends bit-identical to an uninterrupted 2-node job.

Skipped (with the reason) when not root or ``ip netns`` cannot be used; CI runs as root, so they run there.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_same_final_weights, run_cli, run_finished, submitit_logs, tiny_overrides

sys.path.insert(0, str(REPO / "tests"))
from helpers import netns  # noqa: E402

CONFIG = str(REPO / "configs" / "lidar_tokenizer.yaml")
SCRIPT = REPO / "slurm" / "local-cluster.sh"
_REASON = netns.unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=f"two-node tests: {_REASON}")]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# ----------------------------------------------------------------------------------------- the namespaces

_SERVER = ("import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
           "s.bind((sys.argv[1], 29511)); s.listen(); print('ready', flush=True); c, _ = s.accept(); "
           "c.sendall(b'pong'); c.close()")
_CLIENT = ("import socket, sys\ntry:\n    c = socket.create_connection((sys.argv[1], 29511), timeout=3)\n"
           "    print(c.recv(4).decode())\nexcept OSError as e:\n    print('refused', type(e).__name__)")


def test_namespaces_talk_over_the_veth_pair_only_and_are_removed():
    with pytest.raises(RuntimeError, match="body failed"):
        with netns.two_namespaces() as (a, b):
            names = [a.name, b.name]
            for host, expect in ((b.addr, "pong"), ("127.0.0.1", "refused")):  # b's loopback is not a's
                server = netns.popen_in(b, [sys.executable, "-c", _SERVER, host], stdout=subprocess.PIPE, text=True)
                try:
                    assert server.stdout.readline().strip() == "ready"
                    out = netns.run_in(a, [sys.executable, "-c", _CLIENT, host], capture_output=True, text=True,
                                       timeout=30).stdout
                    assert out.startswith(expect), (host, out)
                finally:
                    server.kill()
                    server.wait()
            raise RuntimeError("body failed")
    assert not any(netns.exists(n) for n in names), "namespaces left behind after an exception"


# ---------------------------------------------------------------------------------------------- torchrun

def _torchrun_overrides(shards, run, steps):
    return tiny_overrides(shards, run, **{"train.max_steps": steps, "checkpoint.every": steps, "eval.every": 0,
                                          "log.every": 4, "log.image_every": 0, "data.num_workers": 0})


def test_torchrun_two_nodes_in_namespaces_equals_one_node(lidar_shards, tmp_path):
    steps = 8
    ref = tmp_path / "one-node"
    res = run_cli(["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "toolkit.train",
                   "--config", CONFIG, *_torchrun_overrides(lidar_shards, ref, steps)], timeout=600,
                  env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]

    run = tmp_path / "two-nodes"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": netns.IFNAME}
    with netns.two_namespaces() as nodes:
        procs = []
        try:
            for i, node in enumerate(nodes):
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                       "--rdzv_backend=c10d", f"--rdzv_endpoint={nodes[0].addr}:29500", "--rdzv_id=multinode",
                       f"--rdzv_conf=is_host={int(i == 0)}", f"--local_addr={node.addr}", "-m", "toolkit.train",
                       "--config", CONFIG, *_torchrun_overrides(lidar_shards, run, steps)]
                procs.append(netns.popen_in(node, cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, start_new_session=True))
            outs = []
            for proc in procs:
                out, _ = proc.communicate(timeout=600)
                outs.append(out)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                    proc.wait()
        names = [n.name for n in nodes]
    assert not any(netns.exists(n) for n in names), "namespaces left behind"
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-3000:]
    summary = _summary(run)
    assert summary["world_size"] == 2 and summary["step"] == steps
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["info/world_size"] for row in lines if "info/world_size" in row] == [2.0]
    # the namespaces share no loopback: a finished world of 2 means rendezvous and gloo went over the veth pair
    # an all-reduce of 2 float values is a + b on both ranks whichever rank holds which data: the same bits
    assert_same_final_weights(run, ref, steps)


# ------------------------------------------------------------------------------------------- two-node SLURM

# slurm2 (the two-node cluster, one per session) is conftest's: test_dist_faults uses it too


def _in_cluster(env, *cmd, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "exec", *map(str, cmd)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _submit(env, shards, run, steps) -> str:
    overrides = tiny_overrides(shards, run, **{"train.max_steps": steps, "checkpoint.every": 10,
                                               "checkpoint.keep": 50, "eval.every": 0, "log.every": 10,
                                               "log.image_every": 0, "data.num_workers": 0})
    res = run_cli(["bash", str(SCRIPT), "exec", sys.executable, "-m", "launch", "--config", CONFIG, "--cluster",
                   "slurm", "--profile", "local-2nodes", "--nodes", "2", *overrides], env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(slurm: 2 node(s) x 1 task(s))" in res.stdout, res.stdout
    return next(line.split()[2] for line in res.stdout.splitlines() if line.startswith("submitted job"))


def _wait_for(predicate, timeout, what, env, job_id, poll=0.2):
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return
        state = _in_cluster(env, "squeue", "-h", "-j", job_id, "-o", "%T %r").stdout.split()
        if state == ["PENDING", "BeginTime"]:  # SLURM holds a requeued job ~2 min: start it now
            _in_cluster(env, "scontrol", "update", f"JobId={job_id}", "StartTime=now")
        time.sleep(poll)
    detail = _in_cluster(env, "scontrol", "show", "job", job_id).stdout
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{detail}")


def _job_state(env, job_id) -> str:
    out = _in_cluster(env, "scontrol", "show", "job", "-o", job_id).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "")


def test_slurm_two_nodes_and_a_requeued_job_resumes_bit_identical(lidar_shards, tmp_path, slurm2):
    steps = 60
    ref, run = tmp_path / "uninterrupted", tmp_path / "requeued"
    # both jobs at once: each takes 1 CPU on each node
    ref_job = _submit(slurm2, lidar_shards, ref, steps)
    job = _submit(slurm2, lidar_shards, run, steps)
    _wait_for(lambda: (run / "checkpoints" / "iter_000000010.pt").exists(), 600, "a checkpoint at step 10",
              slurm2, job)
    assert not (run / "checkpoints" / f"iter_{steps:09d}.pt").exists(), "finished before it could be requeued"
    res = _in_cluster(slurm2, "scontrol", "requeue", job)
    assert res.returncode == 0, res.stderr
    _wait_for(lambda: run_finished(ref), 900, "the uninterrupted job to finish", slurm2, ref_job, poll=2)
    _wait_for(lambda: run_finished(run), 900, "the requeued job to finish", slurm2, job, poll=2)

    for job_id in (ref_job, job):  # the jobs themselves end cleanly (exit 0), not only their training
        _wait_for(lambda: _job_state(slurm2, job_id) not in {"PENDING", "RUNNING", "COMPLETING", "REQUEUED"},
                  300, "the job to leave the queue", slurm2, job_id, poll=1)
        assert _job_state(slurm2, job_id) == "COMPLETED", _in_cluster(slurm2, "scontrol", "show", "job", job_id).stdout
    for folder in (ref, run):
        summary = _summary(folder)
        assert summary["world_size"] == 2 and summary["step"] == steps, summary
        logs = submitit_logs(folder)
        # one rank on each node, rendezvous at n1's namespace address over the veth pair
        assert "rank 0: multi-node: MASTER_ADDR=10.77.0.1" in logs and "rank 1: multi-node: MASTER_ADDR=10.77.0.1" \
            in logs, logs[-3000:]
        assert "GLOO_SOCKET_IFNAME=tk0" in logs
        assert "hostname=n1, local_rank=0(1), node=0(2), global_rank=0(2)" in logs
        assert "hostname=n2, local_rank=0(1), node=1(2), global_rank=1(2)" in logs
    assert _summary(ref)["resumed_from"] is None
    summary = _summary(run)
    assert summary["resumed_from"] is not None, "the requeued job did not resume from a checkpoint"
    assert 10 <= int(Path(summary["resumed_from"]).stem.split("_")[1]) < steps
    assert "SIGTERM: checkpointing at the next sync point" in submitit_logs(run)
    assert_same_final_weights(run, ref, steps)
