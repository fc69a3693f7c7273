"""The import-linter contracts of pyproject.toml: the tree keeps them, and an import against the
layers (a lower package importing a higher one, or one package importing another of its layer)
makes `lint-imports`, and so `make lint`, fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the `app` package under `root`, with `root`'s pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_the_layers() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(
    ("module", "imported", "broken"),
    [
        ("events/record.py", "app.api.schemas", "app.events is not allowed to import app.api"),
        ("fhir/codes.py", "app.queue.stream", "app.fhir is not allowed to import app.queue"),
        ("intake/atna.py", "app.wiring", "app.intake is not allowed to import app.wiring"),
        (
            "monitor/thresholds.py",
            "app.read.events",
            "app.monitor is not allowed to import app.read",
        ),
        ("core/timefmt.py", "app.events.ids", "app.core is not allowed to import app.events"),
    ],
)
def test_an_import_against_the_layers_fails(
    tmp_path: Path, module: str, imported: str, broken: str
) -> None:
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    source = tmp_path / "app" / module
    source.write_text(source.read_text() + f"\nimport {imported}  # against the layers\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert broken in done.stdout, done.stdout
