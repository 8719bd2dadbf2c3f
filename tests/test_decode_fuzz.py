"""A bounded, seeded fuzz run of the decoders (docs/decoding.md): a few
hundred mutants of small PNG, GIF, BMP, JPEG and WebP files, each decoded by
datago and by Pillow, checking on every run that

* nothing crashes or hangs (a crash would end this process);
* a refusal names a known cause and gives a readable reason;
* a delivered image that Pillow also decodes has Pillow's pixels;
* a mutant that Pillow decodes to the original's exact pixels is delivered,
  unless one of the format's integrity checks fails or is cut off: Pillow
  stops reading a PNG once it has the rows and never checks the IDAT CRCs,
  the end of the zlib stream or its Adler-32; we do (docs/decoding.md).
"""

from __future__ import annotations

import io
import re
import warnings
import zlib

import numpy as np
import pytest
from hostile_files import PNG_SIGNATURE, chunks, encode, photo
from PIL import Image

import datago

CAUSES = {"io", "empty", "not_image", "corrupt", "truncated", "too_large", "unsupported", "no_memory"}
MUTANTS_PER_FILE = 40
# Mutants that declare more than this are left to the too_large and
# header-size tests: they would only cost allocation time here.
DECLARED_PIXELS_MAX = 1 << 20


def seeds() -> dict[str, tuple[bytes, str | None]]:
    rgb = Image.fromarray(photo(40, 32, 20))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(photo(40, 32, 21)[..., 0]))
    return {
        "rgb.png": (encode(rgb, "PNG"), None),
        "rgba.png": (encode(rgba, "PNG"), None),
        "p.png": (encode(rgb.quantize(40), "PNG"), "RGB"),
        "l.png": (encode(rgb.convert("L"), "PNG", compress_level=1), None),
        # 8-bit L, LA, RGB, RGBA non-interlaced take the PNG fast path
        # (png_fast.zig); P takes Wuffs.
        "la.png": (encode(rgb.convert("LA"), "PNG", compress_level=9), None),
        "a.gif": (encode(rgb.quantize(60), "GIF"), "RGBA"),
        "rgb.bmp": (encode(rgb, "BMP"), None),
        "p.bmp": (encode(rgb.quantize(16), "BMP"), "RGB"),
        "a.jpg": (encode(rgb, "JPEG", quality=85), None),
        "p.jpg": (encode(rgb, "JPEG", quality=85, progressive=True), None),
        "a.webp": (encode(rgb, "WEBP", quality=80), None),
    }


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    kind = rng.integers(0, 6)
    if kind == 0:  # flip 1..4 bits
        for _ in range(rng.integers(1, 5)):
            at = rng.integers(0, len(out) * 8)
            out[at // 8] ^= 1 << (at % 8)
    elif kind == 1:  # overwrite a byte with an extreme or random value
        out[rng.integers(0, len(out))] = int(rng.choice([0, 0xFF, 0x7F, 0x80, rng.integers(0, 256)]))
    elif kind == 2:  # cut short
        del out[rng.integers(1, len(out)) :]
    elif kind == 3:  # repeat a slice
        at, n = rng.integers(0, len(out)), rng.integers(1, 64)
        out[at:at] = out[at : at + n]
    elif kind == 4:  # delete a slice
        at = rng.integers(0, len(out))
        del out[at : at + rng.integers(1, 64)]
    else:  # overwrite a 32-bit big-endian field (PNG lengths, sizes)
        at = rng.integers(0, max(1, len(out) - 4))
        out[at : at + 4] = int(rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rng.integers(0, 1 << 16)])).to_bytes(4, "big")
    return bytes(out)


def pillow_pixels(data: bytes, mode: str | None) -> np.ndarray | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > DECLARED_PIXELS_MAX:
                    return None
                image.load()
                if mode is not None:
                    image = image.convert(mode)
                array = np.asarray(image)
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad input
        return None
    return array[..., None] if array.ndim == 2 else array


def declared_pixels(data: bytes) -> int:
    """The image size a GIF or BMP header declares (0 if unreadable)."""
    if data[:4] == b"GIF8" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little") * int.from_bytes(data[8:10], "little")
    if data[:2] == b"BM" and len(data) >= 26:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        return abs(width * height)
    return 0


def png_integrity_fails(data: bytes) -> bool:
    """Whether a PNG's image data fails (or lacks) a check the format defines:
    a chunk CRC, a chunk cut short, or a zlib stream that does not end
    cleanly with its Adler-32."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    stream = bytearray()
    for offset, kind, body, length in chunks(data):
        end = body + length
        if end + 4 > len(data):
            return True
        if zlib.crc32(data[offset + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            return True
        if kind == b"IDAT":
            stream += data[body:end]
        if kind == b"IEND":
            break
    try:
        inflater = zlib.decompressobj()
        inflater.decompress(bytes(stream))
        return not inflater.eof or bool(inflater.unused_data)
    except zlib.error:
        return True


REFUSAL = re.compile(r"^image: (?P<reason>.+) \((?P<cause>[a-z_]+)\)$", re.S)


@pytest.mark.parametrize("name", sorted(seeds()))
def test_mutants_keep_the_damaged_data_rule(name: str) -> None:
    original, mode = seeds()[name]
    reference = pillow_pixels(original, mode)
    assert reference is not None
    rng = np.random.default_rng([16, sum(name.encode())])
    outcomes = {"delivered": 0, "refused": 0, "skipped": 0}
    for index in range(MUTANTS_PER_FILE):
        data = mutate(original, rng)
        if declared_pixels(data) > DECLARED_PIXELS_MAX:
            outcomes["skipped"] += 1
            continue
        label = f"{name} mutant {index}"
        theirs = pillow_pixels(data, mode)
        try:
            ours = datago.transform(None, data).image.to_numpy_array()
        except datago.DatagoError as error:
            outcomes["refused"] += 1
            match = REFUSAL.match(str(error))
            assert match, f"{label}: unexpected error text {error!s}"
            assert match["cause"] in CAUSES, label
            assert len(match["reason"]) > 5 and match["reason"].isprintable(), f"{label}: {error!s}"
            if theirs is not None and theirs.shape == reference.shape and np.array_equal(theirs, reference):
                assert png_integrity_fails(data), f"{label}: Pillow decodes the exact original: {error!s}"
            continue
        outcomes["delivered"] += 1
        if theirs is None or name.endswith(".webp"):
            continue  # WebP: Pillow's libwebp is another version; decode checked elsewhere.
        if name.endswith(".gif"):  # transparent pixels: colour differs by design
            opaque = theirs[..., 3] == 255
            assert ours.shape == theirs.shape and np.array_equal(ours[opaque], theirs[opaque]), label
            continue
        assert ours.shape == theirs.shape, label
        assert np.array_equal(ours, theirs), label
    # The run exercised both sides of the rule for this seed file.
    assert outcomes["refused"] > 0, outcomes
    assert outcomes["delivered"] + outcomes["refused"] + outcomes["skipped"] == MUTANTS_PER_FILE
