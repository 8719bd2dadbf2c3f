"""The PNG fast path (native/src/decode/png_fast.zig: libdeflate and our own
unfiltering for non-interlaced 8-bit grey, LA, RGB and RGBA) against Wuffs,
which decodes everything else (docs/decoding.md).

`DATAGO_PNG_PATH` is read once per process, so each path runs in a child
process: `wuffs` (Wuffs only), `fast` (the fast path only; a file it declines
is refused as unsupported) and the default `auto` (fast path, else Wuffs).

* A varied generated set (every filter type, runs of Paeth rows, odd widths,
  IDAT split at random, extra ancillary chunks, Pillow's own encoder) is
  taken by the fast path and decodes to the exact samples and to Wuffs'.
* Seeded mutants of those files give the same verdict in `auto` and `wuffs`:
  the same pixels when delivered, the same cause and reason when refused;
  and many of them are delivered by the fast path itself.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zlib

import numpy as np
from hostile_files import PNG_SIGNATURE, chunk, photo
from PIL import Image

CHILD = r"""
import pickle, sys
import datago
results = []
for data in pickle.load(sys.stdin.buffer):
    try:
        array = datago.transform(None, data).image.to_numpy_array()
        results.append(("ok", array.shape, array.tobytes()))
    except datago.DatagoError as error:
        results.append(("refused", None, str(error)))
sys.stdout.buffer.write(pickle.dumps(results))
"""

COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def decode_in_child(path: str, files: list[bytes]) -> list[tuple]:
    env = dict(os.environ, DATAGO_PNG_PATH=path, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-c", CHILD], input=pickle.dumps(files), capture_output=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return pickle.loads(done.stdout)


def paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filtered_rows(samples: np.ndarray, filters: list[int]) -> bytes:
    """The image data of `samples` (h, w, c, uint8), row y with filter
    `filters[y]`, as an encoder would write it."""
    height, width, channels = samples.shape
    raw = samples.reshape(height, width * channels).astype(np.int32)
    out = []
    for y in range(height):
        x = raw[y]
        a = np.concatenate([np.zeros(channels, np.int32), x[:-channels]])
        b = raw[y - 1] if y > 0 else np.zeros_like(x)
        c = np.concatenate([np.zeros(channels, np.int32), b[:-channels]])
        predicted = [np.zeros_like(x), a, b, (a + b) // 2, paeth(a, b, c)][filters[y]]
        out.append(bytes([filters[y]]) + ((x - predicted) & 0xFF).astype(np.uint8).tobytes())
    return b"".join(out)


def fast_png(samples: np.ndarray, filters: list[int], rng: np.random.Generator, extra: bool) -> bytes:
    height, width, channels = samples.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, 0)
    parts = [PNG_SIGNATURE, chunk(b"IHDR", ihdr)]
    if extra:
        parts += [chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"tEXt", b"Comment\x00fast path")]
    stream = zlib.compress(filtered_rows(samples, filters), int(rng.integers(0, 10)))
    cuts = sorted(set(int(v) for v in rng.integers(1, len(stream), size=int(rng.integers(0, 4))))) if len(stream) > 1 else []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        parts.append(chunk(b"IDAT", stream[start:end]))
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts)


def generated() -> list[tuple[bytes, np.ndarray]]:
    rng = np.random.default_rng(1616)
    files = []
    sizes = [(1, 1), (3, 2), (2, 5), (17, 9), (64, 33), (255, 7), (1, 40)]
    for channels in (1, 2, 3, 4):
        for index, (width, height) in enumerate(sizes):
            smooth = photo(width, height, 7 * channels + index)
            if channels == 1:
                samples = smooth[..., :1]
            elif channels == 2:
                samples = np.concatenate([smooth[..., :1], smooth[..., 2:3]], axis=2)
            elif channels == 3:
                samples = smooth
            else:
                samples = np.concatenate([smooth, rng.integers(0, 256, (height, width, 1), dtype=np.uint8)], axis=2)
            samples = np.ascontiguousarray(samples)
            for pattern in ("paeth", "each", "random"):
                if pattern == "paeth":
                    filters = [4] * height
                elif pattern == "each":
                    filters = [y % 5 for y in range(height)]
                else:
                    filters = [int(v) for v in rng.integers(0, 5, height)]
                files.append((fast_png(samples, filters, rng, extra=pattern == "each"), samples))
            mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
            for level in (0, 6, 9):
                encoded = io.BytesIO()
                Image.fromarray(samples[..., 0] if channels == 1 else samples, mode).save(encoded, "PNG", compress_level=level)
                files.append((encoded.getvalue(), samples))
    return files


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    kind = rng.integers(0, 5)
    if kind == 0:  # flip bits
        for _ in range(rng.integers(1, 4)):
            at = rng.integers(0, len(out) * 8)
            out[at // 8] ^= 1 << (at % 8)
    elif kind == 1:  # cut short
        del out[rng.integers(1, len(out)) :]
    elif kind == 2:  # repeat or delete a slice
        at, n = rng.integers(0, len(out)), rng.integers(1, 32)
        if rng.integers(0, 2):
            out[at:at] = out[at : at + n]
        else:
            del out[at : at + n]
    elif kind == 3:  # rewrite a chunk and its CRC, so only the deeper checks can catch it
        at = rng.integers(33, max(34, len(out) - 4))
        out[at] = int(rng.integers(0, 256))
        out = bytearray(fix_crcs(bytes(out)))
    else:  # a 32-bit field
        at = rng.integers(0, max(1, len(out) - 4))
        out[at : at + 4] = int(rng.choice([0, 1, 0x7FFFFFFF, rng.integers(0, 1 << 16)])).to_bytes(4, "big")
    return bytes(out)


def fix_crcs(data: bytes) -> bytes:
    """Recomputes every whole chunk's CRC (the mutation stays past the CRC)."""
    out, at = bytearray(data), 8
    while at + 12 <= len(out):
        length = int.from_bytes(out[at : at + 4], "big")
        end = at + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = zlib.crc32(out[at + 4 : end]).to_bytes(4, "big")
        at = end + 4
    return bytes(out)


