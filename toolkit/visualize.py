"""Preview pictures of one multi-sensor sample: the six cameras with boxes and LiDAR points drawn in, and a
top-down view of the LiDAR points with the BEV targets.

``python -m toolkit.visualize --shards 'data/shards/x/val-*.tar' [--index N | --key KEY] --out DIR``
``python -m toolkit.visualize --dataroot D --version V [--sample-token T | --index N] --out DIR``

Writes ``DIR/<name>_cameras.png`` (2 x 3 grid in nuScenes layout: FRONT_LEFT, FRONT, FRONT_RIGHT /
BACK_LEFT, BACK, BACK_RIGHT; 3D box edges clipped at the near plane, front faces red; points coloured by
depth) and ``DIR/<name>_bev.png`` (forward up, ego left on the left: LiDAR points by height with box
footprints; seg with the ignored cells of ``valid``; centre heat map with offset arrows). Both go through
the same decode as training (:func:`toolkit.data.multisensor.decode_multisensor`): a dataroot sample is
encoded in memory exactly as the shard builder would store it.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from pathlib import Path

import numpy as np

from toolkit.bev.boxes import box_corners, box_footprints
from toolkit.data.multisensor import MultiSensorConfig, decode_multisensor, read_sample
from toolkit.datasets.nuscenes import CAMERAS
from toolkit.files import write_bytes

__all__ = ["sample_from_shards", "sample_from_dataroot", "camera_picture", "bev_picture", "main"]

_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
_COLOURS = {"vehicle.": (255, 158, 0), "human.": (0, 120, 255), "movable_object.": (140, 140, 140),
            "animal": (160, 0, 200), "static_object.": (0, 200, 120)}


def _colour(category: str) -> tuple[int, int, int]:
    return next((c for p, c in _COLOURS.items() if category.startswith(p)), (255, 255, 255))


def sample_from_shards(shards: str, index: int = 0, key: str | None = None) -> dict:
    """The raw sample (bytes) number ``index`` of ``shards`` (in shard order), or the one named ``key``.

    Raises:
        ShardListError: no shards; KeyError: no such sample.
    """
    import webdataset as wds

    from toolkit.data.pipeline import expand_shards

    for i, sample in enumerate(wds.WebDataset(expand_shards(shards), shardshuffle=False, empty_check=False)):
        if (key is None and i == index) or sample["__key__"] == key:
            return sample
    raise KeyError(f"no sample {'key ' + repr(key) if key else 'index %d' % index} in '{shards}'")


def sample_from_dataroot(dataroot: str, version: str, sample_token: str | None = None, index: int = 0,
                         sweeps: int = 0) -> dict:
    """A dataroot keyframe encoded in memory as :mod:`shards.nuscenes_multisensor` stores it (original JPEGs).

    Raises:
        DatarootError, KeyError: missing dataroot, version, sample or channel; IndexError: bad ``index``.
    """
    from toolkit.data.multisensor import encode_keyframe
    from toolkit.datasets.nuscenes import load_nuscenes, read_keyframe

    nusc = load_nuscenes(dataroot, version)
    if sample_token is None:
        if not 0 <= index < len(nusc.sample):
            raise IndexError(f"--index {index} out of range: the dataroot has {len(nusc.sample)} samples")
        sample_token = sorted(nusc.sample, key=lambda s: s["timestamp"])[index]["token"]
    return encode_keyframe(read_keyframe(nusc, sample_token, sweeps=sweeps))


def _draw_points(img: np.ndarray, uv: np.ndarray, depth: np.ndarray, max_depth: float) -> None:
    from matplotlib import colormaps

    colours = (colormaps["turbo"](np.clip(depth / max_depth, 0, 1))[:, :3] * 255).astype(np.uint8)
    H, W = img.shape[:2]
    u, v = np.round(uv).astype(int).T
    dots = (0, 1) if W >= 600 else (0,)  # 2 x 2 px dots on large tiles, 1 px on small ones
    for du in dots:
        for dv in dots:
            ok = (u + du < W) & (v + dv < H)
            img[v[ok] + dv, u[ok] + du] = colours[ok]


def camera_picture(sample: dict, camera_width: int = 400, max_depth_m: float = 60.0, near_m: float = 0.2,
                   points: bool = True):
    """The 2 x 3 camera picture of a raw multi-sensor sample (boxes and LiDAR points drawn in).

    Args:
        sample: raw shard sample (bytes values).
        camera_width: width of each camera tile, px (height follows the stored aspect ratio).
        max_depth_m: depth at the end of the point colour map (turbo), m.
        near_m: box edges are clipped at this camera depth, m.

    Returns:
        A ``PIL.Image`` (RGB), 3 tiles wide and 2 high.
    """
    from PIL import Image, ImageDraw

    from toolkit.camera.geometry import in_image, invert_rigid, project_ego_points

    arrays, meta = read_sample(sample)
    w0, h0 = meta["image_sizes"][0]
    W, H = camera_width, max(1, round(camera_width * h0 / w0))
    d = decode_multisensor(sample, np.random.default_rng(0),
                           MultiSensorConfig(image_height=H, image_width=W, max_points=0, targets=False))
    order = [meta["cameras"].index(c) for c in CAMERAS] if set(CAMERAS) <= set(meta["cameras"]) \
        else list(range(len(meta["cameras"])))
    corners = box_corners(arrays["boxes"])
    canvas = Image.new("RGB", (3 * W, H * ((len(order) + 2) // 3)))
    for slot, i in enumerate(order):
        img = d["images"][i].transpose(1, 2, 0).copy()
        K, cam2ego = d["intrinsics"][i].astype(np.float64), arrays["cam2keyego"][i]
        if points:
            uv, depth = project_ego_points(arrays["points"][:, :3], K, cam2ego)
            keep = in_image(uv, depth, W - 1, H - 1, min_depth=1.0)
            _draw_points(img, uv[keep], depth[keep], max_depth_m)
        tile = Image.fromarray(img)
        draw = ImageDraw.Draw(tile)
        ego2cam = invert_rigid(cam2ego)
        for box, c in zip(arrays["boxes"], corners):
            pc = c @ ego2cam[:3, :3].T + ego2cam[:3, 3]
            if (pc[:, 2] < near_m).all():
                continue
            for k, (a, b) in enumerate(_EDGES):
                pa, pb = pc[a].copy(), pc[b].copy()
                if pa[2] < near_m and pb[2] < near_m:
                    continue
                for p, q in ((pa, pb), (pb, pa)):  # clip the segment at the near plane
                    if p[2] < near_m:
                        p[:] = p + (q - p) * (near_m - p[2]) / (q[2] - p[2])
                uv = (np.stack([pa, pb]) @ K.T)
                uv = uv[:, :2] / uv[:, 2:]
                colour = (255, 40, 40) if k < 4 else _colour(str(box["category"]))
                draw.line([tuple(uv[0]), tuple(uv[1])], fill=colour, width=max(1, W // 300))
        draw.text((4, 2), meta["cameras"][i], fill=(255, 255, 255))
        canvas.paste(tile, ((slot % 3) * W, (slot // 3) * H))
    return canvas


def bev_picture(sample: dict, cfg: MultiSensorConfig | None = None, view_m: float | None = None,
                arrow_every: int = 2, dpi: int = 80):
    """Top-down picture: LiDAR points (by height) and box footprints; seg and ignored cells; centre heat
    map with offset arrows. Forward (ego +x) is up, ego left (+y) is on the left.

    Args:
        sample: raw shard sample; cfg: the decode (grid, categories, sigma) whose targets to show.
        view_m: half-width of the shown square around the ego, m (None = the whole grid).
        arrow_every: draw the offset of every n-th cell in each direction.

    Returns:
        A ``PIL.Image`` (RGB).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon
    from PIL import Image

    cfg = cfg or MultiSensorConfig()
    arrays, meta = read_sample(sample)
    d = decode_multisensor(sample, np.random.default_rng(0),
                           dataclasses.replace(cfg, max_points=0, image_height=8, image_width=8, augment=False))
    grid = cfg.grid()
    (x0, x1), (y0, y1) = grid.x_bounds, grid.y_bounds
    extent = (y0, y1, x0, x1)  # imshow(origin="lower"): row 0 (x0) at the bottom; the x limits flip y below
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), dpi=dpi)
    pts = arrays["points"]
    inside = (pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1)
    axes[0].scatter(pts[inside, 1], pts[inside, 0], c=np.clip(pts[inside, 2], -2, 4), cmap="viridis", s=0.3,
                    linewidths=0)
    for box, fp in zip(arrays["boxes"], box_footprints(arrays["boxes"])):
        axes[0].add_patch(Polygon(fp[:, ::-1], closed=True, fill=False, lw=0.8,
                                  ec=np.array(_colour(str(box["category"]))) / 255))
    axes[0].set_title(f"LiDAR (colour: height) + boxes, {len(arrays['boxes'])} boxes")
    seg, valid = d["seg"][0], d["valid"][0]
    rgb = np.ones((*seg.shape, 3))
    rgb[seg > 0] = (1.0, 0.62, 0.0)
    rgb[valid == 0] = (0.85, 0.1, 0.1)
    axes[1].imshow(rgb, origin="lower", extent=extent, interpolation="nearest")
    axes[1].set_title(f"seg (orange), valid = 0 (red); {int(seg.sum())} cells")
    axes[2].imshow(d["center"][0], origin="lower", extent=extent, cmap="magma", vmin=0, vmax=1,
                   interpolation="nearest")
    r, c = np.nonzero(seg > 0)
    pick = (r % arrow_every == 0) & (c % arrow_every == 0)
    r, c = r[pick], c[pick]
    xy = grid.index_to_ego(np.stack([r, c], 1))
    off = d["offset"][:, r, c] * grid.resolution  # (row, col) cells -> (dx, dy) m
    axes[2].imshow(np.where(seg > 0, 1.0, np.nan), origin="lower", extent=extent, cmap="Greys", vmin=0, vmax=3,
                   alpha=0.5, interpolation="nearest")
    axes[2].quiver(xy[:, 1], xy[:, 0], off[1], off[0], angles="xy", scale_units="xy", scale=1, color="cyan",
                   width=0.003, headwidth=4, headlength=4, headaxislength=3.5)
    axes[2].set_title(f"center (sigma {cfg.sigma_cells:g} cells) + offsets to centres")
    half = view_m
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xlim((half, -half) if half else (y1, y0))  # +y (left) on the left
        ax.set_ylim((-half, half) if half else (x0, x1))
        ax.plot([0], [0], marker=(3, 0, 0), color="red", ms=8)  # the ego, pointing forward
        ax.set_xlabel("ego y (m, left +)")
        ax.set_ylabel("ego x (m, forward +)")
    fig.suptitle(f"{meta['scene_name']} {meta['sample_token']}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _save(image, path: Path, colors: int) -> Path:
    if colors:
        image = image.quantize(colors, method=2)  # median cut, fixed (no dithering randomness)
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolkit.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="multi-sensor shard spec (brace pattern or glob)")
    src.add_argument("--dataroot", help="nuScenes dataroot (read through the devkit)")
    p.add_argument("--version", default="v1.0-mini", help="table version with --dataroot (default v1.0-mini)")
    p.add_argument("--index", type=int, default=0, help="sample number (shard order / time order; default 0)")
    p.add_argument("--key", help="sample key with --shards (overrides --index)")
    p.add_argument("--sample-token", help="sample token with --dataroot (overrides --index)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="preview", help="file name prefix: NAME_cameras.png, NAME_bev.png")
    p.add_argument("--camera-width", type=int, default=400, help="width of each camera tile, px (default 400)")
    p.add_argument("--view", type=float, default=None, help="half-width of the BEV view, m (default: whole grid)")
    p.add_argument("--dpi", type=int, default=80, help="resolution of the BEV figure (default 80: 1200 x 432 px)")
    p.add_argument("--colors", type=int, default=0, help="quantise PNGs to this many colours (0 = full colour)")
    args = p.parse_args(argv)
    try:
        sample = (sample_from_shards(args.shards, args.index, args.key) if args.shards else
                  sample_from_dataroot(args.dataroot, args.version, args.sample_token, args.index))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = [_save(camera_picture(sample, args.camera_width), out / f"{args.name}_cameras.png", args.colors),
                   _save(bev_picture(sample, view_m=args.view, dpi=args.dpi), out / f"{args.name}_bev.png",
                         args.colors)]
    except (FileNotFoundError, KeyError, ValueError, IndexError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
