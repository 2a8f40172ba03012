"""Inference helpers shared by ``toolkit.evaluate`` and ``toolkit.reconstruct``.

* :func:`iter_frames`: range maps from shards, a single ``.pcd.bin``, or a nuScenes dataroot (through
  the devkit), one frame at a time with its key and metadata;
* :class:`Tokenizer`: encode/decode in metres with the JIT exports (``iter_N_enc.jit`` +
  ``iter_N_dec.jit``, loadable without this package) or with a checkpoint (``iter_N.pt``, EMA
  weights by default, loaded by :func:`toolkit.engine.checkpoint.load_trained_model`), through the
  same encoder/decoder wrappers that are exported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from toolkit.lidar.range_map import RangeMap, range_map_from_points

from .model import RangeDecoder, RangeEncoder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_tokenizer_arguments(p, with_sample: bool, max_frames: int) -> None:
    """Options shared by the family's ``evaluate`` and ``reconstruct``: the tokenizer (``--enc``/``--dec``,
    ``--run``, ``--checkpoint``, ``--weights``, ``--dtype``) and exactly one input (``--shards``,
    ``--dataroot`` [+ ``--version``], or with ``with_sample`` a single ``--sample``), ``--max-frames``."""
    from toolkit.cli import add_model_arguments

    p.add_argument("--enc", help="encoder TorchScript file (iter_N_enc.jit)")
    p.add_argument("--dec", help="decoder TorchScript file (iter_N_dec.jit)")
    add_model_arguments(p, exports="enc/dec")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="tokenizer dtype (default float32, as the exports were traced)")
    src = p.add_mutually_exclusive_group(required=True)
    if with_sample:
        src.add_argument("--sample", help="a shard .tar or a .pcd.bin file")
    src.add_argument("--shards", help="range-map shards (brace pattern or glob)")
    src.add_argument("--dataroot", help="nuScenes dataroot (read through nuscenes-devkit)")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes table version (default v1.0-mini)")
    p.add_argument("--max-frames", type=int, default=max_frames,
                   help=f"at most this many frames (default {max_frames or 'all'}; 0 = all)")


@dataclass
class Frame:
    """One scan: ``key`` (unique name), the range map and its metadata."""

    key: str
    range_map: RangeMap
    meta: dict


def iter_frames(shards: str | None = None, dataroot: str | None = None, version: str = "v1.0-mini",
                sample: str | None = None, max_frames: int = 0, n_rings: int = 32) -> Iterator[Frame]:
    """Yield frames from exactly one source.

    Args:
        shards: shard specification (brace pattern, glob); samples in order, no shuffling.
        dataroot, version: a nuScenes dataroot read through the devkit (every LIDAR_TOP keyframe).
        sample: a ``.tar`` shard or a ``.pcd.bin`` point file.
        max_frames: stop after this many (0 = all).

    Raises:
        ValueError: if not exactly one source is given; DatarootError / ShardListError for bad paths.
    """
    if sum(x is not None for x in (shards, dataroot, sample)) != 1:
        raise ValueError("give exactly one of --shards, --dataroot or --sample")
    count = 0

    def take(frames):
        nonlocal count
        for frame in frames:
            yield frame
            count += 1
            if max_frames and count >= max_frames:
                return

    if sample is not None and sample.endswith(".pcd.bin"):
        from toolkit.datasets.nuscenes import read_pcd_bin

        if not os.path.isfile(sample):
            raise FileNotFoundError(f"--sample '{sample}' does not exist")
        pts = read_pcd_bin(sample)
        key = Path(sample).name[: -len(".pcd.bin")].replace(".", "_")
        yield Frame(key, range_map_from_points(pts, n_rings=n_rings), {"source": sample})
        return
    if sample is not None:
        shards = sample
    if shards is not None:
        import webdataset as wds

        from toolkit.data.pipeline import expand_shards
        from toolkit.lidar.shard_format import decode_sample

        urls = expand_shards(shards)

        def from_shards():
            for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
                rm, meta = decode_sample(s)
                yield Frame(s["__key__"], rm, meta)

        yield from take(from_shards())
        return
    from toolkit.datasets.nuscenes import iter_lidar_frames, load_nuscenes

    nusc = load_nuscenes(dataroot, version)

    def from_dataroot():
        for f in iter_lidar_frames(nusc):
            meta = {"sample_token": f.sample_token, "scene_name": f.scene_name, "timestamp_us": f.timestamp_us,
                    "source": f.path}
            yield Frame(f"{f.scene_name}_{f.sample_token}", range_map_from_points(f.points, n_rings=n_rings), meta)

    yield from take(from_dataroot())


class Tokenizer:
    """Encode/decode range maps in metres with JIT exports or a checkpoint.

    Args:
        enc, dec: paths of ``*_enc.jit`` and ``*_dec.jit`` (TorchScript, from any process).
        checkpoint: path of an ``iter_N.pt`` instead of JIT files.
        weights: with a checkpoint, ``ema`` (default, if present) or ``model``.
        device: torch device string; dtype: float32 | bfloat16 | float16.

    Attributes:
        min_range_m, max_range_m: the valid interval the model was trained with.

    Raises:
        ValueError: bad argument combination or dtype; CheckpointError: unreadable checkpoint.
    """

    def __init__(self, enc: str | None = None, dec: str | None = None, checkpoint: str | None = None,
                 weights: str = "ema", device: str = "cpu", dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        if checkpoint:
            if enc or dec:
                raise ValueError("give either --checkpoint or --enc/--dec, not both")
            from toolkit.engine.checkpoint import load_trained_model

            trained = load_trained_model(checkpoint, weights)
            model = trained.model.to(self.device, self.dtype)
            self._encoder, self._decoder = RangeEncoder(model), RangeDecoder(model)
            self.min_range_m, self.max_range_m = model.codec.min_range, model.codec.max_range
            self.source = f"{checkpoint} ({'EMA' if trained.weights == 'ema' else 'model'} weights)"
        else:
            if not (enc and dec):
                raise ValueError("give --enc and --dec (TorchScript files) or --checkpoint")
            for p in (enc, dec):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"'{p}' does not exist")
            encoder = torch.jit.load(enc, map_location=self.device).to(self.dtype).eval()
            decoder = torch.jit.load(dec, map_location=self.device).to(self.dtype).eval()
            self._encoder, self._decoder = encoder, decoder
            codec = getattr(encoder, "codec", None)
            self.min_range_m = float(getattr(codec, "min_range", 1.0))
            self.max_range_m = float(getattr(codec, "max_range", 100.0))
            self.source = f"{enc} + {dec}"

    @torch.no_grad()
    def reconstruct(self, range_m: np.ndarray) -> tuple[np.ndarray, int]:
        """(H, W) metres -> (reconstruction (H, W) metres float32, number of latent values)."""
        r = torch.from_numpy(np.ascontiguousarray(range_m, np.float32))[None, None].to(self.device, self.dtype)
        latent = self._encoder(r)
        recon = self._decoder(latent)[..., : range_m.shape[-1]]
        return recon[0, 0].float().cpu().numpy(), int(latent.numel())
