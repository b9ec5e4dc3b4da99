"""The report's HTML pieces: sections, notes, sortable tables, embedded PNGs, and :class:`Figures`
(every figure as it is made, for the PNG files beside the page)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from hpa_batch.core.atomic import atomic_path

DEEP, BASE = "#3465a4", "#f57900"


@dataclass
class Figures:
    """The report's PNG figures by section, in the order they were made (written as files for
    Snakemake's own report by :meth:`write`)."""

    by_section: dict[str, list[bytes]] = field(default_factory=dict)

    def add(self, section: str, png: bytes) -> bytes:
        self.by_section.setdefault(section, []).append(png)
        return png

    def write(self, folder: Path) -> list[Path]:
        """``<section>-<k>.png`` files in ``folder`` (replaced as a whole, :func:`~hpa_batch.core.atomic.atomic_path`)."""
        folder = Path(folder)
        written = []
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            for sid, pngs in self.by_section.items():
                for k, png in enumerate(pngs):
                    (tmp / f"{sid}-{k}.png").write_bytes(png)
                    written.append(folder / f"{sid}-{k}.png")
        return written


def kept_png(png: bytes, figures: Figures | None, section: str) -> bytes:
    return figures.add(section, png) if figures is not None else png


def fig_png(fig: plt.Figure, figures: Figures | None = None, section: str = "") -> str:
    """The figure as an embedded PNG (closed; kept in ``figures`` under ``section`` when given)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return img_tag(kept_png(buf.getvalue(), figures, section))


def img_tag(png: bytes, title: str = "", width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return (
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(title)}"'
        f' title="{html.escape(title)}"{w}>'
    )


def array_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def html_section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def html_note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def fmt_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def html_table(df: pd.DataFrame, sortable: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{fmt_value(v)}</td>" for v in r) + "</tr>" for r in df.itertuples(index=False)
    )
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


#: Click-to-sort for tables of class ``sortable`` (numbers numerically, text alphabetically).
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
  const key = tr => { const t = tr.cells[col].textContent; const v = parseFloat(t);
                      return isNaN(v) ? t : v; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); }).forEach(r => body.appendChild(r));
}));
"""


CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1150px;color:#222}
h1{margin-bottom:0}nav a{margin-right:.8em;font-size:.9em}section{border-top:1px solid #ccc;margin-top:1.5em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px}
th{background:#f0f0f0}.grid{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;text-align:center;font-size:.75em}
.tile img{image-rendering:pixelated}.flag{color:#b00}figcaption{max-width:384px}
table.sortable th{cursor:pointer}pre{background:#f7f7f7;padding:.6em;font-size:.75em;max-height:30em;overflow:auto}
.note{color:#555;font-size:.85em}
"""
