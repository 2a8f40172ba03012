"""The CILP cubes-and-spheres folder layout (the NVIDIA DLI assessment's data, or our synthetic copy) and its reader.

Layout under a root folder, one sub-folder per class (``CLASSES``; label = position in it)::

    ROOT/{cubes,spheres}/rgb/NNNN.png     RGBA image, 64 x 64, uint8
    ROOT/{cubes,spheres}/lidar/NNNN.npy   float32 (64, 64) range image: rows = azimuth beams,
                                          columns = zenith beams, metres; a miss is stored as 50 m
    ROOT/{cubes,spheres}/azimuth.npy      float32 (64,) beam azimuths of that class folder, rad
    ROOT/{cubes,spheres}/zenith.npy       float32 (64,) beam zeniths of that class folder, rad

An RGB image and a range image with the same stem (``NNNN``) are one pair: camera and LiDAR looking at
the same scene. :mod:`shards.synthetic.cilp` writes this layout; a real download has the same one, and
:func:`scan_cilp_folder` reads either for :mod:`shards.cilp`, which packs the pairs into shards.
"""

from __future__ import annotations

from pathlib import Path

#: class folder names; a sample's label is its class's index here (0 = cubes, 1 = spheres)
CLASSES = ("cubes", "spheres")


def scan_cilp_folder(root: str | Path) -> list[dict]:
    """Every (rgb, lidar) pair of the layout, sorted by class then index.

    Returns:
        One dict per pair: ``class`` (folder name), ``label`` (int), ``index`` (int stem, or the stem string
        when it is not a number), ``stem``, and the paths ``rgb``, ``lidar``, ``azimuth``, ``zenith``.

    Raises:
        FileNotFoundError: naming the missing folder or file; ValueError: an RGB image without its range
        image (or the reverse).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CILP folder '{root}' does not exist")
    items = []
    for label, cls in enumerate(CLASSES):
        base = root / cls
        for sub in ("rgb", "lidar"):
            if not (base / sub).is_dir():
                raise FileNotFoundError(f"'{base / sub}' is missing (expected {{cubes,spheres}}/{{rgb,lidar}}/)")
        for name in ("azimuth.npy", "zenith.npy"):
            if not (base / name).is_file():
                raise FileNotFoundError(f"'{base / name}' is missing")
        rgb = {p.stem: p for p in (base / "rgb").glob("*.png")}
        lidar = {p.stem: p for p in (base / "lidar").glob("*.npy")}
        unmatched = sorted(set(rgb) ^ set(lidar))
        if unmatched:
            raise ValueError(f"{base}: {len(unmatched)} samples lack their RGB or LiDAR file, e.g. '{unmatched[0]}'")
        for stem in sorted(rgb, key=lambda s: (len(s), s)):
            items.append({"class": cls, "label": label, "index": int(stem) if stem.isdigit() else stem,
                          "stem": stem, "rgb": rgb[stem], "lidar": lidar[stem],
                          "azimuth": base / "azimuth.npy", "zenith": base / "zenith.npy"})
    return items
