"""The C example builds with `python -m ziglang cc` against datago.h alone and
runs against the library of the installed package; under valgrind when it is
available, with leaks and invalid accesses as failures."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import compile_c_example, noise_image


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c_example("list_samples", tmp_path_factory.mktemp("c"))


def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(5):
        noise_image(10 + i, 8, "RGB", i).save(root / f"{i}.png")
    (root / "broken.jpg").write_bytes(b"nope")
    return root


def test_c_example_lists_every_sample(binary: Path, tmp_path: Path) -> None:
    root = folder(tmp_path)
    result = subprocess.run([str(binary), str(root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"{root}/{i}.png {10 + i}x8 3 8" for i in range(5)]
    assert "5 samples, 0 still alive" in result.stderr


def test_c_example_reports_config_errors(binary: Path) -> None:
    result = subprocess.run([str(binary), "/tmp", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "config error: limit: must be greater than 0" in result.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (.ci/run installs it)")
def test_c_example_is_clean_under_valgrind(binary: Path, tmp_path: Path) -> None:
    root = folder(tmp_path)
    result = subprocess.run(
        ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
         str(binary), str(root), "3"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "DATAGO_MAX_TASKS": "2"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("\n") == 3
