"""hpa_batch: Human Protein Atlas immunofluorescence images from raw files to per-cell tables."""

__version__ = "0.1.0"

#: Canonical channel order of every array the pipeline writes: (red, green, blue, yellow).
CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: What each channel shows in HPA images.
CHANNEL_STAINS: dict[str, str] = {
    "red": "microtubules",
    "green": "protein",
    "blue": "nucleus",
    "yellow": "endoplasmic reticulum",
}
#: Display colours (RRGGBB) used in OME-Zarr omero metadata and composites.
CHANNEL_COLORS: dict[str, str] = {
    "red": "FF0000",
    "green": "00FF00",
    "blue": "0000FF",
    "yellow": "FFFF00",
}
