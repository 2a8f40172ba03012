"""``train.strategy=fsdp`` (FSDP2, ``fully_shard``) against DDP, with real torchrun processes (2 CPU ranks, gloo).

The module fixture runs DDP and FSDP2 on the same tiny tokenizer config (fp32, 2 accumulation steps,
6 steps, checkpoints at 3 and 6, the FSDP2 run keeping only the newest; helpers shared with
tests/test_strategies.py).

Why not bit-identical to DDP: FSDP2 reduce-scatters each block's gradients (DDP all-reduces buckets),
so gradients are summed in another order, the gradient norm is summed over shards, and AdamW runs
``foreach`` over shards instead of fused over whole tensors; AdamW divides each gradient by its own
running RMS, so last-bit differences in near-zero gradients move some weights by up to ``lr``.
Measured (this config, 2 ranks, fp32): losses agree to 0 / 1.3e-6 / 5.9e-5 relative at steps 2/4/6,
gradient norms to 7e-8 / 1.7e-4 / 6.9e-4, weights and EMA to 2.5e-4 in relative L2 norm. Asserted:
losses 5e-4, gradient norms 5e-3, weights 2e-3 (a gradient scaled wrongly, e.g. not averaged over the
ranks, is off by 2x). Resume after kill -9 is asserted bit-identical (same world size).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_cli
from helpers.strategy_runs import CONFIG, LAST, ckpt, flat, losses, torchrun, torchrun_args, train_overrides
from test_dist_faults import kill_tree
from test_faults import wait_until

FSDP = {"train.strategy": "fsdp"}


@pytest.fixture(scope="module")
def runs(lidar_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    out = {"ddp": root / "ddp", "fsdp": root / "fsdp", "shards": lidar_shards}
    torchrun(lidar_shards, out["ddp"])
    torchrun(lidar_shards, out["fsdp"], **FSDP, **{"checkpoint.keep": 1})
    return out


@pytest.mark.slow
def test_fsdp_two_ranks_end_like_ddp(runs):
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    a, b = losses(ddp), losses(fsdp)
    assert sorted(a) == sorted(b) == [2, 4, 6]
    for step in a:
        assert math.isclose(a[step], b[step], rel_tol=5e-4), (step, a[step], b[step])
    na, nb = losses(ddp, "train/grad_norm"), losses(fsdp, "train/grad_norm")
    for step in na:
        assert math.isclose(na[step], nb[step], rel_tol=5e-3), (step, na[step], nb[step])
    sa, sb = ckpt(ddp), ckpt(fsdp)
    assert sb["model"].keys() == sa["model"].keys()
    for part in ("model", "ema"):
        wa = flat(sa[part] if part == "model" else sa[part]["module"])
        wb = flat(sb[part] if part == "model" else sb[part]["module"])
        rel = float((wa - wb).norm() / wa.norm())
        assert 0 <= rel < 2e-3, (part, rel)
    opt = sb["optimizer"]
    assert opt["strategy"] == "fsdp" and opt["world_size"] == 2 and opt["dir"] == f"{LAST}_fsdp"
    folder = fsdp / "checkpoints" / opt["dir"]
    assert any(f.endswith(".distcp") for f in opt["files"]) and all((folder / f).is_file() for f in opt["files"])
    assert (fsdp / "checkpoints" / f"{LAST}_ema.jit").is_file()
    names = sorted(p.name for p in (fsdp / "checkpoints").iterdir())
    assert not any(n.endswith(".tmp") for n in names), names
    assert not any(n.startswith("iter_000000003") for n in names), names  # keep=1 pruned step 3 + DCP folder
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2


@pytest.mark.slow
def test_fsdp_resume_after_kill_9_equals_the_uninterrupted_run(runs, tmp_path):
    """Both ranks and torchrun killed (SIGKILL) after the step-3 checkpoint; the run started again
    resumes from it and ends with the uninterrupted run's weights, EMA and loss, bit for bit."""
    run = tmp_path / "killed"
    ck = run / "checkpoints" / "iter_000000003.pt"
    proc = subprocess.Popen([sys.executable, *torchrun_args(runs["shards"], run, **FSDP)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(ck.exists, proc, timeout=600, what="the step-3 checkpoint")
    finally:
        alive = proc.poll() is None
        kill_tree(proc)  # SIGKILL to torchrun and both ranks
    assert alive and ck.exists(), "the run ended before the kill"
    assert not (run / "summary.json").exists()
    res = torchrun(runs["shards"], run, **FSDP)
    assert "resumed from" in res.stdout + res.stderr and "iter_000000003.pt" in res.stdout + res.stderr
    full, resumed = ckpt(runs["fsdp"]), ckpt(run)
    for key in full["model"]:
        assert torch.equal(full["model"][key], resumed["model"][key]), key
        assert torch.equal(full["ema"]["module"][key], resumed["ema"]["module"][key]), key
    assert losses(run)[6] == losses(runs["fsdp"])[6]


@pytest.mark.slow
def test_fsdp_resume_on_another_world_size_is_refused_naming_both(runs, tmp_path):
    """The 2-rank FSDP checkpoint resumed by one process: an error naming 2 and 1 ranks, one line."""
    run = tmp_path / "one-rank"
    shutil.copytree(runs["fsdp"], run)
    (run / "summary.json").unlink()
    res = run_cli(["-m", "toolkit.train", "--config", str(CONFIG),
                   *train_overrides(runs["shards"], run, **FSDP, **{"train.max_steps": 7})],
                  timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    lines = [x for x in res.stderr.splitlines() if "2 ranks" in x]
    assert len(lines) == 1 and "1 ranks" in lines[0] and "Traceback" not in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize("overrides,message", [
    (["train.strategy=fsdp", "train.compile=model"], "train.compile=model is not supported with train.strategy=fsdp"),
    (["train.strategy=fsdp", "train.precision=fp16"], "train.precision=fp16 is not supported with train.strategy=fsdp"),
])
def test_fsdp_refuses_unsupported_settings(overrides, message):
    from toolkit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, overrides)
