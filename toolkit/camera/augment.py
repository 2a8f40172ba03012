"""Image resize/crop with the intrinsics that follow, and JPEG decoding straight to the transformed size.

Pixel convention (:data:`toolkit.camera.geometry.PIXEL_EDGE_OFFSET`, ``d`` = 0.5): ``(u, v)`` = (column,
row), pixel ``i``'s centre at ``u = i``, so the image spans ``u in [-0.5, W - 0.5]``. Resampling (Pillow,
OpenCV) scales the continuous coordinate ``u + d``, so resizing by ``s = W' / W`` and then cropping the window
starting at ``(x0, y0)`` maps every pixel position by the affine map::

    u' = s_x (u + d) - d - x0        v' = s_y (v + d) - d - y0

and the intrinsics by ``fx' = s_x fx``, ``cx' = s_x (cx + d) - d - x0`` (likewise ``fy``, ``cy``), so a 3D
point projects onto the same image content before and after. Simple-BEV scales ``cx`` by ``s_x`` alone
(``nuscenesdataset.py`` L773-784), i.e. ``d = 0``: ``0.5 (1 - s)`` px off under this convention, about
0.36 px at 1600 -> 400.

Train-time augmentation follows Simple-BEV (``sample_augmentation``, notes/bev.md section 1): resize to the
output size times ``s ~ U(0.8, 1.2)``, crop the output size centred, jittered by
``int(U(-j, j))`` px per axis with ``j = int(H_out (1 - 0.8))`` by default (89 px at 448 x 800); parts of
the crop outside the image are zeros. Validation: a plain resize to the output size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .geometry import PIXEL_EDGE_OFFSET

__all__ = ["ResizeCrop", "plain_resize", "random_resize_crop", "decode_jpeg", "parse_image_size"]

_RESAMPLE = {"bilinear": 2, "nearest": 0, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling values


@dataclass(frozen=True)
class ResizeCrop:
    """Resize a ``src_size`` image to ``resized``, then cut the ``out_size`` window at ``crop_xy``.

    All sizes are ``(width, height)`` in pixels; ``crop_xy = (x0, y0)`` is the window's top-left pixel in the
    resized image (may be negative or run past its border: those parts are zeros).
    """

    src_size: tuple[int, int]
    resized: tuple[int, int]
    crop_xy: tuple[int, int]
    out_size: tuple[int, int]

    def __post_init__(self):
        for name in ("src_size", "resized", "out_size"):
            w, h = getattr(self, name)
            if w < 1 or h < 1:
                raise ValueError(f"{name} must be positive (width, height) pixels, got {getattr(self, name)}")

    @property
    def scale(self) -> tuple[float, float]:
        """``(s_x, s_y)`` = resized / source size."""
        return self.resized[0] / self.src_size[0], self.resized[1] / self.src_size[1]

    def map_pixels(self, uv) -> np.ndarray:
        """Source pixel positions -> output pixel positions, (N, 2) ``(u, v)`` -> (N, 2) float64 (module map)."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        s, d = np.array(self.scale), PIXEL_EDGE_OFFSET
        return s * (uv + d) - d - np.array(self.crop_xy, np.float64)

    def intrinsics(self, K) -> np.ndarray:
        """The (3, 3) camera matrix of the output image from the source's (float64; skew scaled by ``s_x``)."""
        K = np.asarray(K, np.float64)
        if K.shape[-2:] != (3, 3):
            raise ValueError(f"intrinsics must be (..., 3, 3), got {K.shape}")
        (sx, sy), (x0, y0), d = self.scale, self.crop_xy, PIXEL_EDGE_OFFSET
        A = np.array([[sx, 0.0, d * sx - d - x0], [0.0, sy, d * sy - d - y0], [0.0, 0.0, 1.0]])
        return A @ K

    def apply(self, image, resample: str = "bilinear", box=None):
        """Resize and crop a ``PIL.Image`` of ``src_size`` (or a JPEG draft of it: pass its ``box``).

        Args:
            image: the source image (PIL).
            resample: ``bilinear`` (default; antialiased on downscaling), ``nearest`` (Simple-BEV, faster),
                ``bicubic`` or ``lanczos``.
            box: region of ``image`` that holds the whole source image (``Image.draft``'s box); None = all.

        Returns:
            The ``out_size`` PIL image.

        Raises:
            ValueError: the image is not ``src_size`` (and no ``box``), or an unknown ``resample``.
        """
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        if box is None and tuple(image.size) != tuple(self.src_size):
            raise ValueError(f"image is {image.size[0]}x{image.size[1]}, transform expects "
                             f"{self.src_size[0]}x{self.src_size[1]}")
        whole = (0, 0, *image.size)
        if tuple(image.size) != tuple(self.resized) or (box is not None and tuple(box) != whole):
            image = image.resize(self.resized, _RESAMPLE[resample], box=box)
        x0, y0 = self.crop_xy
        if (x0, y0) != (0, 0) or tuple(self.out_size) != tuple(self.resized):
            image = image.crop((x0, y0, x0 + self.out_size[0], y0 + self.out_size[1]))  # zeros outside
        return image


