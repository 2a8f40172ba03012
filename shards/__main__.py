"""Shard builders and synthetic data generators: ``python -m shards <command> --help``.

Commands:
  synthetic-nuscenes   write a synthetic nuScenes dataroot (ray-cast HDL-32E streets, v1.0 tables)
  nuscenes-lidar       nuScenes dataroot (real or synthetic) -> LiDAR range-map WebDataset shards
  nuscenes             nuScenes dataroot -> multi-sensor shards (six cameras, LiDAR, boxes per keyframe)
  synthetic-cilp       write cubes/spheres RGB + LiDAR pairs in the CILP folder layout
  cilp                 CILP folder layout (synthetic or the real download) -> RGB + LiDAR shards
"""

from __future__ import annotations

import argparse
import os
import sys


def _synthetic_nuscenes(args) -> int:
    from shards.synthetic.camera_rig import parse_image_size
    from shards.synthetic.nuscenes_dataroot import generate_dataroot

    image_size = parse_image_size(args.image_size)
    out = generate_dataroot(args.out, scenes=args.scenes, samples_per_scene=args.samples, seed=args.seed,
                            version=args.version, workers=args.workers, overwrite=args.overwrite,
                            cameras=args.cameras, image_size=image_size)
    sensors = f"LIDAR_TOP + 6 cameras {image_size[0]}x{image_size[1]}" if args.cameras else "LIDAR_TOP only"
    print(f"synthetic nuScenes dataroot: {out} ({args.scenes} scenes x {args.samples} samples, {sensors}, "
          f"version {args.version}, seed {args.seed})")
    return 0


def _nuscenes_lidar(args) -> int:
    from shards.nuscenes_lidar import build_nuscenes_lidar_shards

    info = build_nuscenes_lidar_shards(args.dataroot, args.version, args.out, split=args.split,
                                       val_fraction=args.val_fraction, seed=args.seed, maxcount=args.maxcount,
                                       maxsize=args.maxsize, min_range_m=args.min_range, max_range_m=args.max_range)
    for name, s in info["splits"].items():
        print(f"{name}: {s['samples']} scans in {len(s['shards'])} shards  ->  {s['pattern']}")
    print(f"wrote {os.path.join(args.out, 'info.json')}")
    return 0


def _image_size(text: str) -> tuple[int, int]:
    """argparse type of ``WIDTHxHEIGHT``."""
    from toolkit.camera.augment import parse_image_size

    try:
        return parse_image_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _nuscenes(args) -> int:
    from shards.nuscenes_multisensor import build_nuscenes_multisensor_shards

    splits = [s for s in args.split.split(",") if s] if args.split else None
    info = build_nuscenes_multisensor_shards(args.dataroot, args.version, args.out, splits=splits,
                                             val_fraction=args.val_fraction, seed=args.seed,
                                             image_size=args.image_size, sweeps=args.sweeps,
                                             min_range_m=args.min_range, jpeg_quality=args.jpeg_quality,
                                             maxcount=args.maxcount, maxsize=args.maxsize)
    for name, s in info["splits"].items():
        print(f"{name}: {s['samples']} keyframes ({len(s['scenes'])} scenes) in {len(s['shards'])} shards  ->  "
              f"{s['pattern']}")
    for name in info["empty_splits"]:
        print(f"{name}: none of its scenes is in this dataroot, no shards")
    print(f"wrote {os.path.join(args.out, 'info.json')}")
    return 0


def _synthetic_cilp(args) -> int:
    from shards.synthetic.cilp import generate_cilp_folder

    out = generate_cilp_folder(args.out, per_class=args.per_class, seed=args.seed, workers=args.workers,
                               overwrite=args.overwrite, pose=args.pose)
    print(f"synthetic CILP folder: {out} ({args.per_class} cubes + {args.per_class} spheres, seed {args.seed}, "
          f"pose {args.pose})")
    return 0


