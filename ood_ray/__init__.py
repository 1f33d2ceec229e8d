"""ood-ray: distributed image-dataset audit on Ray (statistics, extremes, duplicates, OOD scores)."""

__version__ = "0.1.0"
