"""Label catalogs of the HPA classification tasks and label-string parsing.

Two catalogs are known:

``hpa2021``
    The 19 classes of the 2021 single-cell challenge (18 = Negative); label strings use ``|``.
``hpa2018``
    The 28 classes of the 2018 image-level challenge; label strings use spaces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

HPA2021: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)

HPA2018: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Peroxisomes",
    "Endosomes",
    "Lysosomes",
    "Intermediate filaments",
    "Actin filaments",
    "Focal adhesion sites",
    "Microtubules",
    "Microtubule ends",
    "Cytokinetic bridge",
    "Mitotic spindle",
    "Microtubule organizing center",
    "Centrosome",
    "Lipid droplets",
    "Plasma membrane",
    "Cell junctions",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Cytoplasmic bodies",
    "Rods & rings",
)


@dataclass(frozen=True)
class LabelCatalog:
    """A named, ordered list of classes.

    Attributes
    ----------
    name : str
        ``"hpa2021"`` or ``"hpa2018"``.
    classes : tuple of str
        Class names; the index is the class id.
    separator : str
        Separator used by this catalog's metadata tables.
    negative : int or None
        Id of the Negative class, if the catalog has one.
    task : {"cell", "image"}
        What its competition scores, and so the submission format: ``"cell"`` (HPA 2021: one
        ``PredictionString`` of RLE masks per image) or ``"image"`` (HPA 2018: ``Id,Predicted``).
    """

    name: str
    classes: tuple[str, ...]
    separator: str
    negative: int | None
    task: Literal["cell", "image"] = "cell"

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def index(self, name: str) -> int:
        """Class id of a class name (case-insensitive).

        Raises
        ------
        KeyError
            If the name is not in the catalog.
        """
        lowered = {c.lower(): i for i, c in enumerate(self.classes)}
        try:
            return lowered[name.strip().lower()]
        except KeyError:
            raise KeyError(f"class {name!r} is not in catalog {self.name}") from None


CATALOGS: dict[str, LabelCatalog] = {
    "hpa2021": LabelCatalog("hpa2021", HPA2021, "|", 18),
    "hpa2018": LabelCatalog("hpa2018", HPA2018, " ", None, task="image"),
}


def get_catalog(name: str) -> LabelCatalog:
    """Return the catalog registered under ``name``.

    Raises
    ------
    ValueError
        For an unknown catalog name, listing the known ones.
    """
    try:
        return CATALOGS[name]
    except KeyError:
        raise ValueError(f"unknown label catalog {name!r}; known: {sorted(CATALOGS)}") from None


class LabelError(ValueError):
    """A label string that does not parse against its catalog."""


_SPLIT_AUTO = re.compile(r"[|\s;,]+")


def emitted_ids(text: object) -> list[int]:
    """Sorted class ids of an emitted (predicted) label string, whatever its separator (``| ; ,`` or
    whitespace); empty for ``None``/NaN/"". Thresholded outputs may combine any classes, Negative
    included, so no catalog rule is applied (metadata labels go through :func:`parse_labels`)."""
    if not isinstance(text, str) or not text.strip():
        return []
    return sorted({int(t) for t in _SPLIT_AUTO.split(text.strip()) if t})


def _tokens(raw: str, separator: str) -> list[str]:
    if separator == "auto":
        pattern = r"[|;,]" if re.search(r"[|;,]", raw) else r"\s+"
        return [t.strip() for t in re.split(pattern, raw) if t.strip()]
    if separator.strip() == "":
        return raw.split()
    return [t.strip() for t in raw.split(separator)]


def _class_id(tok: str, catalog: LabelCatalog, raw: str) -> int:
    """A token's class id: an integer id, or a class name of the catalog (case and spacing free)."""
    if re.fullmatch(r"\d+", tok):
        value = int(tok)
        if value >= catalog.n_classes:
            raise LabelError(f"label {value} is outside catalog {catalog.name} (0..{catalog.n_classes - 1})")
        return value
    try:
        return catalog.index(" ".join(tok.split()))
    except KeyError:
        pass
    raise LabelError(
        f"label {tok!r} (string {raw!r}) is neither a class id nor a class name of catalog "
        f"{catalog.name}: {', '.join(catalog.classes)}"
    )


def parse_labels(text: object, catalog: LabelCatalog, separator: str = "auto") -> tuple[int, ...]:
    """Parse a metadata label string into sorted, unique class ids.

    Parameters
    ----------
    text : str or int
        Label string such as ``"0|16"`` (2021), ``"0 16"`` (2018), a single id, or class names of the
        catalog (``"Nucleoplasm|Mitochondria"``, any case; names with spaces need a ``| ; ,``
        separator).
    catalog : LabelCatalog
        Catalog the ids must belong to.
    separator : str
        ``"|"``, ``" "`` or ``"auto"`` (``| ; ,`` when the string has one, else whitespace).

    Returns
    -------
    tuple of int
        Sorted unique class ids.

    Raises
    ------
    LabelError
        Empty string, a token that is neither a class id nor a class name of the catalog (the
        message lists the names), or an id outside the catalog.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        raise LabelError("no labels")
    raw = str(text).strip()
    if not raw:
        raise LabelError("no labels")
    ids = {_class_id(tok, catalog, raw) for tok in _tokens(raw, separator)}
    if catalog.negative is not None and catalog.negative in ids and len(ids) > 1:
        raise LabelError(f"Negative ({catalog.negative}) combined with other labels in {raw!r}")
    return tuple(sorted(ids))


def format_labels(ids: tuple[int, ...] | list[int], catalog: LabelCatalog) -> str:
    """Inverse of :func:`parse_labels` with the catalog's own separator."""
    return catalog.separator.join(str(i) for i in sorted(set(ids)))


def label_names(ids: Iterable[int], catalog: LabelCatalog) -> list[str]:
    """The class names of ``ids`` in class-id order (the ``*_names`` columns of the result tables)."""
    return [catalog.classes[i] for i in sorted({int(i) for i in ids})]