def test_generated_files_take_the_fast_path_with_exact_pixels() -> None:
    files = generated()
    datas = [data for data, _ in files]
    fast = decode_in_child("fast", datas)
    wuffs = decode_in_child("wuffs", datas)
    for index, ((_data, samples), got, want) in enumerate(zip(files, fast, wuffs, strict=True)):
        label = f"file {index} ({samples.shape})"
        assert got[0] == "ok", f"{label}: {got[2]}"
        assert want[0] == "ok", f"{label}: {want[2]}"
        assert got[1] == samples.shape, label
        assert got[2] == samples.tobytes(), label
        assert got == want, label


def test_mutants_get_the_same_verdict_on_both_paths() -> None:
    rng = np.random.default_rng(16016)
    seeds = [data for data, samples in generated() if samples.size <= 64 * 33 * 4]
    mutants = [mutate(seeds[int(rng.integers(0, len(seeds)))], rng) for _ in range(600)]
    auto = decode_in_child("auto", mutants)
    wuffs = decode_in_child("wuffs", mutants)
    fast = decode_in_child("fast", mutants)
    for index, (got, want) in enumerate(zip(auto, wuffs, strict=True)):
        assert got == want, f"mutant {index}: auto {got[0]} {got[2]!r:.200} / wuffs {want[0]} {want[2]!r:.200}"
    for index, (got, want) in enumerate(zip(fast, wuffs, strict=True)):
        if got[0] == "ok":
            assert got == want, f"mutant {index}: the fast path delivered what Wuffs does not"
    delivered_fast = sum(result[0] == "ok" for result in fast)
    refused = sum(result[0] == "refused" for result in wuffs)
    # The mutants reach both sides: the fast path delivers many, Wuffs refuses many.
    assert delivered_fast > 30, delivered_fast
    assert refused > 150, refused
