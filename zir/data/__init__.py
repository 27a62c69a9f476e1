"""Datasets: the data contract, readers and writers of formats, synthetic scenes, checks."""
