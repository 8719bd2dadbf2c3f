"""The README's Python snippets run as written (against a generated folder
standing in for /data/images)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import noise_image, run_python

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    for i in range(20):
        noise_image(80 + 7 * i, 60 + 3 * i, "RGB", i).save(root / f"{i:02d}.jpg")
    return root


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index: int, images: Path) -> None:
    code = SNIPPETS[index]
    if "import torch" in code:
        pytest.importorskip("torch", reason="PyTorch is optional; the README's test command installs it")
    if "torchdata" in code:
        pytest.importorskip("torchdata", reason="torchdata is optional; the README's test command installs it")
    # The Dataroom example imports the test server from tests/, relative to
    # the repository root where a reader runs it.
    code = code.replace('sys.path.insert(0, "tests")', f"sys.path.insert(0, {str(Path(__file__).parent)!r})")
    result = run_python(code.replace('"/data/images"', repr(str(images))), timeout=300)
    assert result.returncode == 0, result.stderr
