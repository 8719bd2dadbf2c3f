"""Builders for image files made byte by byte at test time, and the damaged
and hostile variants of them that tests/test_hostile_input.py and
tests/test_decode_fuzz.py feed to the decoders (docs/decoding.md).

PNGs are written here rather than by Pillow when a test needs what Pillow
does not write: Adam7 interlacing, 16-bit colour, IDAT split into 1-byte
chunks, a short palette, a chunk whose length field lies, a zlib bomb.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (x0, y0, dx, dy) of the seven Adam7 passes.
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _pack_rows(samples: np.ndarray, depth: int) -> bytes:
    """Scanlines (filter byte 0) of an (h, w, c) array of samples."""
    height = samples.shape[0]
    flat = samples.reshape(height, -1)
    rows = []
    for row in flat:
        if depth == 16:
            data = row.astype(">u2").tobytes()
        elif depth == 8:
            data = row.astype(np.uint8).tobytes()
        else:
            per_byte = 8 // depth
            padded = np.zeros(-(-len(row) // per_byte) * per_byte, dtype=np.uint8)
            padded[: len(row)] = row
            groups = padded.reshape(-1, per_byte).astype(np.uint16)
            shifts = np.arange(per_byte - 1, -1, -1, dtype=np.uint16) * depth
            data = (groups << shifts).sum(axis=1).astype(np.uint8).tobytes()
        rows.append(b"\x00" + data)
    return b"".join(rows)


def png_raw(samples: np.ndarray, color_type: int, depth: int, interlace: bool = False) -> bytes:
    """The filtered (all filter 0) image data of `samples` (h, w, c)."""
    if not interlace:
        return _pack_rows(samples, depth)
    parts = []
    for x0, y0, dx, dy in ADAM7:
        sub = samples[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            parts.append(_pack_rows(sub, depth))
    return b"".join(parts)


def png(
    samples: np.ndarray,
    color_type: int,
    depth: int = 8,
    *,
    palette: bytes | None = None,
    trns: bytes | None = None,
    interlace: bool = False,
    idat_chunk: int | None = None,
    iend: bool = True,
    zdata: bytes | None = None,
) -> bytes:
    """A PNG of `samples` (h, w, channels), unfiltered, zlib level 6;
    `idat_chunk` splits the stream into IDATs of that many bytes; `zdata`
    replaces the compressed stream."""
    height, width = samples.shape[:2]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, int(interlace))
    out = [PNG_SIGNATURE, chunk(b"IHDR", ihdr)]
    if palette is not None:
        out.append(chunk(b"PLTE", palette))
    if trns is not None:
        out.append(chunk(b"tRNS", trns))
    stream = zdata if zdata is not None else zlib.compress(png_raw(samples, color_type, depth, interlace), 6)
    step = idat_chunk or max(1, len(stream))
    for at in range(0, len(stream), step):
        out.append(chunk(b"IDAT", stream[at : at + step]))
    if iend:
        out.append(chunk(b"IEND", b""))
    return b"".join(out)


def chunks(data: bytes) -> list[tuple[int, bytes, int, int]]:
    """(offset, type, data offset, data length) of each chunk of a PNG."""
    found, at = [], 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        found.append((at, data[at + 4 : at + 8], at + 8, length))
        at += 12 + length
    return found


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth RGB image (compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def good_files(seed: int = 0) -> dict[str, bytes]:
    """One good file per format and common variant, for the folders that mix
    good and broken images."""
    rgb = Image.fromarray(photo(48, 40, seed))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(photo(48, 40, seed + 1)[..., 0]))
    return {
        "good_rgb.png": encode(rgb, "PNG"),
        "good_rgba.png": encode(rgba, "PNG"),
        "good_p.png": encode(rgb.quantize(32), "PNG"),
        "good.gif": encode(rgb.quantize(64), "GIF"),
        "good.bmp": encode(rgb, "BMP"),
        "good.jpg": encode(rgb, "JPEG", quality=90),
        "good_progressive.jpg": encode(rgb, "JPEG", quality=90, progressive=True),
        "good.webp": encode(rgb, "WEBP", lossless=True),
    }


def zlib_bomb(width: int = 64, height: int = 64, inflated: int = 64 << 20) -> bytes:
    """An RGB PNG whose IDAT inflates to `inflated` bytes of zeros."""
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(inflated >> 20)]
    parts.append(compressor.flush())
    return png(np.zeros((height, width, 3), np.uint8), 2, zdata=b"".join(parts))


def chunk_length_bomb(seed: int = 0) -> bytes:
    """A good PNG whose IDAT length field says 0x7FFFFFFF."""
    data = bytearray(png(photo(64, 64, seed), 2))
    at = next(offset for offset, kind, _, _ in chunks(bytes(data)) if kind == b"IDAT")
    data[at : at + 4] = struct.pack(">I", 0x7FFFFFFF)
    return bytes(data)


def short_palette_png(width: int = 16, height: int = 8) -> bytes:
    """A palette PNG with one PLTE entry whose pixels use indices up to 200."""
    indices = (np.arange(width * height, dtype=np.uint16) % 201).astype(np.uint8).reshape(height, width, 1)
    return png(indices, 3, palette=b"\x10\x20\x30")


def flip_idat_bit(data: bytes, bit: int = 1000) -> bytes:
    """The file with one bit of its first IDAT's data flipped (CRC left stale)."""
    _, _, body, length = next(c for c in chunks(data) if c[1] == b"IDAT")
    out = bytearray(data)
    out[body + (bit // 8) % length] ^= 1 << (bit % 8)
    return bytes(out)


def without_iend(data: bytes) -> bytes:
    at = next(offset for offset, kind, _, _ in chunks(data) if kind == b"IEND")
    return data[:at]


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring width x height, followed by 57 KB of pixels."""
    header_size, offset = 40, 54
    info = struct.pack("<IiiHHIIiiII", header_size, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    body = bytes(57_000)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + body


def png_claiming(width: int, height: int) -> bytes:
    """An RGB PNG whose IHDR (with a valid CRC) declares width x height over
    the image data of a 64x64 one."""
    data = png(photo(64, 64, 0), 2)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return data[:8] + chunk(b"IHDR", ihdr) + data[33:]


def sof2_as_sof0(jpeg: bytes) -> bytes:
    """A progressive JPEG whose SOF2 marker is relabelled SOF0 (baseline)."""
    at = jpeg.index(b"\xff\xc2")
    return jpeg[:at] + b"\xff\xc0" + jpeg[at + 2 :]


def jpeg_taller_than_data(jpeg: bytes, extra_rows: int = 64) -> bytes:
    """A baseline JPEG whose SOF0 claims `extra_rows` more rows than its scan holds."""
    at = jpeg.index(b"\xff\xc0")
    (height,) = struct.unpack(">H", jpeg[at + 5 : at + 7])
    return jpeg[: at + 5] + struct.pack(">H", height + extra_rows) + jpeg[at + 7 :]
