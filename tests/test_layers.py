"""The layers import downwards only: the engine trains models and knows nothing of the reports drawn
from its runs or of the commands that start it; models know nothing of the engine that trains them.

Imports are read from the source with ``ast`` (module-level and inside functions alike), so a lazy
import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zir

ROOT = Path(zir.__file__).parent
# package -> the zir modules above it, which it must not import
ABOVE = {
    "engine": ("zir.analysis", "zir.api", "zir.cli", "zir.export"),
    "models": ("zir.engine", "zir.analysis", "zir.api", "zir.cli", "zir.export", "zir.config"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``; ``from zir import x`` gives ``zir.x``, and a bare
    ``import zir`` gives ``zir`` (the package's lazy API, i.e. the top layer)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "zir" else [node.module]
            found += [(node.lineno, name) for name in names]
    return sorted(found)


def upward_imports(package: str, root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module == "zir" or any(module == up or module.startswith(up + ".") for up in ABOVE[package]):
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_import_runs_up_the_layers(package):
    assert upward_imports(package) == []


def test_the_check_sees_lazy_and_aliased_imports(tmp_path):
    """The checker itself: an import hidden in a function and ``from zir import api`` are both caught,
    ``from zir import __version__`` and imports from below are not."""
    fake = tmp_path / "zir"
    (fake / "engine").mkdir(parents=True)
    (fake / "engine" / "ok.py").write_text("from zir import __version__\nfrom zir.models import MODELS\n")
    (fake / "engine" / "bad.py").write_text(
        "def f():\n    from zir.analysis.report import write_report\n\nfrom zir import api\nimport zir\n")
    assert upward_imports("engine", fake) == ["zir/engine/bad.py:2 imports zir.analysis.report",
                                        "zir/engine/bad.py:4 imports zir.api", "zir/engine/bad.py:5 imports zir"]
