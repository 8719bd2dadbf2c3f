"""The damaged-data rule of docs/decoding.md, one test per case of the
hostile-input campaign: what is broken is refused with a cause and a reason,
nothing costs more memory than its declared image, and what Pillow decodes
we decode to the same pixels. Every input is made here, at test time."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hostile_files import (
    bmp_claiming,
    chunk_length_bomb,
    encode,
    flip_idat_bit,
    good_files,
    jpeg_taller_than_data,
    photo,
    png,
    png_claiming,
    short_palette_png,
    sof2_as_sof0,
    without_iend,
    zlib_bomb,
)
from PIL import Image

import datago
from support import drain, file_config, run_python

RNG = np.random.default_rng(16)


def ours(data: bytes) -> np.ndarray:
    image = datago.transform(None, data).image.to_numpy_array()
    return image


def refusal(data: bytes) -> str:
    """The error text of a refused file: 'reason (cause)'."""
    with pytest.raises(datago.DatagoError) as caught:
        datago.transform(None, data)
    return str(caught.value)


def pillow(data: bytes, mode: str | None = None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if mode is not None:
            image = image.convert(mode)
        elif image.mode == "1":
            image = image.convert("L")
        array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def assert_same_as_pillow(data: bytes, mode: str | None = None) -> None:
    got, want = ours(data), pillow(data, mode)
    if want.dtype != got.dtype:  # Pillow's 16-bit grey is I;16 (uint16) or I (int32)
        want = want.astype(got.dtype)
    assert got.shape == want.shape
    assert np.array_equal(got, want)


# ---- good files of every layout decode to Pillow's pixels --------------------


def _samples(height: int, width: int, channels: int, depth: int) -> np.ndarray:
    return RNG.integers(0, 1 << depth, (height, width, channels), dtype=np.uint16 if depth == 16 else np.uint8)


@pytest.mark.parametrize("interlace", [False, True], ids=["plain", "adam7"])
@pytest.mark.parametrize(
    ("color_type", "depth"),
    [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (4, 8), (4, 16), (6, 8), (6, 16), (3, 1), (3, 4), (3, 8)],
)
def test_png_layouts_match_pillow(color_type: int, depth: int, interlace: bool) -> None:
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    samples = _samples(13, 21, channels, depth)  # odd sizes: partial Adam7 passes and bytes
    palette = bytes(RNG.integers(0, 256, 3 << depth, dtype=np.uint8)) if color_type == 3 else None
    data = png(samples, color_type, depth, palette=palette, interlace=interlace)
    if depth == 16:
        # Pillow reads 16-bit RGB(A) as 8-bit; compare with the samples written.
        got = ours(data)
        assert got.dtype == np.uint16 and np.array_equal(got, samples)
        return
    assert_same_as_pillow(data, "RGB" if color_type == 3 else None)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16"])
def test_pillow_written_png_matches_pillow(mode: str) -> None:
    rgba = Image.fromarray(np.dstack([photo(67, 45, 1), photo(67, 45, 2)[..., :1]]), "RGBA")
    image = rgba.convert("RGB").quantize(100) if mode == "P" else rgba.convert(mode)
    assert_same_as_pillow(encode(image, "PNG"), "RGB" if mode == "P" else None)


def test_png_transparency_keys_keep_their_colour() -> None:
    # Pillow's L and RGB modes ignore a tRNS colour key: keyed pixels keep the key's value.
    grey = (RNG.integers(0, 4, (9, 14, 1)) * 80).astype(np.uint8)
    assert_same_as_pillow(png(grey, 0, 8, trns=b"\x00\x50"))
    rgb = (RNG.integers(0, 2, (9, 14, 3)) * 200).astype(np.uint8)
    assert_same_as_pillow(png(rgb, 2, 8, trns=b"\x00\xc8\x00\x00\x00\xc8"))
    low = RNG.integers(0, 4, (9, 14, 1), dtype=np.uint8)
    assert_same_as_pillow(png(low, 0, 2, trns=b"\x00\x02"))
    deep = RNG.integers(0, 3, (9, 14, 3), dtype=np.uint16) * 1000
    got = ours(png(deep, 2, 16, trns=b"\x03\xe8\x00\x00\x07\xd0"))
    assert np.array_equal(got, deep)


def test_palette_with_transparency_is_rgba() -> None:
    image = Image.fromarray(photo(30, 20, 3)).quantize(16)
    assert_same_as_pillow(encode(image, "PNG", transparency=3), "RGBA")


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "1", "RGBA"])
def test_bmp_matches_pillow(mode: str) -> None:
    image = Image.fromarray(np.dstack([photo(27, 19, 4), photo(27, 19, 5)[..., :1]]), "RGBA").convert(mode)
    assert_same_as_pillow(encode(image, "BMP"), "RGB" if mode in ("P", "1", "L") else None)


def test_gif_matches_pillow() -> None:
    image = Image.fromarray(photo(31, 23, 6)).quantize(64)
    assert_same_as_pillow(encode(image, "GIF"), "RGBA")
    # Transparent pixels: alpha 0 in both; their colour is (0, 0, 0) here and
    # the palette's in Pillow (docs/decoding.md).
    got = ours(encode(image, "GIF", transparency=5))
    want = pillow(encode(image, "GIF", transparency=5), "RGBA")
    opaque = want[..., 3] == 255
    assert np.array_equal(got[..., 3], want[..., 3]) and np.array_equal(got[opaque], want[opaque])


# ---- finding 4: good files that were refused --------------------------------


def test_png_without_iend_decodes_exactly() -> None:
    data = encode(Image.fromarray(photo(40, 30, 7)), "PNG")
    assert_same_as_pillow(without_iend(data))


def test_png_with_idat_in_one_byte_chunks_decodes_exactly() -> None:
    samples = photo(24, 16, 8)
    data = png(samples, 2, idat_chunk=1)
    assert_same_as_pillow(data)
    assert np.array_equal(ours(data), samples)


# ---- finding 2: a short palette reads no uninitialised memory --------------


def test_short_palette_is_black_beyond_plte() -> None:
    data = short_palette_png()
    got = ours(data)
    assert_same_as_pillow(data, "RGB")
    assert np.array_equal(got[0, 0], [0x10, 0x20, 0x30]) and not got.reshape(-1, 3)[1:].any()


@pytest.mark.parametrize("threads", [1, 2])
def test_short_palette_pixels_do_not_depend_on_position_or_threads(tmp_path: Path, threads: int) -> None:
    # Before: missing palette entries came from whatever an earlier decode left on
    # the thread's stack. Two copies, one first and one after other images.
    root = tmp_path / "c"
    root.mkdir()
    for name, data in good_files(1).items():
        (root / f"b_{name}").write_bytes(data)
    (root / "a_short.png").write_bytes(short_palette_png())
    (root / "z_short.png").write_bytes(short_palette_png())
    expected = pillow(short_palette_png(), "RGB")
    with datago.DatagoClient(file_config(root, num_threads=threads)) as client:
        samples = {Path(s.path).name: s.image.to_numpy_array() for s in drain(client)}
    assert len(samples) == 2 + len(good_files(1))
    assert np.array_equal(samples["a_short.png"], expected)
    assert np.array_equal(samples["z_short.png"], expected)


# ---- finding 3: broken files are refused, counted by cause, with a reason ----


def _jpeg() -> bytes:
    return encode(Image.fromarray(photo(64, 48, 9)), "JPEG", quality=90)


def broken_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected cause)."""
    rgb = Image.fromarray(photo(48, 40, 10))
    png_bytes = encode(rgb, "PNG")
    bmp = encode(rgb, "BMP")
    gif = encode(rgb.quantize(64), "GIF")
    jpeg = _jpeg()
    webp = encode(rgb, "WEBP", quality=80)
    cases: dict[str, tuple[bytes, str]] = {
        "flipped_idat_bit.png": (flip_idat_bit(png_bytes), "corrupt"),
        "bmp_13000x13000.bmp": (bmp_claiming(13000, 13000), "truncated"),
        "sof2_as_sof0.jpg": (sof2_as_sof0(encode(rgb, "JPEG", quality=90, progressive=True)), "corrupt"),
        "taller_than_data.jpg": (jpeg_taller_than_data(jpeg), "truncated"),
        "chunk_length_bomb.png": (chunk_length_bomb(), "corrupt"),
        "png_13000x13000.png": (png_claiming(13000, 13000), "truncated"),
        "png_bad_ihdr_crc.png": (png_bytes[:16] + (13000).to_bytes(4, "big") * 2 + png_bytes[24:], "corrupt"),
    }
    for fraction in (0.3, 0.6, 0.95):
        cases[f"cut{fraction}.bmp"] = (bmp[: int(len(bmp) * fraction)], "truncated")
        cases[f"cut{fraction}.gif"] = (gif[: int(len(gif) * fraction)], "truncated")
        cases[f"cut{fraction}.jpg"] = (jpeg[: int(len(jpeg) * fraction)], "truncated")
        cases[f"cut{fraction}.png"] = (png_bytes[: int(len(png_bytes) * fraction)], "truncated")
        cases[f"cut{fraction}.webp"] = (webp[: int(len(webp) * fraction)], "truncated")
    return cases


