"""Shared by the strategy tests (tests/test_strategies.py, tests/test_fsdp.py): a 2-rank torchrun (gloo)
run of the tiny tokenizer config, and readers of its metrics and checkpoints."""

from __future__ import annotations

import json

import torch

from conftest import REPO, run_cli, tiny_overrides

CONFIG = REPO / "configs" / "lidar_tokenizer.yaml"
LAST = "iter_000000006"


def train_overrides(shards, run, **extra) -> list[str]:
    """The runs' overrides: 6 steps, 2 accumulation steps, checkpoints at 3 and 6 (then ``extra``)."""
    values = {"train.max_steps": 6, "train.grad_accum": 2, "checkpoint.every": 3, "log.every": 2, **extra}
    return tiny_overrides(shards, run, **values)


def torchrun_args(shards, run, **extra) -> list[str]:
    """``python -m torch.distributed.run`` arguments: 2 ranks of :func:`train_overrides`."""
    return ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "toolkit.train",
            "--config", str(CONFIG), *train_overrides(shards, run, **extra)]


def torchrun(shards, run, **extra):
    """Run :func:`torchrun_args` to the end (asserting exit 0); returns the CompletedProcess."""
    res = run_cli(torchrun_args(shards, run, **extra), timeout=900, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def losses(run, key="train/loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def flat(state: dict) -> torch.Tensor:
    return torch.cat([state[k].double().flatten() for k in sorted(state) if state[k].is_floating_point()])


def ckpt(run, name=LAST) -> dict:
    return torch.load(run / "checkpoints" / f"{name}.pt", map_location="cpu", weights_only=True)
