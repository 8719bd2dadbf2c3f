"""Helpers shared by the tests: configs, waits, generated images, and a
Python model of the order function of docs/design.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import datago


def file_config(root: os.PathLike[str] | str, **top: Any) -> str:
    """A file-source config; keys of source_config go in `source=`."""
    source = {"root_path": os.fspath(root), **top.pop("source", {})}
    return json.dumps({"source_type": "file", "source_config": source, **top})


def drain(client: datago.DatagoClient) -> list[datago.Sample]:
    return list(client)


def run_python(code: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs Python code in a fresh interpreter, from a neutral folder so that
    `import datago` finds the installed package, not the source tree; `env`
    adds to (or overrides) this process's environment."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir(),
        env=None if env is None else {**os.environ, **env},
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Waits for a condition with a deadline, re-checking every 5 ms (the
    native state it watches has no Python-side event to wait on)."""
    deadline = time.monotonic() + timeout_s
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        tick.wait(0.005)


def noise_image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    """A smooth-ish random image (JPEG-friendly) in any 8-bit mode."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    small = rng.integers(0, 256, (max(1, height // 4), max(1, width // 4), channels), dtype=np.uint8)
    image = Image.fromarray(small.squeeze(-1) if channels == 1 else small, mode)
    return image.resize((width, height), Image.BILINEAR)




# -- the order function of docs/design.md, written again from its text --------

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class SplitMix64:
    def __init__(self, state: int) -> None:
        self.state = state & MASK64

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK64
        return mix64(self.state)

    def below(self, bound: int) -> int:
        product = self.next() * bound
        low = product & MASK64
        if low < bound:
            threshold = ((1 << 64) - bound) % bound
            while low < threshold:
                product = self.next() * bound
                low = product & MASK64
        return product >> 64


def stream_seed(seed: int, epoch: int, rank: int) -> int:
    s = mix64(seed & MASK64)
    s = mix64((s + GOLDEN * (epoch + 1)) & MASK64)
    return mix64((s + GOLDEN * (rank + 1)) & MASK64)


def plan(listing: list[str], rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
         seed: int | None = None, epoch: int = 0) -> list[str]:
    """The items (rank, worker) receives, in order, per docs/design.md."""
    ordered = sorted(listing, key=lambda p: p.encode("utf-8", "surrogateescape"))
    share = ordered[rank::world_size]
    if seed is not None:
        rng = SplitMix64(stream_seed(seed, epoch, rank))
        for i in range(len(share) - 1, 0, -1):
            j = rng.below(i + 1)
            share[i], share[j] = share[j], share[i]
    return share[worker::num_workers]


def compile_c_example(name: str, out_dir: Path) -> Path:
    """Builds examples/c/<name>.c with `python -m ziglang cc` (warnings as
    errors) against datago.h and the library this package loads."""
    from datago import _native

    source = Path(__file__).resolve().parents[1] / "examples" / "c" / f"{name}.c"
    out = out_dir / name
    lib_dir = _native.library_path.parent
    header_dir = Path(_native._header_path()).parent
    command = [
        sys.executable, "-m", "ziglang", "cc", "-std=c11", "-Wall", "-pedantic", "-Wextra", "-Werror", "-O1", "-g",
        str(source), f"-I{header_dir}", f"-L{lib_dir}", "-ldatago", f"-Wl,-rpath,{lib_dir}", "-o", str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return out
