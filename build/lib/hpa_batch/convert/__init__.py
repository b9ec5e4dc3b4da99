"""Stage 1 (workflow/rules/convert.smk): shard plan, admission manifests, image decoding, conversion to OME-Zarr, refusal QC, store validation."""
