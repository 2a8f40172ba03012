"""FLOP counting and model FLOPs utilisation (MFU).

``flops_per_step`` counts the FLOPs of one call with PyTorch's own counter
(:class:`torch.utils.flop_counter.FlopCounterMode`: matmul/conv/attention
FLOPs counted from the shapes, forward and backward if the call does both;
elementwise ops are not counted, as in torchtitan and PaLM's MFU).

MFU follows PaLM (Chowdhery et al. 2022, appendix B) and torchtitan
(``torchtitan/tools/utils.py`` ``get_peak_flops``):
``MFU = achieved FLOP/s / peak FLOP/s`` with the model's FLOPs (recomputation
by activation checkpointing is counted too when the counted call recomputes,
so with checkpointing the figure is closer to HFU).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

#: Dense (no structured sparsity) peak TFLOP/s per GPU, keyed by a substring of
#: ``torch.cuda.get_device_name()``. "bf16" is the tensor-core BF16 rate with
#: FP32 accumulation, "fp32" the plain (non-tensor-core, non-TF32) FP32 rate.
#: Sources: NVIDIA data sheets (A100: nvidia-a100-datasheet; H100/H200:
#: nvidia.com/en-us/data-center/h100, /h200, half the "with sparsity" figure;
#: L40S, L4, A10G, RTX product pages; B200: HGX B200 data sheet) and AMD
#: Instinct data sheets; the bf16 figures equal torchtitan's ``get_peak_flops``.
#: Longer names are matched first ("H100 NVL" before "H100").
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "B200": {"bf16": 2250.0, "fp32": 75.0},
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100 NVL": {"bf16": 835.0, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},  # SXM and other variants
    "H800": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "A800": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp32": 30.3},
    "A10G": {"bf16": 70.0, "fp32": 31.2},
    "RTX 4090": {"bf16": 165.2, "fp32": 82.6},
    "RTX 3090": {"bf16": 71.0, "fp32": 35.6},
    "MI300X": {"bf16": 1307.0, "fp32": 163.4},
    "MI325X": {"bf16": 1307.0, "fp32": 163.4},
    "MI250X": {"bf16": 383.0, "fp32": 47.9},
}

_DTYPE_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "bf16", "float16": "bf16", "torch.float16": "bf16",  # same tensor-core rate
    "fp32": "fp32", "float32": "fp32", "torch.float32": "fp32", "no": "fp32",
}


def flops_per_step(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` once under ``FlopCounterMode`` and return its total FLOPs.

    Counts forward and backward if ``fn`` runs both (e.g. ``loss.backward()``
    inside). One multiply-add counts as 2 FLOPs. Raises whatever ``fn`` raises.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of ``device_name`` for ``dtype`` ("bf16", "fp32", or
    torch/mixed-precision spellings such as "bfloat16", "fp16", "no"), or None
    when the GPU or dtype is not in :data:`PEAK_TFLOPS` (e.g. a CPU)."""
    key = _DTYPE_ALIASES.get(str(dtype).lower())
    if key is None:
        return None
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name.lower() in str(device_name).lower():
            return PEAK_TFLOPS[name].get(key)
    return None


def mfu(flops_per_step: float, step_time_s: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation, a fraction in [0, 1] (not percent):
    ``flops_per_step / step_time_s / (peak_tflops * 1e12)``.

    Raises ValueError when ``step_time_s`` or ``peak_tflops`` is not positive.
    """
    if step_time_s <= 0 or peak_tflops <= 0:
        raise ValueError(
            f"mfu needs step_time_s > 0 and peak_tflops > 0, got {step_time_s} and {peak_tflops}")
    return float(flops_per_step) / float(step_time_s) / (float(peak_tflops) * 1e12)
