"""Stage 2 (workflow/rules/cells.smk): segmentation backends, per-cell measurements, cell tiles."""
