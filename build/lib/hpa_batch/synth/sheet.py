"""Contact sheet of composites."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from hpa_batch import CHANNELS
from hpa_batch.core.labels import get_catalog
from hpa_batch.results.viz import composite
from hpa_batch.synth.common import FORMATS

# --------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------


def _read_channel(images_dir: Path, image_id: str, channel: str) -> np.ndarray:
    """Read ``{ID}_{channel}.{png,tif,jpg}`` as a 2-D array."""
    for ext in FORMATS:
        path = images_dir / f"{image_id}_{channel}.{ext}"
        if path.exists():
            if ext == "tif":
                return np.asarray(tifffile.imread(path))
            return np.asarray(imagecodecs.imread(path.read_bytes()))
    raise FileNotFoundError(f"no {channel} image for {image_id} in {images_dir}")


def contact_sheet(
    dataset_dir: str | Path,
    out_png: str | Path,
    n: int = 4,
    size: int = 512,
    *,
    catalog: str | None = None,
) -> Path:
    """Grid of RGB composites of a synthetic (or real) HPA dataset.

    Parameters
    ----------
    dataset_dir : str or Path
        Dataset root with ``train.csv`` and ``images/``.
    out_png : str or Path
        Output 8-bit RGB PNG (``ceil(sqrt(n))`` columns of ``size`` px tiles).
    n : int
        Number of images; one per cell line first, in ``train.csv`` order.
    size : int
        Tile size in px.
    catalog : str, optional
        Label catalog of ``train.csv``; when given, tiles are captioned with class names
        instead of ids.

    Returns
    -------
    Path
        ``out_png``.
    """
    from PIL import Image, ImageDraw, ImageFont

    root = Path(dataset_dir)
    with (root / "train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    first_of_line: dict[str, int] = {}
    for i, r in enumerate(rows):
        first_of_line.setdefault(r["Cell_line"], i)
    firsts = sorted(first_of_line.values())
    chosen = set(firsts)
    order = firsts + [i for i in range(len(rows)) if i not in chosen]
    picked = [rows[i] for i in order[:n]]
    if not picked:
        raise ValueError(f"no images in {root / 'train.csv'}")
    cat = get_catalog(catalog) if catalog else None
    cols = math.ceil(math.sqrt(len(picked)))
    nrows = math.ceil(len(picked) / cols)
    sheet = Image.new("RGB", (cols * size, nrows * size))
    try:
        font = ImageFont.load_default(size=max(10, size // 30))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for i, row in enumerate(picked):
        stack = np.stack([_read_channel(root / "images", row["ID"], c) for c in CHANNELS])
        tile = Image.fromarray(composite(stack)).resize((size, size), Image.Resampling.LANCZOS)
        label = row["Label"]
        if cat is not None and label:
            tokens = label.split(cat.separator) if cat.separator.strip() else label.split()
            label = ", ".join(cat.classes[int(t)].split(" and ")[0] for t in tokens)
        caption = f"{row['Cell_line']}: {label}"
        ImageDraw.Draw(tile).text((6, 4), caption, fill=(255, 255, 255), font=font)
        sheet.paste(tile, ((i % cols) * size, (i // cols) * size))
    out_path = Path(out_png)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path, format="PNG")
    return out_path
