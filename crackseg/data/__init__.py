"""Datasets, label preparation, sampling and the DataModule."""
