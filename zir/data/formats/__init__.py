"""Readers and writers of the dataset formats zir speaks; the only place where formats are converted.

``open_dataset(path)`` detects the format of a folder or annotation file and returns a
:class:`~zir.data.contract.DatasetIndex`.
"""
