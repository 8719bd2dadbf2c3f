"""A user's first run: scripts started from the root of a clone import the
clone's `datago/` folder (the current directory comes first on sys.path),
which has no library of its own; it must load the one `pip install .`
installed from that clone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "datago"


def installed_package() -> Path | None:
    """The installed package's folder (`pip install .` also leaves a
    `datago.egg-info` in the clone that names the clone itself: skip it)."""
    for dist in distributions(name="datago"):
        folder = Path(str(dist.locate_file("datago"))).resolve()
        if folder != PACKAGE.resolve() and (folder / "libdatago.so").is_file():
            return folder
    return None


@pytest.mark.skipif(
    installed_package() is None,
    reason="datago is not pip-installed here (the suite runs against a source-tree build); "
    "CI's fresh-clone stage installs it and runs this test",
)
def test_a_clone_root_without_a_library_uses_the_installed_one(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(PACKAGE, clone / "datago", ignore=shutil.ignore_patterns("*.so", "datago.h", "_licenses", "__pycache__"))
    # What `pip install .` leaves in the clone: metadata naming the clone's own folder.
    (clone / "datago.egg-info").mkdir()
    (clone / "datago.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: datago\nVersion: 0.1.0\n")
    result = subprocess.run(
        [sys.executable, "-m", "datago", "bench", "--count", "8", "--no-progress"],
        cwd=clone, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "images / s" in result.stdout, result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import datago, datago._native as n; print(datago.__file__); print(n.library_path)"],
        cwd=clone, capture_output=True, text=True, timeout=60,
    )
    module_file, library = probe.stdout.split()
    assert Path(module_file).resolve().is_relative_to(clone.resolve())
    assert Path(library).resolve().parent == installed_package()
