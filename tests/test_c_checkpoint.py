"""The C checkpoint example (examples/c/checkpoint.c): a loop that saves its
data position through datago.h and a second process that resumes from it
delivers exactly the rest of the uninterrupted run; under valgrind too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import compile_c_example, noise_image


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c_example("checkpoint", tmp_path_factory.mktemp("c"))


@pytest.fixture
def config(tmp_path: Path) -> str:
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(9):
        noise_image(6 + i, 6, "RGB", i).save(root / f"{i}.png")
    return json.dumps({"source_type": "file", "source_config": {"root_path": str(root), "random_sampling": True},
                       "num_threads": 2})


def run(binary: Path, *args: str, valgrind: bool = False) -> list[str]:
    prefix = ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite"] if valgrind else []
    result = subprocess.run([*prefix, str(binary), *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "DATAGO_MAX_TASKS": "2"})
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.splitlines()


def test_a_c_loop_resumes_from_its_saved_state(binary: Path, config: str, tmp_path: Path) -> None:
    # Unseeded: the state carries the seed the first run drew.
    first = run(binary, config, str(tmp_path / "a.json"), "4")
    rest = run(binary, config, str(tmp_path / "a.json"), "0")
    assert len(first) == 4 and len(rest) == 5
    assert sorted(first + rest) == sorted(str(p) for p in (tmp_path / "imgs").iterdir())
    seed = json.loads((tmp_path / "a.json").read_text())["seed"]
    seeded = json.loads(config)
    seeded["source_config"]["seed"] = seed
    assert run(binary, json.dumps(seeded), str(tmp_path / "b.json"), "0") == first + rest


def test_a_state_of_another_config_is_refused(binary: Path, config: str, tmp_path: Path) -> None:
    run(binary, config, str(tmp_path / "s.json"), "2")
    other = json.loads(config)
    other["source_config"]["random_sampling"] = False
    result = subprocess.run([str(binary), json.dumps(other), str(tmp_path / "s.json"), "1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot resume: state: saved with a configuration that orders samples differently" in result.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (.ci/run installs it)")
def test_checkpoint_example_is_clean_under_valgrind(binary: Path, config: str, tmp_path: Path) -> None:
    assert len(run(binary, config, str(tmp_path / "v.json"), "3", valgrind=True)) == 3
    assert len(run(binary, config, str(tmp_path / "v.json"), "0", valgrind=True)) == 6
