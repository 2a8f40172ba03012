"""Real multi-process training: torchrun with 2 CPU ranks (gloo), fp32 and bf16."""

import json

import pytest
import torch

from conftest import REPO, run_cli, tiny_overrides


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torchrun_two_ranks(lidar_shards, tmp_path, precision):
    run = tmp_path / f"ddp-{precision}"
    overrides = tiny_overrides(lidar_shards, run, **{"train.max_steps": 20, "train.precision": precision,
                                                      "checkpoint.every": 10, "eval.every": 10, "log.every": 5,
                                                      "log.image_every": 10, "data.num_workers": 1})
    res = run_cli(["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "toolkit.train",
                   "--config", str(REPO / "configs" / "lidar_tokenizer.yaml"), *overrides], timeout=900,
                  env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 20 and summary["precision"] == precision
    state = torch.load(run / "checkpoints" / "iter_000000020.pt", weights_only=True)
    assert state["world_size"] == 2 and set(state["rng"]) == {"0", "1"}
    # each rank drew its own data: the two ranks' RNG states differ
    assert not torch.equal(state["rng"]["0"]["torch"], state["rng"]["1"]["torch"])
    assert (run / "checkpoints" / "iter_000000020_ema.jit").exists()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train/loss"] for row in lines if "train/loss" in row]
    assert len(losses) == 4 and all(v == v for v in losses)  # logged by rank 0 only, finite
