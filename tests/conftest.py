"""Shared fixtures: generated image folders and a leak check around every test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import datago
from support import noise_image, wait_until


@pytest.fixture
def image_dir(tmp_path: Path) -> Callable[..., Path]:
    """Writes `count` PNGs (or JPEGs) named img0000.png ... into a fresh folder."""

    def make(count: int, ext: str = "png", size: tuple[int, int] = (24, 16), sub: str = "") -> Path:
        folder = tmp_path / "images"
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = noise_image(size[0], size[1], "RGB", seed=i)
            image.save(folder / sub / f"img{i:04d}.{ext}")
        return folder

    return make


@pytest.fixture(autouse=True)
def no_leaked_samples():
    """Every test must leave no native sample alive once its objects are gone."""
    import gc

    gc.collect()
    before = datago.live_samples()
    yield
    gc.collect()
    wait_until(lambda: datago.live_cleanup_threads() == 0, what="native workers to drain")
    assert datago.live_samples() == before, "a test leaked native samples"
