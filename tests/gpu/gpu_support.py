"""Shared pieces of the GPU suite (tests/gpu, marker ``gpu``): the skip without CUDA, synthetic range-map
shards (no nuScenes devkit needed: the device machine may not have it), CUDA overrides of the tiny
tokenizer config, and readers of a run's outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_overrides

CUDA = torch.cuda.is_available()
#: the suite's device; ``TOOLKIT_GPU_SUITE_DEVICE=cpu`` runs the tests that can run on a CPU there (to check
#: the tests' own logic on a machine without a GPU; the CUDA-only ones skip, naming why)
DEVICE = os.environ.get("TOOLKIT_GPU_SUITE_DEVICE", "cuda")
#: why every GPU test is skipped on a machine without CUDA
SKIP_REASON = ("no CUDA device (torch.cuda.is_available() is False): the GPU suite runs on a GPU node, "
               "e.g. scripts/gpu-check --out DIR")
#: ``pytestmark`` of every GPU test module
GPU = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not CUDA, reason=SKIP_REASON)]
#: for the tests that need CUDA itself (fp16, sync debug mode, inductor, NCCL)
CUDA_ONLY = pytest.mark.skipif(DEVICE != "cuda", reason=f"needs CUDA (TOOLKIT_GPU_SUITE_DEVICE={DEVICE})")
CONFIG = REPO / "configs" / "lidar_tokenizer.yaml"


def build_range_shards(root: Path) -> dict:
    """Train (24 maps in 4 shards) and val (4 maps) shards of synthetic 32 x 256 range maps."""
    from toolkit.gpu_bench import range_sample, write_shards

    rng = np.random.default_rng(0)
    train = write_shards([range_sample(rng, f"t{i:03d}", cols=256) for i in range(24)], root / "train", shards=4)
    val = write_shards([range_sample(rng, f"v{i:03d}", cols=256) for i in range(4)], root / "val", shards=1)
    return {"train": train, "val": val}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state (its mixed precision is fixed by the first Accelerator):
    reset it around every test so that runs of other precisions can follow in this process."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def range_shards(tmp_path_factory) -> dict:
    return build_range_shards(tmp_path_factory.mktemp("gpu_shards"))


def cuda_overrides(shards: dict, run: Path, **extra) -> list[str]:
    """The tiny tokenizer run of tests/conftest.py on :data:`DEVICE` (``train.device=cuda``) with ``extra`` keys."""
    return tiny_overrides(shards, run, **{"train.device": DEVICE, "task.map_cols": 256, **extra})


def logged(run: Path, key: str = "train/loss") -> dict[int, float]:
    """``{step: value}`` of one scalar in ``RUN/metrics.jsonl``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def final_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / f"iter_{step:09d}.pt", map_location="cpu", weights_only=True)["model"]


def config_accepts(overrides: list[str]) -> str | None:
    """None if ``configs/lidar_tokenizer.yaml`` with ``overrides`` loads, else the ConfigError's message."""
    from toolkit.config import ConfigError, load_config

    try:
        load_config(CONFIG, overrides)
    except ConfigError as exc:
        return str(exc)
    return None
