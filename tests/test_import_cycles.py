"""scripts/check_import_cycles.py: foxtive's Python modules import only downward."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_import_cycles.py"


def _check(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(package)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_foxtive_has_no_import_cycle_and_no_function_level_import() -> None:
    result = _check(ROOT / "python" / "foxtive")
    assert result.returncode == 0, result.stderr
    assert "no import cycles" in result.stdout


def test_a_cycle_hidden_behind_a_function_level_import_is_reported(tmp_path: Path) -> None:
    pkg = tmp_path / "foxtive"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import A\n")
    (pkg / "a.py").write_text("from .b import B\n\nA = B\n")
    (pkg / "b.py").write_text("def f() -> None:\n    from .a import A\n    print(A)\n\nB = 1\n")
    result = _check(pkg)
    assert result.returncode == 1
    assert "import cycle: foxtive.a -> foxtive.b -> foxtive.a" in result.stderr
    assert "b.py:2: function-level import of foxtive.a" in result.stderr


def test_a_type_checking_cycle_and_from_dot_import_module_are_edges(tmp_path: Path) -> None:
    pkg = tmp_path / "foxtive"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import x\n")
    result = _check(pkg)
    assert result.returncode == 1
    assert "import cycle: foxtive.a -> foxtive.b -> foxtive.a" in result.stderr
