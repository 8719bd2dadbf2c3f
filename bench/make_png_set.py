#!/usr/bin/env python3
"""Build `pngreal`, a PNG corpus of the layouts real datasets hold beyond
png1mp's Pillow-written RGB/RGBA: palette, grey, RGBA and Adam7 interlaced
RGB and RGBA files (16-bit RGB with --variants), ~0.5 MP crops of the benchmark photos, written by Pillow
(palette, grey, RGBA at its default level 6) or by the writer below (16-bit and
interlaced, which Pillow cannot write), whose rows use the Up filter and zlib
level 6. The same --count and photos give the same files.

    python bench/make_png_set.py --out DIR --count 60 [--photos DIR]

writes DIR/pngreal/000000.png ... and DIR/pngreal.manifest.json in the format
of make_corpus.py (count, images: file, bytes, size, mode), so compare.py
reads it like the other sets.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# "rgb16" is left out of the default list: the reference wheel cannot deliver
# 16-bit RGB (its sample's array has twice the bytes its shape says: compare.py
# fails with "cannot reshape"); --variants adds it back to time ours alone.
VARIANTS = ["palette", "grey", "rgba", "interlaced", "interlaced_rgba"]
ALL_VARIANTS = [*VARIANTS, "rgb16"]
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _up_filtered(rows: np.ndarray) -> bytes:
    """Scanlines (h, row bytes) with filter 2 (Up)."""
    above = np.vstack([np.zeros((1, rows.shape[1]), np.uint8), rows[:-1]])
    filtered = (rows.astype(np.int16) - above).astype(np.uint8)
    return b"".join(b"\x02" + row.tobytes() for row in filtered)


def _rows(samples: np.ndarray, depth: int) -> np.ndarray:
    flat = samples.reshape(samples.shape[0], -1)
    if depth == 16:
        return flat.astype(">u2").view(np.uint8).reshape(samples.shape[0], -1)
    return flat.astype(np.uint8)


def write_png(samples: np.ndarray, color_type: int, depth: int, interlace: bool) -> bytes:
    height, width = samples.shape[:2]
    if interlace:
        passes = [samples[y0::dy, x0::dx] for x0, y0, dx, dy in ADAM7]
        raw = b"".join(_up_filtered(_rows(p, depth)) for p in passes if p.shape[0] and p.shape[1])
    else:
        raw = _up_filtered(_rows(samples, depth))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6))
            + _chunk(b"IEND", b""))


def render(photo: Image.Image, index: int, variants: list[str]) -> tuple[bytes, str, tuple[int, int]]:
    rng = np.random.default_rng([16, index])
    variant = variants[index % len(variants)]
    width, height = int(rng.integers(700, 900)), int(rng.integers(560, 720))
    left = int(rng.integers(0, max(1, photo.width - width * 2)))
    top = int(rng.integers(0, max(1, photo.height - height * 2)))
    box = (left, top, left + min(photo.width - left, width * 2), top + min(photo.height - top, height * 2))
    rgb = photo.resize((width, height), Image.Resampling.LANCZOS, box=box)
    alpha = np.asarray(rgb.convert("L").point(lambda v: 255 if v > 96 else v * 2))
    out = io.BytesIO()
    if variant == "palette":
        rgb.quantize(256).save(out, "PNG")
        return out.getvalue(), "P", rgb.size
    if variant == "grey":
        rgb.convert("L").save(out, "PNG")
        return out.getvalue(), "L", rgb.size
    if variant == "rgba":
        rgba = rgb.copy()
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(out, "PNG")
        return out.getvalue(), "RGBA", rgb.size
    pixels = np.asarray(rgb)
    if variant == "rgb16":
        deep = pixels.astype(np.uint16) * 257 + rng.integers(0, 257, pixels.shape, dtype=np.uint16)
        return write_png(deep, 2, 16, False), "RGB;16", rgb.size
    if variant == "interlaced":
        return write_png(pixels, 2, 8, True), "RGB;adam7", rgb.size
    return write_png(np.dstack([pixels, alpha]), 6, 8, True), "RGBA;adam7", rgb.size


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--photos", type=Path, default=here.parent.parent / "shared" / "bench" / "photos")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(ALL_VARIANTS)}")
    args = parser.parse_args()
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise SystemExit(f"no photos under {args.photos}")
    root = args.out / "pngreal"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    images = []
    opened: dict[Path, Image.Image] = {}
    for index in range(args.count):
        path = photos[index % len(photos)]
        if path not in opened:
            with Image.open(path) as image:
                opened[path] = image.convert("RGB")
        data, mode, size = render(opened[path], index, args.variants.split(","))
        name = f"{index:06d}.png"
        (root / name).write_bytes(data)
        images.append({"file": name, "bytes": len(data), "size": list(size), "mode": mode, "photo": path.name})
    manifest = {"set": "pngreal", "count": args.count, "images": images}
    (args.out / "pngreal.manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"pngreal: {args.count} images in {root}")


if __name__ == "__main__":
    main()
