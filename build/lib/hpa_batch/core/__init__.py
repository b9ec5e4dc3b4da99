"""Shared parts of every stage: label catalogs, registries, logging/progress, typed tables and the atomic-write helper, OME-NGFF writing, the driver lock, metrics."""
