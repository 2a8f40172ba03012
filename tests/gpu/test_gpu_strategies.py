"""Sharded strategies on one CUDA GPU under real torchrun (NCCL): DeepSpeed ZeRO-2, and FSDP2 when the
engine has it (``train.strategy=fsdp``; skipped, naming why, when the config does not accept it).

Each run: the tiny tokenizer, fp32, 6 steps, checkpoints at 3 and 6; its logged losses are compared with a
DDP run of the same config (torchrun, one device): 1e-4 relative at step 2, 1e-2 at steps 4 and 6. Measured
with TOOLKIT_GPU_SUITE_DEVICE=cpu (gloo) for ZeRO-2: 3e-7, 1.9e-4, 1.3e-3; the gap grows because ZeRO's flat
buffers change the convolution kernels and the reduction order, and AdamW turns last-bit differences of
near-zero gradients into updates of up to ``lr`` (tests/test_strategies.py).
"""

from __future__ import annotations

import math

import pytest

from conftest import REPO, run_cli
from gpu_support import CONFIG, GPU, config_accepts, cuda_overrides, logged, range_shards  # noqa: F401

pytestmark = GPU


def _torchrun(shards, run, **extra):
    values = {"train.max_steps": 6, "checkpoint.every": 3, "log.every": 2, "eval.every": 0, "log.image_every": 0,
              "checkpoint.export_jit": False, **extra}
    res = run_cli(["-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone", "-m", "toolkit.train",
                   "--config", str(CONFIG), *cuda_overrides(shards, run, **values)], timeout=300,
                  env={"OMP_NUM_THREADS": "4"}, cwd=REPO)
    assert res.returncode == 0, res.stderr[-4000:]
    return run


@pytest.fixture(scope="module")
def ddp_run(range_shards, tmp_path_factory):
    return _torchrun(range_shards, tmp_path_factory.mktemp("ddp") / "run")


def _assert_like_ddp(run, ddp):
    a, b = logged(ddp), logged(run)
    assert sorted(a) == sorted(b) == [2, 4, 6]
    for step in a:
        tol = 1e-4 if step == 2 else 1e-2
        assert math.isfinite(b[step]) and math.isclose(a[step], b[step], rel_tol=tol), (step, a[step], b[step])
    assert (run / "checkpoints" / "iter_000000006.pt").exists()


def test_deepspeed_zero2_on_one_gpu_trains_like_ddp(range_shards, ddp_run, tmp_path):
    pytest.importorskip("deepspeed")
    run = _torchrun(range_shards, tmp_path / "zero2", **{"train.strategy": "deepspeed", "deepspeed.stage": 2})
    _assert_like_ddp(run, ddp_run)


def test_fsdp2_on_one_gpu_trains_like_ddp(range_shards, ddp_run, tmp_path):
    problem = config_accepts(["train.strategy=fsdp"])
    if problem:
        pytest.skip(f"FSDP2 is not in the engine: train.strategy=fsdp is not accepted ({problem})")
    run = _torchrun(range_shards, tmp_path / "fsdp", **{"train.strategy": "fsdp"})
    _assert_like_ddp(run, ddp_run)
