"""A TorchScript image encoder and the preprocessing it expects: images -> (N, D) float32 vectors.

Any scripted module works that takes ``(N, 3, H, W)`` float images (RGB, values in [0, 1] before the
optional ``(x - mean) / std``) and returns one tensor: ``(N, D)`` is used as is, ``(N, C, h, w)`` feature
maps are mean-pooled over ``h, w`` (the BEV family's ``encoder.jit``), ``(N, T, C)`` tokens are pooled by
``pool``: ``cls`` = token 0, ``mean`` = the mean over all tokens.

The toolkit's own exports expect [0, 1] RGB at the run's training size and no mean/std (the default):
``token_fusion``'s ``iter_N_img_enc.jit`` (N, 3, H, W) -> (N, E) and ``bev``'s ``iter_N_encoder.jit``
(N, 3, H, W) -> (N, C, H/8, W/8). Given a run folder (or an export inside ``RUN/checkpoints/``), the image size
is read from the run's ``config.yaml`` (``task.sample.image_width/height``).

A ViT scripted elsewhere needs its own preprocessing, e.g. an open_clip ViT-L/14 (``shared/notes`` section 4):
224 x 224 px, resized on the shortest side (bicubic) and centre-cropped, CLIP mean (0.48145466, 0.4578275,
0.40821073) and std (0.26862954, 0.26130258, 0.27577711)::

    --image-size 224x224 --resize crop --resample bicubic \\
    --mean 0.48145466 0.4578275 0.40821073 --std 0.26862954 0.26130258 0.27577711

(``crop`` drops ~44 % of a 1600 x 900 frame's width; ``squash`` keeps everything and distorts the aspect.)
Mind that open_clip's pooled output is the one with ``proj`` applied (768-d for ViT-L/14); tokens
(``output_tokens=True``) are unprojected 1024-d, so script the pooled output.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolkit.camera.augment import ResizeCrop, decode_jpeg, plain_resize

POOLS = ("mean", "cls")
RESIZES = ("squash", "crop")


@dataclass(frozen=True)
class Preprocess:
    """Encoded image -> (3, H, W) float32 the encoder expects.

    Attributes:
        width, height: the encoder's input size, px.
        resize: ``squash`` (resize to exactly width x height) or ``crop`` (resize the shortest side, centre crop).
        resample: ``bilinear`` or ``bicubic``; mean, std: per-channel normalisation after scaling to [0, 1]
            (None: none).
    """

    width: int
    height: int
    resize: str = "squash"
    resample: str = "bilinear"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def transform(self, src_size: tuple[int, int]) -> ResizeCrop:
        out = (self.width, self.height)
        if self.resize == "squash":
            return plain_resize(src_size, out)
        s = max(self.width / src_size[0], self.height / src_size[1])
        resized = (max(self.width, math.ceil(src_size[0] * s - 1e-6)), max(self.height, math.ceil(src_size[1] * s - 1e-6)))
        return ResizeCrop(tuple(src_size), resized, ((resized[0] - self.width) // 2, (resized[1] - self.height) // 2), out)

    def __call__(self, data: bytes, name: str = "image") -> np.ndarray:
        """(3, H, W) float32.

        Raises:
            ValueError: naming ``name`` if the bytes cannot be decoded.
        """
        import io

        from PIL import Image

        try:
            size = Image.open(io.BytesIO(data)).size
        except Exception as exc:  # PIL raises several types
            raise ValueError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        x = decode_jpeg(data, self.transform(size), self.resample, name=name).astype(np.float32) / 255.0
        if self.mean is not None:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_encoder(spec: str) -> tuple[Path, tuple[int, int] | None]:
    """``(the .jit file, the run's (width, height) or None)`` for ``--encoder RUN|MODULE.jit``.

    A run folder gives its newest checkpoint's image-encoder export (``img_enc``, else ``encoder``).

    Raises:
        FileNotFoundError: naming ``spec`` if it is neither a run with such an export nor a file.
    """
    from toolkit.engine.checkpoint import latest_exports

    path = Path(spec)
    if path.is_dir():
        for suffix in ("img_enc", "encoder"):
            try:
                jit = Path(latest_exports(path, (suffix,))[0])
                break
            except FileNotFoundError:
                continue
        else:
            raise FileNotFoundError(f"--encoder '{spec}': the run has no image-encoder export "
                                    "(iter_N_img_enc.jit or iter_N_encoder.jit in its checkpoints/)")
        run = path
    elif path.is_file():
        jit, run = path, path.parent.parent if path.parent.name == "checkpoints" else None
    else:
        raise FileNotFoundError(f"--encoder '{spec}' does not exist (expected a run folder or a .jit file)")
    return jit.resolve(), _run_image_size(run) if run is not None else None


def _run_image_size(run: Path) -> tuple[int, int] | None:
    import yaml

    cfg = run / "config.yaml"
    if not cfg.is_file():
        return None
    sample = ((yaml.safe_load(cfg.read_text()) or {}).get("task") or {}).get("sample") or {}
    w, h = sample.get("image_width"), sample.get("image_height")
    return (int(w), int(h)) if w and h else None


class Encoder:
    """A loaded TorchScript image encoder: ``encoder(images (N, 3, H, W) float32 numpy) -> (N, D) float32``.

    Args:
        path: the ``.jit`` file; device: torch device; pool: ``mean`` or ``cls`` for token outputs.

    Raises:
        ValueError: the file is not a TorchScript module, or its output is not 2-, 3- or 4-dimensional.
    """

    def __init__(self, path: str | Path, device: str = "cpu", pool: str = "mean"):
        if pool not in POOLS:
            raise ValueError(f"--pool must be one of {list(POOLS)}, got {pool!r}")
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # RuntimeError for a file that is not TorchScript
            raise ValueError(f"--encoder '{path}' is not a TorchScript module ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        self.device, self.pool, self.path = torch.device(device), pool, Path(path)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = self.module(torch.from_numpy(images).to(self.device))
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"--encoder '{self.path}' returns {type(out).__name__}, not one tensor")
        if out.ndim == 4:
            out = out.mean((2, 3))
        elif out.ndim == 3:
            out = out[:, 0] if self.pool == "cls" else out.mean(1)
        elif out.ndim != 2:
            raise ValueError(f"--encoder '{self.path}' returns shape {tuple(out.shape)}; expected (N, D), "
                             "(N, T, C) tokens or (N, C, h, w) feature maps")
        return out.float().cpu().numpy()
