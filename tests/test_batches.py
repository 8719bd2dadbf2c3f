"""Bucket batches: every batch homogeneous, every sample in exactly one
batch, deterministic given the seed, zero-copy [B, H, W, C] arrays."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

import datago
from support import drain, file_config, noise_image

BUCKETS = {"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 16, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}


def mixed_folder(root: Path) -> Path:
    root.mkdir()
    sizes = [(40, 30), (30, 40), (50, 50), (60, 30), (33, 47)]
    for i in range(37):
        w, h = sizes[i % len(sizes)]
        noise_image(w, h, "RGB" if i % 7 else "L", i).save(root / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_are_homogeneous_and_cover_every_sample_once(tmp_path: Path, drop_last: bool) -> None:
    root = mixed_folder(tmp_path / "d")
    image_config = {**BUCKETS, "image_to_rgb8": True}
    config = file_config(root, batch_size=4, drop_last=drop_last, image_config=image_config, source={"random_sampling": True, "seed": 3})
    with datago.DatagoClient(config) as client:
        batches = drain(client)
        stats = client.stats()
    seen = []
    for batch in batches:
        images = batch.images
        assert images.shape == (len(batch), images.shape[1], images.shape[2], 3)
        assert images.flags.writeable is False and images.flags.owndata is False
        for sample, image in zip(batch.samples, images, strict=True):
            assert (sample.image.height, sample.image.width) == image.shape[:2]
            np.testing.assert_array_equal(sample.image.to_numpy_array(), image)
            seen.append(sample.path)
    assert len(seen) == len(set(seen))
    full = [b for b in batches if len(b) == 4]
    partial = [b for b in batches if len(b) < 4]
    if drop_last:
        assert not partial and len(seen) + stats["dropped_samples"] == 37
    else:
        assert len(seen) == 37 and len(full) * 4 + sum(map(len, partial)) == 37
        assert stats["partial_batches"] == len(partial)
    assert stats["batches"] == len(batches)


def test_batches_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "d")
    config = file_config(root, batch_size=3, image_config=BUCKETS, num_threads=2, source={"random_sampling": True, "seed": 9})
    runs = []
    for threads in (1, 3):
        cfg = config.replace('"num_threads": 2', f'"num_threads": {threads}')
        with datago.DatagoClient(cfg) as client:
            runs.append([[s.path for s in b.samples] for b in drain(client)])
    assert runs[0] == runs[1]


def test_batch_memory_is_freed_with_the_last_view(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "d")
    with datago.DatagoClient(file_config(root, batch_size=5, image_config=BUCKETS)) as client:
        batch = client.get_batch()
    live = datago.live_samples()
    images = batch.images
    sample = batch.samples[0]
    del batch
    gc.collect()
    assert datago.live_samples() == live
    del images, sample
    gc.collect()
    assert datago.live_samples() == live - 5


def test_get_sample_is_refused_in_batch_mode(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "d")
    with datago.DatagoClient(file_config(root, batch_size=2, image_config=BUCKETS)) as client:
        with pytest.raises(datago.DatagoError, match="get_batch"):
            client.get_sample()
    with datago.DatagoClient(file_config(root)) as client, pytest.raises(datago.DatagoError, match="batch_size") as caught:
        client.get_batch()
    # The message speaks Python, not the C API.
    assert "get_sample()" in str(caught.value) and "datago_" not in str(caught.value)


def test_batches_cannot_hold_encoded_images(tmp_path: Path) -> None:
    with pytest.raises(datago.ConfigError, match="batch_size: batches stack raw pixels"):
        datago.DatagoClient(file_config(tmp_path, batch_size=2, image_config={**BUCKETS, "pre_encode_images": True}))
