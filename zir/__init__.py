"""zir: computer vision on PyTorch, from the lecture to real, fast software.

The Python API mirrors the CLI: :func:`train`, :func:`load`, :func:`evaluate`, :func:`predict_to_folder`,
:func:`compare`, :func:`synth`, :func:`demo`, :func:`analyze` (see :mod:`zir.api`).
"""

from typing import Any

__version__ = "0.1.0"

_API = ("train", "load", "evaluate", "predict_to_folder", "compare", "synth", "demo", "analyze")


def __getattr__(name: str) -> Any:
    # Lazy, so `import zir` (and `zir --help`) does not pay for importing torch and friends.
    if name in _API:
        from zir import api

        return getattr(api, name)
    raise AttributeError(f"module 'zir' has no attribute {name!r}")
