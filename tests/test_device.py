"""Device and precision selection (CUDA, MPS, CPU), with availability injected: MPS cannot run here."""

import pytest
import torch

from toolkit.config import ConfigError
from toolkit.engine.device import cast_for_device, check_precision, check_world_size, select_device


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(cuda, mps, expected):
    assert select_device("auto", cuda_available=cuda, mps_is_available=mps) == expected


def test_explicit_devices_must_exist():
    assert select_device("mps", cuda_available=False, mps_is_available=True) == "mps"
    assert select_device("cpu", cuda_available=True, mps_is_available=True) == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        select_device("cuda", cuda_available=False, mps_is_available=True)
    with pytest.raises(ConfigError, match="MPS is not available"):
        select_device("mps", cuda_available=True, mps_is_available=False)


def test_precision_rules():
    assert check_precision("cpu", "fp32") == "no"
    assert check_precision("cpu", "bf16") == "bf16"
    assert check_precision("cuda", "fp16") == "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA or MPS"):
        check_precision("cpu", "fp16")
    # MPS: fp32 always; fp16 from PyTorch 2.5; bf16 from 2.6 and only on Apple Silicon
    assert check_precision("mps", "fp32", torch_version="2.1.0", machine="arm64") == "no"
    assert check_precision("mps", "fp16", torch_version="2.5.1", machine="arm64") == "fp16"
    with pytest.raises(ConfigError, match="fp16 on MPS needs PyTorch >= 2.5"):
        check_precision("mps", "fp16", torch_version="2.4.1", machine="arm64")
    assert check_precision("mps", "bf16", torch_version="2.6.0", machine="arm64") == "bf16"
    with pytest.raises(ConfigError, match="bf16 on MPS needs PyTorch >= 2.6"):
        check_precision("mps", "bf16", torch_version="2.5.1", machine="arm64")
    with pytest.raises(ConfigError, match="Apple Silicon"):
        check_precision("mps", "bf16", torch_version="2.8.0", machine="x86_64")


def test_no_float64_is_sent_to_mps():
    x = torch.zeros(2, dtype=torch.float64)
    assert cast_for_device(x, "mps").dtype == torch.float32
    assert cast_for_device(x, "cpu").dtype == torch.float64
    assert cast_for_device(torch.zeros(2, dtype=torch.int64), "mps").dtype == torch.int64


def test_mps_runs_one_process():
    check_world_size("mps", 1)
    check_world_size("cpu", 4)
    with pytest.raises(ConfigError, match="MPS runs one process"):
        check_world_size("mps", 2)