def _cilp(args) -> int:
    from shards.cilp import build_cilp_shards

    info = build_cilp_shards(args.root, args.out, val_fraction=args.val_fraction, seed=args.seed,
                             maxcount=args.maxcount, maxsize=args.maxsize)
    for name, s in info["splits"].items():
        print(f"{name}: {s['samples']} pairs {s['per_class']} in {len(s['shards'])} shards  ->  {s['pattern']}")
    print(f"wrote {os.path.join(args.out, 'info.json')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from toolkit.cli import Parser, float_at_least, float_below, int_at_least

    pos, nonneg = int_at_least(1), int_at_least(0)
    p = Parser(prog="python -m shards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    s = sub.add_parser("synthetic-nuscenes", help="write a synthetic nuScenes dataroot",
                       description="Write a nuScenes-format dataroot (v1.0 tables + LIDAR_TOP .pcd.bin + six "
                                   "camera JPEGs) of ray-cast HDL-32E sweeps and pinhole images of procedural "
                                   "streets. Deterministic from --seed.")
    s.add_argument("--out", required=True, help="dataroot folder to create")
    s.add_argument("--scenes", type=pos, default=8, help="number of scenes (default 8)")
    s.add_argument("--samples", type=pos, default=20, help="keyframes per scene, 2 Hz (default 20)")
    s.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    s.add_argument("--version", default="v1.0-mini", help="table folder name (default v1.0-mini)")
    s.add_argument("--workers", type=pos, default=max(1, min(4, os.cpu_count() or 1)),
                   help="processes rendering scenes (output does not depend on it)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.add_argument("--cameras", action=argparse.BooleanOptionalAction, default=True,
                   help="render the six nuScenes cameras (default on; --no-cameras: LIDAR_TOP only)")
    s.add_argument("--image-size", default="800x450", metavar="WxH",
                   help="camera image size in px, intrinsics scaled to it (default 800x450)")
    s.set_defaults(func=_synthetic_nuscenes)

    n = sub.add_parser("nuscenes-lidar", help="nuScenes dataroot -> LiDAR range-map shards",
                       description="Read LIDAR_TOP keyframes through nuscenes-devkit and write one WebDataset "
                                   "sample per scan: range map (m), intensity, validity mask, per-pixel "
                                   "azimuth/elevation and metadata. Written atomically (NAME.tar.tmp -> NAME.tar).")
    n.add_argument("--dataroot", required=True, help="nuScenes dataroot (real or synthetic)")
    n.add_argument("--version", default="v1.0-mini", help="table version (default v1.0-mini)")
    n.add_argument("--out", required=True, help="output folder for train-*.tar, val-*.tar, info.json")
    n.add_argument("--split", default=None, help="official nuScenes split name (mini_train, train, val, ...)")
    n.add_argument("--val-fraction", type=float_below(0, 1), default=0.0, help="fraction of scenes held out to val-*.tar")
    n.add_argument("--seed", type=int, default=0, help="seed of the scene split")
    n.add_argument("--maxcount", type=pos, default=1000, help="samples per shard at most (default 1000)")
    n.add_argument("--maxsize", type=float_at_least(0, strict=True), default=1e9, help="bytes per shard at most (default 1e9)")
    n.add_argument("--min-range", type=float_at_least(0), default=1.0, help="validity mask lower bound, m (default 1)")
    n.add_argument("--max-range", type=float_at_least(0, strict=True), default=200.0, help="validity mask upper bound, m (default 200)")
    n.set_defaults(func=_nuscenes_lidar)

    m = sub.add_parser("nuscenes", help="nuScenes dataroot -> multi-sensor shards (cameras, LiDAR, boxes)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="One WebDataset sample per keyframe, read through nuscenes-devkit:\n"
                                   "  - the six camera JPEGs (CAM_FRONT_LEFT, CAM_FRONT, CAM_FRONT_RIGHT,\n"
                                   "    CAM_BACK_LEFT, CAM_BACK, CAM_BACK_RIGHT), their intrinsics and camera->ego\n"
                                   "    transforms (the calibrated one, and the exact camera->keyframe-ego one\n"
                                   "    with the ego motion)\n"
                                   "  - LIDAR_TOP points (x, y, z, intensity, ring[, time lag]) in the keyframe\n"
                                   "    ego frame\n"
                                   "  - the annotated boxes in the keyframe ego frame, the ego pose, tokens and\n"
                                   "    timestamps\n"
                                   "Format: toolkit/data/multisensor.py. Written atomically (.tar.tmp -> .tar).",
                       epilog="examples:\n"
                              "  python -m shards nuscenes --dataroot /data/sets/nuscenes --version v1.0-trainval \\\n"
                              "      --split train,val --out data/shards/nuscenes-cams --image-size 800x450\n"
                              "  python -m shards nuscenes --dataroot data/synthetic-nuscenes --version v1.0-mini \\\n"
                              "      --val-fraction 0.1 --out data/shards/synthetic-cams")
    m.add_argument("--dataroot", required=True, help="nuScenes dataroot (real or synthetic)")
    m.add_argument("--version", default="v1.0-mini", help="table version (default v1.0-mini)")
    m.add_argument("--out", required=True, help="output folder for <split>-*.tar and info.json")
    which = m.add_mutually_exclusive_group()
    which.add_argument("--split", default=None,
                       help="official nuScenes split(s), comma-separated (train,val / mini_train,mini_val / ...): "
                            "one shard set <split>-*.tar each")
    which.add_argument("--val-fraction", type=float_below(0, 1), default=0.0,
                       help="fraction of scenes held out to val-*.tar, the rest to train-*.tar (synthetic data)")
    m.add_argument("--seed", type=int, default=0, help="seed of the held-out scene choice (default 0)")
    m.add_argument("--image-size", type=_image_size, default=None, metavar="WxH",
                   help="resize every image to WIDTHxHEIGHT at build time (intrinsics rescaled, JPEG re-encoded); "
                        "default: the original files untouched")
    m.add_argument("--jpeg-quality", type=int_at_least(1), default=90, help="JPEG quality after --image-size (default 90)")
    m.add_argument("--sweeps", type=nonneg, default=0,
                   help="previous LiDAR sweeps added per keyframe (points get a time-lag column, s; default 0)")
    m.add_argument("--min-range", type=float_at_least(0), default=1.0,
                   help="drop points nearer than this to their sensor, m (ego roof, no-returns; default 1)")
    m.add_argument("--maxcount", type=pos, default=100, help="samples per shard at most (default 100)")
    m.add_argument("--maxsize", type=float_at_least(0, strict=True), default=1e9, help="bytes per shard at most (default 1e9)")
    m.set_defaults(func=_nuscenes)

    c = sub.add_parser("synthetic-cilp", help="write cubes/spheres RGB + LiDAR pairs in the CILP layout",
                       description="Ray-trace cubes and spheres on a ground plane: 64x64 RGBA PNG and 64x64 LiDAR "
                                   "range image (.npy, rows azimuth x columns zenith, miss = 50 m) per scene, in "
                                   "{cubes,spheres}/{rgb,lidar}/ with azimuth.npy and zenith.npy.")
    c.add_argument("--out", required=True, help="folder to create")
    c.add_argument("--per-class", type=pos, default=1000, help="samples per class (default 1000)")
    c.add_argument("--pose", choices=["fixed", "random"], default="fixed",
                   help="fixed: one sensor pose, objects moved near the origin (as the DLI data; default); "
                        "random: random sensor distance, height and bearing per scene")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workers", type=pos, default=max(1, min(4, os.cpu_count() or 1)))
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=_synthetic_cilp)

    k = sub.add_parser("cilp", help="CILP folder layout -> RGB + LiDAR shards",
                       description="Pack a CILP folder ({cubes,spheres}/{rgb,lidar}/...) into train/val WebDataset "
                                   "shards; the split is stratified by class, drawn with --seed and recorded in "
                                   "every sample and in info.json.")
    k.add_argument("--root", required=True, help="CILP folder (synthetic or the real download)")
    k.add_argument("--out", required=True, help="output folder")
    k.add_argument("--val-fraction", type=float_below(0, 1), default=0.2, help="held-out fraction per class (default 0.2)")
    k.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    k.add_argument("--maxcount", type=pos, default=500, help="samples per shard at most (default 500)")
    k.add_argument("--maxsize", type=float_at_least(0, strict=True), default=1e9, help="bytes per shard at most")
    k.set_defaults(func=_cilp)
    return p


def check_args(args) -> None:
    """Checks across options and of the paths, before any work: ``--min-range`` < ``--max-range``,
    ``--jpeg-quality`` <= 100, the inputs exist, ``--out`` can be created.

    Raises:
        ValueError: naming the flag(s) and the value or path.
    """
    from toolkit.cli import check_writable

    lo, hi = getattr(args, "min_range", None), getattr(args, "max_range", None)
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"--min-range ({lo:g} m) must be < --max-range ({hi:g} m)")
    if getattr(args, "jpeg_quality", 90) > 100:
        raise ValueError(f"--jpeg-quality must be in [1, 100], got {args.jpeg_quality}")
    for flag in ("dataroot", "root"):
        path = getattr(args, flag, None)
        if path is not None and not os.path.isdir(path):
            raise ValueError(f"--{flag} '{path}' does not exist or is not a folder")
    check_writable(args.out, "--out", folder=True)


def main(argv: list[str] | None = None) -> int:
    from toolkit.cli import error_line, expected_errors

    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return args.func(args)
    except expected_errors() as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
