"""The file source against docs/compatibility.md §3, §6.1, §7.1 and docs/design.md: every file
once, the documented order, exact limits, rank shares, bad files skipped and
counted, and samples that match what Pillow decodes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datago
from support import drain, file_config, noise_image, plan


def relative_paths(samples: list[datago.Sample], root: Path) -> list[str]:
    return [os.path.relpath(s.path, root) for s in samples]


def listing_of(root: Path) -> list[str]:
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
    return [
        os.path.relpath(os.path.join(d, f), root)
        for d, _, names in os.walk(root)
        for f in names
        if f.lower().endswith(exts)
    ]


def test_every_file_once_in_sorted_order(image_dir) -> None:
    root = image_dir(30)
    image_dir(5, sub="nested/deeper")
    with datago.DatagoClient(file_config(root, num_threads=3, samples_buffer_size=4)) as client:
        got = relative_paths(drain(client), root)
    assert got == sorted(listing_of(root))
    assert len(got) == 35


def test_ids_are_json_quoted_paths_and_fields_match_the_reference(image_dir) -> None:
    root = image_dir(2)
    with datago.DatagoClient(file_config(root)) as client:
        sample = client.get_sample()
    assert sample.id == json.dumps(os.path.join(str(root), "img0000.png"))
    assert sample.path == os.path.join(str(root), "img0000.png")
    assert sample.source == "filesystem"
    assert sample.attributes == "{}"
    assert sample.duplicate_state == 0
    assert sample.masks == {} and sample.additional_images == {} and sample.latents == {}
    assert sample.tags == [] and sample.coca_embedding == []
    payload = sample.image.get_payload()
    assert (payload.width, payload.height, payload.channels, payload.bit_depth) == (24, 16, 3, 8)
    assert (payload.original_width, payload.original_height) == (24, 16)
    assert payload.is_encoded is False
    assert len(payload.data) == 24 * 16 * 3
    assert sample.image.crop_box == (0.0, 0.0, 24.0, 16.0) and sample.image.scale == 1.0


def test_order_matches_the_design_model(image_dir) -> None:
    root = image_dir(41)
    listing = listing_of(root)
    for world_size in (1, 3):
        for rank in range(world_size):
            for seed in (None, 7, 2**64 - 1):
                source = {"rank": rank, "world_size": world_size}
                if seed is not None:
                    source |= {"random_sampling": True, "seed": seed}
                with datago.DatagoClient(file_config(root, source=source, num_threads=2)) as client:
                    first = relative_paths(drain(client), root)
                    client.start()
                    second = relative_paths(drain(client), root)
                assert first == plan(listing, rank, world_size, seed=seed, epoch=0)
                assert second == plan(listing, rank, world_size, seed=seed, epoch=1)
                if seed is not None:
                    assert first != second, "each epoch reshuffles"


def test_order_does_not_depend_on_thread_count(image_dir) -> None:
    root = image_dir(25)
    orders = []
    for threads in (1, 2, 7):
        config = file_config(root, num_threads=threads, source={"random_sampling": True, "seed": 3})
        with datago.DatagoClient(config) as client:
            orders.append([s.path for s in drain(client)])
    assert orders[0] == orders[1] == orders[2]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranks_are_disjoint_and_complete(image_dir, world_size: int) -> None:
    root = image_dir(22)
    seen: list[str] = []
    for rank in range(world_size):
        source = {"rank": rank, "world_size": world_size, "random_sampling": True}  # unseeded
        with datago.DatagoClient(file_config(root, source=source)) as client:
            seen += relative_paths(drain(client), root)
    assert sorted(seen) == sorted(listing_of(root))


def test_unseeded_random_sampling_differs_between_runs(image_dir) -> None:
    root = image_dir(40)
    orders = set()
    for _ in range(3):
        with datago.DatagoClient(file_config(root, source={"random_sampling": True})) as client:
            orders.add(tuple(s.path for s in drain(client)))
    assert len(orders) > 1


@pytest.mark.parametrize("limit", [1, 3, 10, 29, 30, 31, 100])
def test_limit_is_exact(image_dir, limit: int) -> None:
    root = image_dir(30)
    with datago.DatagoClient(file_config(root, limit=limit, num_threads=2)) as client:
        samples = drain(client)
    assert len(samples) == min(limit, 30)


def test_limit_does_not_count_failures_and_sees_the_whole_tree(image_dir) -> None:
    root = image_dir(12)
    for i in range(8):
        (root / f"aaa_bad{i}.jpg").write_bytes(b"garbage")
    # The reference lists only the first 2*limit files and counts failures.
    with datago.DatagoClient(file_config(root, limit=10)) as client:
        assert len(drain(client)) == 10


def test_bad_files_are_skipped_logged_and_good_ones_arrive(image_dir, caplog) -> None:
    root = image_dir(6)
    (root / "zero.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image")
    good = (root / "img0000.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = root / "img.jpg"
    noise_image(64, 48, "RGB", 1).save(jpeg, quality=90)
    (root / "truncated_header.jpg").write_bytes(jpeg.read_bytes()[:100])
    (root / "dir.png").mkdir()
    with datago.DatagoClient(file_config(root)) as client:
        samples = drain(client)
    names = {os.path.basename(s.path) for s in samples}
    assert {f"img{i:04d}.png" for i in range(6)} | {"img.jpg"} <= names
    assert not names & {"zero.png", "text.jpg", "truncated.png", "truncated_header.jpg"}
    datago.logs.flush()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name == "datago.files"]
    for bad in ("zero.png", "text.jpg", "truncated.png", "truncated_header.jpg"):
        assert any(m.startswith(f"Failed to load image from path {root}/{bad}: ") for m in errors), errors


def test_non_utf8_file_names_are_delivered(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    raw_root = os.fsencode(root)
    names = [b"a.png", b"bad\xff.png", b"z.png"]
    for i, name in enumerate(names):
        path = os.path.join(raw_root, name)
        noise_image(8, 8, "RGB", i).save(os.fsdecode(path), format="PNG")
    with datago.DatagoClient(file_config(root)) as client:
        samples = drain(client)
    assert [os.fsencode(s.path) for s in samples] == [os.path.join(raw_root, n) for n in names]
    # The path reopens the file even though it is not valid UTF-8.
    assert Image.open(samples[1].path).size == (8, 8)
    # The id is JSON of the path with its non-UTF-8 bytes as \udcXX escapes:
    # lossless, so it names this file and no other.
    assert samples[1].id == json.dumps(str(root) + "/bad\udcff.png")
    assert os.fsencode(json.loads(samples[1].id)) == os.path.join(raw_root, names[1])


def test_walk_rules(tmp_path: Path) -> None:
    root = tmp_path / "walk"
    (root / ".hidden_dir").mkdir(parents=True)
    (root / "linked_target").mkdir()
    noise_image(8, 8, "RGB", 0).save(root / ".hidden_dir" / "h.png")
    noise_image(8, 8, "RGB", 1).save(root / "UPPER.PNG")
    noise_image(8, 8, "RGB", 2).save(root / "linked_target" / "t.png")
    (root / "fakejpg").write_bytes((root / "UPPER.PNG").read_bytes())
    (root / "notes.tiff").write_bytes(b"x")
    os.symlink(root / "UPPER.PNG", root / "link.png")
    os.symlink(root / "missing.png", root / "broken.png")
    os.symlink(root / "linked_target", root / "dirlink.png")
    with datago.DatagoClient(file_config(root)) as client:
        got = relative_paths(drain(client), root)
    assert got == [".hidden_dir/h.png", "UPPER.PNG", "link.png", "linked_target/t.png"]


def test_root_that_is_a_file_is_the_only_sample(image_dir) -> None:
    root = image_dir(3)
    single = root / "img0001.png"
    with datago.DatagoClient(file_config(single)) as client:
        samples = drain(client)
    assert [s.path for s in samples] == [str(single)]


def test_empty_folder_is_an_empty_stream_with_a_warning(tmp_path: Path, caplog) -> None:
    with datago.DatagoClient(file_config(tmp_path)) as client:
        assert client.get_sample() is None
    datago.logs.flush()
    assert any("no image files" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_all_errors_raise_source_error_naming_the_cause(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"not an image at all")
    with datago.DatagoClient(file_config(tmp_path)) as client:
        with pytest.raises(datago.SourceError) as info:
            client.get_sample()
        assert "every file failed" in str(info.value)
        # The example is whichever failure was recorded first: any of them.
        assert "not_image" in str(info.value)
        assert re.search(rf"e\.g\. '{re.escape(str(tmp_path))}/bad[012]\.jpg'", str(info.value)), str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert client.get_sample() is None


def test_max_error_fraction(image_dir) -> None:
    root = image_dir(40)
    for i in range(20):
        (root / f"img{i:04d}_bad.png").write_bytes(b"junk")
    with datago.DatagoClient(file_config(root, max_error_fraction=0.1)) as client:
        with pytest.raises(datago.SourceError, match="max_error_fraction 0.1 exceeded"):
            drain(client)
    with datago.DatagoClient(file_config(root, max_error_fraction=0.5)) as client:
        assert len(drain(client)) == 40


def test_max_pixels_refuses_large_headers(image_dir, caplog) -> None:
    root = image_dir(2, size=(40, 30))
    noise_image(8, 8, "RGB", 0).save(root / "small.png")
    with datago.DatagoClient(file_config(root, max_pixels=100)) as client:
        samples = drain(client)
    assert [os.path.basename(s.path) for s in samples] == ["small.png"]
    datago.logs.flush()
    assert any("more than max_pixels (100)" in r.getMessage() for r in caplog.records)


def test_png_pixels_match_pillow_exactly(tmp_path: Path) -> None:
    modes = {"L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA"}
    for i, mode in enumerate(modes):
        noise_image(33, 17, mode, i).save(tmp_path / f"{i}_{mode}.png")
    Image.fromarray(np.eye(8, dtype=bool)).save(tmp_path / "5_1bit.png")
    pal = noise_image(20, 10, "RGB", 9).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "6_palette.png")
    with datago.DatagoClient(file_config(tmp_path)) as client:
        samples = drain(client)
    assert len(samples) == 6
    for sample in samples:
        reference = Image.open(sample.path)
        if reference.mode == "P":
            reference = reference.convert("RGB")
        expected = np.asarray(reference.convert("L") if reference.mode == "1" else reference)
        if expected.ndim == 2:
            expected = expected[:, :, None]
        got = sample.image.to_numpy_array()
        assert got.dtype == np.uint8 and got.flags.writeable is False and got.flags.owndata is False
        np.testing.assert_array_equal(got, expected, err_msg=sample.path)


def test_16bit_png_stays_16bit(tmp_path: Path) -> None:
    values = (np.arange(12 * 10, dtype=np.uint16).reshape(10, 12) * 541).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    with datago.DatagoClient(file_config(tmp_path)) as client:
        sample = client.get_sample()
    payload = sample.image.get_payload()
    assert payload.bit_depth == 16 and payload.channels == 1
    assert len(payload.data) == 12 * 10 * 2
    array = sample.image.to_numpy_array()
    assert array.dtype == np.dtype("<u2") and array.shape == (10, 12, 1)
    np.testing.assert_array_equal(array[:, :, 0], values)
    pil = sample.image.to_pil_image()
    assert pil.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(pil), values)


def test_content_is_sniffed_not_the_extension(tmp_path: Path) -> None:
    noise_image(10, 6, "RGB", 3).save(tmp_path / "really_a_png.jpg", format="PNG")
    with datago.DatagoClient(file_config(tmp_path)) as client:
        sample = client.get_sample()
    assert sample.image.to_numpy_array().shape == (6, 10, 3)


def test_pil_delegation_and_auto_convert(image_dir) -> None:
    root = image_dir(1)
    with datago.DatagoClient(file_config(root)) as client:
        sample = client.get_sample()
        assert client.get_sample() is None
        client.start()
        converted = client.get_sample_auto_convert()
    assert sample.image.size == (24, 16) and sample.image.mode == "RGB"
    assert sample.image().size == (24, 16)
    with pytest.raises(AttributeError):
        sample.image.no_such_attribute  # noqa: B018
    assert list(converted) == [
        "id", "source", "duplicate_state", "attributes", "tags",
        "coca_embedding", "latents", "image", "masks", "additional_images",
    ]
    assert converted["attributes"] == {} and isinstance(converted["image"], Image.Image)
    np.testing.assert_array_equal(np.asarray(converted["image"]), sample.image.to_numpy_array())


def test_build_info_reports_the_decoders_and_simd() -> None:
    info = datago.build_info()
    assert info["abi"] == 2 and info["version"] == datago.__version__
    assert info["jpeg"].startswith("libjpeg-turbo 3.1.2") and info["webp"].startswith("libwebp")
    assert info["jpeg_simd"] in {"avx2", "sse2", "neon", "none"}
    assert isinstance(info["jpeg_simd_built"], bool)
    if not info["jpeg_simd_built"]:
        assert info["jpeg_simd"] == "none"