@pytest.mark.parametrize("name", sorted(broken_files()))
def test_broken_file_is_refused_with_cause_and_reason(name: str) -> None:
    data, cause = broken_files()[name]
    text = refusal(data)
    reason = text.removesuffix(f" ({cause})")
    assert text.endswith(f"({cause})"), text
    assert len(reason) > 10 and reason.isprintable(), text
    assert "no SOI" not in reason


def test_folder_of_good_and_broken_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "c"
    root.mkdir()
    good = good_files(2)
    broken = broken_files()
    for name, data in good.items():
        (root / name).write_bytes(data)
    for name, (data, _) in broken.items():
        (root / f"x_{name}").write_bytes(data)
    with caplog.at_level(logging.ERROR, logger="datago"), \
            datago.DatagoClient(file_config(root, num_threads=2)) as client:
        samples = {Path(s.path).name: s.image.to_numpy_array() for s in drain(client)}
        stats = client.stats()
        datago.logs.flush()
    assert sorted(samples) == sorted(good)
    for name, data in good.items():
        mode = {"good.gif": "RGBA", "good_p.png": "RGB"}.get(name)
        want = pillow(data, mode)
        if name.endswith(".jpg") or name.endswith(".webp"):
            assert samples[name].shape == want.shape
        else:
            assert np.array_equal(samples[name], want), name
    expected: dict[str, int] = {}
    for _, cause in broken.values():
        expected[cause] = expected.get(cause, 0) + 1
    assert {k: v for k, v in stats["errors"].items() if v} == expected
    failures = [r.getMessage() for r in caplog.records if r.name == "datago.files"]
    assert len(failures) == len(broken)
    for line in failures:
        reason = line.split(": ", 1)[1]
        assert len(reason) > 10 and reason.isprintable(), line


