"""Datasets: generated image sets, folder-of-class-folders -> TFRecords
conversion, reading converted datasets, and downloads."""
