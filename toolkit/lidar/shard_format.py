"""The LiDAR range-map sample as stored in WebDataset shards, and its decoding.

One sample per scan, keys (file extensions inside the tar):

============== ======================= =====================================================
key            dtype, shape            content
============== ======================= =====================================================
``range.npy``  float32 (H, W)          range in metres, 0 where the sensor wrote nothing
``intensity.npy`` float16 (H, W)       return intensity (nuScenes 0-255)
``mask.npy``   bool (H, W)             real return within [min_range_m, max_range_m]
``azimuth.npy`` float32 (H, W)         rad, exact direction of each pixel's point
``elevation.npy`` float32 (H, W)       rad
``json``       utf-8 JSON              metadata (sample token, timestamp, scene, ring
                                       elevations in deg, layout, source, ranges)
============== ======================= =====================================================

The sample key is ``<scene>_<sample_token>`` (no periods: WebDataset splits keys at the first dot).
"""

from __future__ import annotations

import io
import json

import numpy as np

from .range_map import RangeMap

ARRAY_KEYS = ("range.npy", "intensity.npy", "mask.npy", "azimuth.npy", "elevation.npy")


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, key: str = "array") -> np.ndarray:
    """Decode ``.npy`` bytes (no pickles).

    Raises:
        ValueError: naming ``key`` when the bytes are not a valid ``.npy``.
    """
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt data
        raise ValueError(f"cannot decode '{key}' as .npy: {exc}") from exc


def encode_sample(key: str, rm: RangeMap, meta: dict) -> dict:
    """Shard sample dict (bytes values) for a range map; ``meta`` is merged into the JSON."""
    if "." in key:
        raise ValueError(f"sample key '{key}' contains a period; WebDataset would split it")
    info = dict(meta)
    info.update(rows=rm.shape[0], cols=rm.shape[1], layout=rm.layout, min_range_m=rm.min_range_m,
                max_range_m=rm.max_range_m, ring_elevation_deg=[round(float(v), 4) for v in rm.ring_elevation_deg],
                valid_pixels=int(rm.mask.sum()))
    return {
        "__key__": key,
        "range.npy": _npy(rm.range_m.astype(np.float32)),
        "intensity.npy": _npy(rm.intensity.astype(np.float16)),
        "mask.npy": _npy(rm.mask.astype(bool)),
        "azimuth.npy": _npy(rm.azimuth.astype(np.float32)),
        "elevation.npy": _npy(rm.elevation.astype(np.float32)),
        "json": json.dumps(info).encode(),
    }


def decode_sample(sample: dict) -> tuple[RangeMap, dict]:
    """Shard sample (bytes values) -> (RangeMap, metadata).

    Raises:
        KeyError: if an array key is missing; ValueError: if arrays are corrupt or shapes disagree.
    """
    missing = [k for k in (*ARRAY_KEYS, "json") if k not in sample]
    if missing:
        raise KeyError(f"sample '{sample.get('__key__')}' lacks {missing}")
    arrs = {k: load_npy(sample[k], k) for k in ARRAY_KEYS}
    shapes = {a.shape for a in arrs.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"sample '{sample.get('__key__')}': arrays must share one 2-D shape, got {shapes}")
    meta = json.loads(sample["json"])
    rm = RangeMap(
        range_m=arrs["range.npy"].astype(np.float32), intensity=arrs["intensity.npy"].astype(np.float32),
        mask=arrs["mask.npy"].astype(bool), azimuth=arrs["azimuth.npy"], elevation=arrs["elevation.npy"],
        ring_elevation_deg=np.asarray(meta.get("ring_elevation_deg", []), np.float64),
        layout=meta.get("layout", "ring"), min_range_m=float(meta.get("min_range_m", 1.0)),
        max_range_m=float(meta.get("max_range_m", 200.0)),
    )
    return rm, meta
