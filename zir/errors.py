"""zir's own exceptions: every error a user can cause names the file (and record) and what to do."""

from __future__ import annotations


class ZirError(Exception):
    """Base class of every error zir raises on purpose."""


class DataError(ZirError):
    """A dataset file is missing, unreadable or inconsistent.

    The message starts with the file (and line or record) at fault and ends with what to do.
    """

    def __init__(self, file: str, message: str, where: str = "") -> None:
        self.file = str(file)
        self.where = where
        self.detail = message
        loc = f"{file}:{where}" if where else str(file)
        super().__init__(f"{loc}: {message}")


class ConfigError(ZirError):
    """A setting is unknown or has a bad value."""


class CheckpointError(ZirError):
    """A run folder or checkpoint is missing or incomplete."""


class TrainingError(ZirError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""
