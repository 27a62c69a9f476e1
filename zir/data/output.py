"""Where zir writes: checked before the work starts, and never over a file zir did not write.

Every command that writes (``train``, ``predict``, ``export``, ``data synth``, ``data convert``,
``data stats``, ``augment preview``, ``eval --json``) calls :func:`check_writable` on its output first,
so that a folder under a file, a read-only or immutable folder, or a path under ``/proc`` is one line
naming the path and what is wrong, before minutes of training or prediction, never a
``PermissionError`` traceback at the end.

``zir predict`` writes many files into one folder that may already hold the user's own files.
:class:`OwnedFolder` keeps a manifest (``.zir-written``) of the names zir wrote there: zir writes over
its own earlier output, and refuses to replace any other file unless the user passes ``exist_ok``.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from zir.errors import DataError

MANIFEST = ".zir-written"
"""File in an output folder listing (one JSON list) the relative names zir wrote there."""


def _deepest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (``/`` at worst)."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | Path, kind: str = "folder") -> Path:
    """Check that zir can create ``path`` (a ``folder`` or a ``file``) or write into it, before any work.

    Nothing is created: the check writes and removes one empty temporary file in the deepest folder
    of ``path`` that already exists (``os.access`` is not enough: root passes it on an immutable
    ``chattr +i`` folder or a read-only mount).

    Raises:
        DataError: naming ``path`` and what is wrong (a file in the way, no permission, read-only
            file system, not a real folder like ``/proc``), and what to do.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise DataError(path, "output folder is a file; choose a folder (or a path that does not exist yet)")
    if kind == "file" and path.is_dir():
        raise DataError(path, "output file is a folder; give a file name")
    existing = _deepest_existing(path if kind == "folder" else path.parent)
    if not existing.is_dir():
        raise DataError(path, f"cannot create it: {existing} is a file, not a folder; choose another "
                              "output path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".zir-probe-")
    except OSError as e:
        raise DataError(path, f"cannot write in {existing} ({_reason(e)}); choose another output path "
                              "or fix the folder's permissions") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _reason(e: OSError) -> str:
    names = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted (immutable or "
             "protected folder)", errno.EROFS: "read-only file system", errno.ENOSPC: "no space left",
             errno.ENOENT: "not a folder zir can create files in", errno.ENOTDIR: "a file is in the way"}
    return names.get(e.errno or 0, e.strerror or str(e))


class OwnedFolder:
    """An output folder shared with the user's files: zir may write over only what it wrote before.

    Usage::

        folder = OwnedFolder(out, exist_ok=False)
        folder.claim(["00000.png", "00000.json"])   # DataError if a user's file has one of the names
        ... write the files ...
        folder.commit()                              # remember them in out/.zir-written
    """

    def __init__(self, path: str | Path, exist_ok: bool = False) -> None:
        self.path = check_writable(path, "folder")
        self.exist_ok = exist_ok
        self.written: set[str] = set(self._read_manifest())
        self._new: list[str] = []

    def _read_manifest(self) -> list[str]:
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            return []
        try:
            names = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []  # a damaged manifest only means zir forgets what it wrote: it refuses more, never less
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def claim(self, names: Iterable[str]) -> None:
        """Reserve relative file names for writing; refuse if one is a file zir did not write."""
        names = list(names)
        if not self.exist_ok:
            theirs = [n for n in names if n not in self.written and os.path.lexists(self.path / n)]
            if theirs:
                more = f" (and {len(theirs) - 1} more)" if len(theirs) > 1 else ""
                raise DataError(self.path / theirs[0], f"already exists and was not written by zir{more}; "
                                "choose another --out folder, or pass --exist-ok (exist_ok=True) to "
                                "replace such files")
        self._new += names

    def commit(self) -> None:
        """Record the claimed names in the manifest (atomically, so a kill never loses earlier ones)."""
        self.path.mkdir(parents=True, exist_ok=True)
        names = sorted(self.written | set(self._new))
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f"{MANIFEST}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(names, f, indent=0)
        os.replace(tmp, self.path / MANIFEST)
        self.written = set(names)
        self._new = []
