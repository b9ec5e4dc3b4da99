"""Image and cell labels with HPA-like imbalance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from hpa_batch.core.labels import LabelCatalog
from hpa_batch.synth.common import CELL_PATTERN_P, NEGATIVE_CELL_P, NEGATIVE_IMAGE_P
from hpa_batch.synth.styles import DIFFUSE_PATTERNS, DOT_PATTERNS

# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------

# 2021 class name -> (relative frequency, compartment, allowed in mitotic cells)
_PATTERN_INFO: dict[str, tuple[float, str, bool]] = {
    "Nucleoplasm": (30.0, "nucleus", False),
    "Nuclear membrane": (3.0, "nucleus", False),
    "Nucleoli": (8.0, "nucleus", False),
    "Nucleoli fibrillar center": (3.0, "nucleus", False),
    "Nuclear speckles": (5.0, "nucleus", False),
    "Nuclear bodies": (5.0, "nucleus", False),
    "Endoplasmic reticulum": (4.0, "cytoplasm", True),
    "Golgi apparatus": (6.0, "cytoplasm", False),
    "Intermediate filaments": (3.0, "cytoplasm", False),
    "Actin filaments": (2.5, "cytoplasm", True),
    "Microtubules": (3.0, "cytoplasm", False),
    "Mitotic spindle": (0.6, "mitotic", True),
    "Centrosome": (3.0, "cytoplasm", False),
    "Plasma membrane": (8.0, "cytoplasm", True),
    "Mitochondria": (7.0, "cytoplasm", True),
    "Aggresome": (1.0, "cytoplasm", False),
    "Cytosol": (20.0, "cytoplasm", True),
    "Vesicles and punctate cytosolic patterns": (6.0, "cytoplasm", True),
}


@dataclass(frozen=True)
class _Pattern:
    """A renderable class of a catalog."""

    class_id: int
    name: str  # 2021 class name = key of PATTERN_RENDERERS
    weight: float
    mitotic_only: bool
    mitotic_ok: bool

    def allowed(self, mitotic: bool) -> bool:
        """Whether the pattern may be drawn on a (non-)mitotic cell."""
        return self.mitotic_ok if mitotic else not self.mitotic_only


@cache
def _pattern_space(catalog: LabelCatalog) -> tuple[_Pattern, ...]:
    """Renderable classes of ``catalog``, matched to the renderers by class name."""
    out: list[_Pattern] = []
    for name, (weight, compartment, mitotic_ok) in _PATTERN_INFO.items():
        try:
            cid = catalog.index(name)
        except KeyError:
            continue
        out.append(_Pattern(cid, name, weight, compartment == "mitotic", mitotic_ok))
    if not out:
        raise ValueError(f"catalog {catalog.name} has no class with a pattern renderer")
    return tuple(out)


def _draw_image_patterns(
    rng: np.random.Generator, catalog: LabelCatalog, forced: Sequence[str] | None, family: str = "any"
) -> list[_Pattern]:
    """Image-level patterns: [] means a Negative-only image; ``family`` restricts the draw."""
    space = _pattern_space(catalog)
    if forced is not None:
        if not forced and catalog.negative is None:
            raise ValueError(f"catalog {catalog.name} has no Negative class; give at least one pattern")
        by_name = {p.name.lower(): p for p in space}
        try:
            return [by_name[n.lower()] for n in forced]
        except KeyError as exc:
            raise ValueError(f"pattern {exc.args[0]!r} not renderable in {catalog.name}") from None
    if family != "any":
        names = DOT_PATTERNS if family == "dots" else DIFFUSE_PATTERNS
        space = tuple(p for p in space if p.name in names) or space
    elif catalog.negative is not None and rng.random() < NEGATIVE_IMAGE_P:
        return []
    k = min(int(rng.choice([1, 2, 3], p=[0.55, 0.33, 0.12])), len(space))
    w = np.array([p.weight for p in space])
    idx = rng.choice(len(space), size=k, replace=False, p=w / w.sum())
    return [space[i] for i in sorted(idx)]


def _assign_cell_patterns(
    rng: np.random.Generator,
    mitotic: Sequence[bool],
    image_patterns: list[_Pattern],
    catalog: LabelCatalog,
) -> list[list[_Pattern]]:
    """Per-cell pattern lists whose union is the image's (fixed up if needed)."""
    n = len(mitotic)
    cells: list[list[_Pattern]] = [[] for _ in range(n)]
    if not image_patterns:
        return cells
    has_spindle = any(p.mitotic_only for p in image_patterns)
    for i in range(n):
        eligible = [p for p in image_patterns if p.allowed(mitotic[i])]
        forced_spindle = mitotic[i] and has_spindle
        if not forced_spindle and rng.random() < NEGATIVE_CELL_P:
            continue
        chosen = [p for p in eligible if p.mitotic_only or rng.random() < CELL_PATTERN_P]
        if not chosen and eligible:
            chosen = [eligible[int(rng.integers(len(eligible)))]]
        cells[i] = chosen
    # Fix up: every image pattern must be on at least one cell.
    for p in image_patterns:
        if any(p in c for c in cells):
            continue
        hosts = [i for i in range(n) if p.allowed(mitotic[i])]
        if not hosts:
            continue
        positive = [i for i in hosts if cells[i]]
        pool = positive or hosts
        i = pool[int(rng.integers(len(pool)))]
        cells[i] = sorted([*cells[i], p], key=lambda q: q.class_id)
    # The union must not be empty for a positive image (e.g. spindle without mitosis).
    if not any(cells) and n:
        space = _pattern_space(catalog)
        i = next((j for j in range(n) if not mitotic[j]), 0)
        options = [p for p in space if p.allowed(mitotic[i])]
        cells[i] = [max(options, key=lambda q: q.weight)]
    return cells