# ---- finding 1: memory is bounded by the declared image ----------------------

RSS_CHILD = """
import json, os, sys
import datago
def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
root = sys.argv[1] if len(sys.argv) > 1 else {root!r}
# Warm up on the good files alone, so that the baseline holds the library,
# its threads and its buffer pool.
config = {{"source_type": "file", "source_config": {{"root_path": {good!r}}}, "num_threads": 2}}
with datago.DatagoClient(json.dumps(config)) as client:
    list(client)
before = hwm_kib()
config["source_config"]["root_path"] = {root!r}
with datago.DatagoClient(json.dumps(config)) as client:
    delivered = len(list(client))
    errors = client.stats()["errors"]
print(json.dumps({{"before": before, "after": hwm_kib(), "delivered": delivered, "errors": errors}}))
"""


def test_bombs_cost_no_more_than_their_declared_image(tmp_path: Path) -> None:
    # Two zlib bombs (64x64 RGB declared, 256 MiB of zeros inflated) on two
    # threads, a chunk-length bomb, beside good files. A decoder that inflates
    # before it checks (stb_image did) peaks at 256 MiB per thread; the bound
    # here is 48 MiB over the warm baseline.
    good = tmp_path / "good"
    mixed = tmp_path / "mixed"
    good.mkdir()
    mixed.mkdir()
    for name, data in good_files(3).items():
        (good / name).write_bytes(data)
        (mixed / name).write_bytes(data)
    bomb = zlib_bomb(inflated=256 << 20)
    assert len(bomb) < 1 << 20
    (mixed / "bomb1.png").write_bytes(bomb)
    (mixed / "bomb2.png").write_bytes(bomb)
    (mixed / "length_bomb.png").write_bytes(chunk_length_bomb())
    result = run_python(RSS_CHILD.format(root=str(mixed), good=str(good)))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["delivered"] == len(good_files(3))
    assert report["errors"]["corrupt"] == 3
    grown_mib = (report["after"] - report["before"]) / 1024
    assert grown_mib < 48, report
