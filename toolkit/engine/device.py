"""Device and precision selection for the engine (CUDA, Apple MPS or CPU).

``auto`` picks CUDA, else MPS, else CPU. Precision rules checked up front (Accelerate would otherwise
raise late, or on CPU silently ignore fp16):

* fp16 needs CUDA or MPS (MPS: PyTorch >= 2.5); it runs with dynamic loss scaling;
* bf16 runs on CPU and CUDA; on MPS it needs PyTorch >= 2.6 and Apple Silicon;
* MPS never receives float64 (:func:`move_batch` casts to float32). Ops missing on MPS raise
  ``NotImplementedError``; set ``PYTORCH_ENABLE_MPS_FALLBACK=1`` to run them on the CPU instead.
"""

from __future__ import annotations

import platform

import torch

from toolkit.config import ConfigError

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _version_at_least(version: str, major: int, minor: int) -> bool:
    parts = version.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return True


def select_device(requested: str = "auto", *, cuda_available: bool | None = None, mps_is_available: bool | None = None) -> str:
    """Resolve ``train.device`` to ``"cuda"``, ``"mps"`` or ``"cpu"``.

    Args:
        requested: auto | cpu | cuda | mps.
        cuda_available, mps_is_available: override detection (for tests); None = ask PyTorch.

    Raises:
        ConfigError: if the requested device is not available here.
    """
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    mps = mps_available() if mps_is_available is None else mps_is_available
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        raise ConfigError("train.device=cuda but no CUDA device is available (torch.cuda.is_available() is False)")
    if requested == "mps" and not mps:
        raise ConfigError("train.device=mps but MPS is not available (needs Apple Silicon and a PyTorch build with MPS)")
    if requested not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device={requested!r} is not one of auto, cpu, cuda, mps")
    return requested


def check_precision(device: str, precision: str, *, torch_version: str | None = None, machine: str | None = None) -> str:
    """Validate ``train.precision`` for ``device``; returns Accelerate's ``mixed_precision`` value.

    Raises:
        ConfigError: for combinations that cannot run (named, with the alternative).
    """
    if precision not in MIXED_PRECISION:
        raise ConfigError(f"train.precision={precision!r} is not one of fp32, bf16, fp16")
    version = torch_version or torch.__version__
    arch = machine or platform.machine()
    if precision == "fp16" and device == "cpu":
        raise ConfigError("train.precision=fp16 needs a CUDA or MPS device; on CPU use bf16 or fp32")
    if device == "mps":
        if precision == "fp16" and not _version_at_least(version, 2, 5):
            raise ConfigError(f"fp16 on MPS needs PyTorch >= 2.5 (installed {version}); use fp32")
        if precision == "bf16" and (not _version_at_least(version, 2, 6) or arch not in ("arm64", "aarch64")):
            raise ConfigError(f"bf16 on MPS needs PyTorch >= 2.6 on Apple Silicon (installed {version} on {arch}); use fp32")
    return MIXED_PRECISION[precision]


def check_world_size(device: str, world_size: int) -> None:
    """MPS runs one process: gloo/NCCL cannot use it.

    Raises:
        ConfigError: for several ranks on MPS.
    """
    if device == "mps" and world_size > 1:
        raise ConfigError(f"MPS runs one process, not {world_size}: launch one process (--cluster debug or "
                          "python -m toolkit.train) or set train.device=cpu for several CPU ranks")


def cast_for_device(value: torch.Tensor, device_type: str) -> torch.Tensor:
    """float64 becomes float32 on MPS (which has no float64); everything else is unchanged."""
    if device_type == "mps" and value.dtype == torch.float64:
        return value.float()
    return value


def move_batch(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a batch to ``device`` (float64 becomes float32 on MPS); other values stay."""
    return {key: cast_for_device(value, device.type).to(device, non_blocking=True)
            if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak, MPS driver allocation, or CPU max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
