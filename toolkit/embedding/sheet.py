"""Contact sheets: the query image and its neighbours as one PNG, each thumbnail captioned."""

from __future__ import annotations

import io
from pathlib import Path

from toolkit.files import write_bytes


def _thumb(data: bytes, width: int):
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    height = max(1, round(img.height * width / img.width))
    return img.resize((width, height), Image.BILINEAR)


def contact_sheet(tiles: list[tuple[bytes, list[str]]], out: str | Path, thumb_width: int = 192,
                  columns: int = 4) -> Path:
    """Write a grid of captioned thumbnails to ``out`` (PNG, atomically).

    Args:
        tiles: (encoded image, caption lines) per tile; the first is the query (framed in red).
        thumb_width: px per thumbnail (heights keep each image's aspect; rows take the tallest).
        columns: tiles per row.

    Returns:
        ``out``.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line_h, pad = 12, 4
    thumbs = [(_thumb(data, thumb_width), caption) for data, caption in tiles]
    lines = max(len(c) for _, c in thumbs)
    cell_h = max(t.height for t, _ in thumbs) + lines * line_h + 2 * pad
    cell_w = thumb_width + 2 * pad
    cols = min(columns, len(thumbs))
    rows = (len(thumbs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (thumb, caption) in enumerate(thumbs):
        x, y = (i % cols) * cell_w + pad, (i // cols) * cell_h + pad
        sheet.paste(thumb, (x, y))
        if i == 0:
            draw.rectangle([x - 2, y - 2, x + thumb.width + 1, y + thumb.height + 1], outline=(220, 30, 30), width=2)
        for j, text in enumerate(caption):
            draw.text((x, y + thumb.height + 2 + j * line_h), text, fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    return write_bytes(out, buf.getvalue())