def parse_image_size(text: str) -> tuple[int, int]:
    """``"400x224"`` (WIDTHxHEIGHT, the command-line form) -> ``(400, 224)``.

    Raises:
        ValueError: not two positive integers joined by ``x``.
    """
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT such as 800x450, got '{text}'") from None
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got '{text}'")
    return w, h


def plain_resize(src_size, out_size) -> ResizeCrop:
    """Validation transform: resize ``src_size`` to ``out_size`` (both ``(width, height)``), no crop."""
    return ResizeCrop(tuple(src_size), tuple(out_size), (0, 0), tuple(out_size))


def random_resize_crop(src_size, out_size, rng: np.random.Generator, scale_range=(0.8, 1.2),
                       crop_jitter_px: int | None = None) -> ResizeCrop:
    """Simple-BEV's train-time transform: resize to ``out_size * U(scale_range)``, crop ``out_size`` jittered.

    Args:
        src_size, out_size: ``(width, height)`` pixels.
        rng: the only source of randomness (three uniform draws: scale, x jitter, y jitter).
        scale_range: ``(lo, hi)`` of the resize factor relative to ``out_size``.
        crop_jitter_px: maximum crop offset from centred, px; None = ``int(H_out * (1 - lo))`` (Simple-BEV).

    Raises:
        ValueError: an empty or non-positive ``scale_range`` or a negative jitter.
    """
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
    W, H = out_size
    jitter = int(H * (1 - lo)) if crop_jitter_px is None else int(crop_jitter_px)
    if jitter < 0:
        raise ValueError(f"crop_jitter_px must be >= 0, got {crop_jitter_px}")
    s = rng.uniform(lo, hi)
    rw, rh = max(1, int(W * s)), max(1, int(H * s))
    x0 = int((rw - W) / 2) + int(rng.uniform(-jitter, jitter))
    y0 = int((rh - H) / 2) + int(rng.uniform(-jitter, jitter))
    return ResizeCrop(tuple(src_size), (rw, rh), (x0, y0), (W, H))


def decode_jpeg(data: bytes, transform: ResizeCrop | None = None, resample: str = "bilinear",
                name: str = "image") -> np.ndarray:
    """Decode JPEG (or any Pillow-readable) bytes to RGB, resized/cropped by ``transform``.

    For downscaling, the JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain first (Pillow's
    ``draft``, the largest reduction still at least the resized size), then resized from the exact region
    that holds the full image, so the geometry is that of :class:`ResizeCrop` on the full-size image. At
    1600 x 900 -> 400 x 224 this is ~2.5x faster than decoding in full.

    Args:
        data: encoded image bytes.
        transform: None = decode as is.
        resample: see :meth:`ResizeCrop.apply`.
        name: used in error messages (e.g. the shard member).

    Returns:
        (H, W, 3) uint8, the ``transform.out_size`` image.

    Raises:
        ValueError: naming ``name``: undecodable or truncated bytes, or an image whose size is not
            ``transform.src_size``.
    """
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if transform is not None and tuple(img.size) != tuple(transform.src_size):
            w, h = transform.src_size
            raise ValueError(f"is {img.size[0]}x{img.size[1]}, expected {w}x{h}")
        box = None
        if transform is not None and img.format == "JPEG":
            drafted = img.draft("RGB", transform.resized)
            box = drafted[1] if drafted and img.size != tuple(transform.src_size) else None
        img = img.convert("RGB")  # decodes: truncated or corrupt data raise here
        if transform is not None:
            img = transform.apply(img, resample, box=box)
        return np.asarray(img)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ...
        raise ValueError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
